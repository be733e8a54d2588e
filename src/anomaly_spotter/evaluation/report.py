"""Stage ``report``: collect ``metrics/<category>.json`` of the categories in ``params.yaml``.

``metrics/summary.json`` holds, for every numeric metric, its value per category and the
mean over categories. ``metrics/summary.md`` opens with a compact table, one row per category:
the headline metrics next to the params that produced them (each category's own, presets
merged), then, at the operating threshold, the defect type with the lowest recall per category
and the false-alarm rate on the good test images beside its target; a category whose pixel
metrics were skipped (image labels only) gets a line saying why. Then every metric in full.

Example:
    >>> summarise({"a": {"image_auroc": 1.0}, "b": {"image_auroc": 0.5}})
    {'image_auroc': {'a': 1.0, 'b': 0.5, 'mean': 0.75}}
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from anomaly_spotter.config import Params
from anomaly_spotter.errors import UserError
from anomaly_spotter.fileio import write_json, write_text

# Headline metrics first in the table, in this order; other numeric metrics follow by name.
HEADLINE = ("image_auroc", "pixel_auroc", "au_pro", "f1", "precision", "recall", "accuracy", "f1_max_oracle")
MEAN = "mean"
# Per-category only: a mean of thresholds or of confusion counts over categories means nothing.
NOT_AVERAGED = frozenset({"threshold", "tp", "fp", "tn", "fn", "test_images", "good_images"})
# The compact table: these metrics (column title, metric name) ...
COMPACT_METRICS = (("image AUROC", "image_auroc"), ("pixel AUROC", "pixel_auroc"), ("AU-PRO", "au_pro"), ("F1", "f1"))
# ... next to the params that explain them most often (column title, dotted name); dvc.yaml
# lists the same names as the report stage's params, so changing one rewrites the table.
KEY_PARAMS = (
    ("model", "model.kind"),
    ("image size", "preprocess.image_size"),
    ("epochs", "train.epochs"),
    ("score map", "score.map"),
    ("image score", "score.image_score"),
    ("thresholds", "thresholds.strategy"),
)


def _numeric(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def summarise(per_category: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """``{metric: {category: value, ..., "mean": value}}`` over the numeric metrics."""
    names = sorted({name for metrics in per_category.values() for name in _numeric(metrics)})
    summary: dict[str, dict[str, float]] = {}
    for name in names:
        values = {cat: _numeric(metrics)[name] for cat, metrics in per_category.items() if name in _numeric(metrics)}
        finite = [v for v in values.values() if math.isfinite(v)]
        if name in NOT_AVERAGED or not finite:
            summary[name] = values
        else:
            summary[name] = {**values, MEAN: sum(finite) / len(finite)}
    return summary


def markdown_table(summary: dict[str, dict[str, float]], categories: Sequence[str]) -> str:
    order = [n for n in HEADLINE if n in summary] + sorted(n for n in summary if n not in HEADLINE)
    header = "| metric | " + " | ".join(categories) + f" | {MEAN} |"
    lines = [header, "|" + "---|" * (len(categories) + 2)]
    for name in order:
        cells = [summary[name].get(cat, math.nan) for cat in (*categories, MEAN)]
        lines.append(f"| {name} | " + " | ".join("n/a" if not math.isfinite(v) else f"{v:.4g}" for v in cells) + " |")
    return "\n".join(lines) + "\n"


def key_params(params: Params) -> dict[str, Any]:
    """The :data:`KEY_PARAMS` values of one category's params, by column title.

    >>> from anomaly_spotter.config import parse_params
    >>> key_params(parse_params({}))["model"]
    'discriminative'
    """
    values = {}
    for title, dotted in KEY_PARAMS:
        value: Any = params
        for part in dotted.split("."):
            value = getattr(value, part)
        values[title] = value
    return values


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "n/a" if not math.isfinite(value) else f"{value:.4g}"
    return str(value)


def headline_table(summary: dict[str, dict[str, float]], params_by_category: Mapping[str, Mapping[str, Any]]) -> str:
    """One row per category (then the mean): :data:`COMPACT_METRICS` and its :data:`KEY_PARAMS`.

    >>> print(headline_table({"f1": {"a": 0.5, "mean": 0.5}}, {"a": {"model": "patchcore"}}), end="")
    | category | model | image AUROC | pixel AUROC | AU-PRO | F1 |
    |---|---|---|---|---|---|
    | a | patchcore | n/a | n/a | n/a | 0.5 |
    | mean |  | n/a | n/a | n/a | 0.5 |
    """
    param_titles = [title for title, _ in KEY_PARAMS if any(title in p for p in params_by_category.values())]
    titles = ["category", *param_titles, *(title for title, _ in COMPACT_METRICS)]
    lines = ["| " + " | ".join(titles) + " |", "|" + "---|" * len(titles)]
    for row in (*params_by_category, MEAN):
        known = params_by_category.get(row, {})
        cells = [row, *(_cell(known[t]) if t in known else "" for t in param_titles)]
        cells += [_cell(summary.get(name, {}).get(row, math.nan)) for _, name in COMPACT_METRICS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _share(value: Any) -> str:
    return f"{float(value):.1%}" if isinstance(value, (int, float)) and math.isfinite(value) else ""


def threshold_section(per_category: Mapping[str, Mapping[str, Any]]) -> str:
    """Per category: the defect type with the lowest recall at the threshold and the false-alarm rates.

    >>> print(threshold_section({"a": {"per_defect_recall": {"crack": 0.5, "hole": 1.0}, "weakest_defect_type": "crack",
    ...                                "false_alarm_rate": 0.02, "false_alarm_rate_target": 0.01}}), end="")
    | category | lowest recall | its recall | recall per defect type | false alarms (test good) | target | validation |
    |---|---|---|---|---|---|---|
    | a | crack | 50.0% | crack 50.0%, hole 100.0% | 2.0% | 1.0% |  |
    """
    titles = (
        "category",
        "lowest recall",
        "its recall",
        "recall per defect type",
        "false alarms (test good)",
        "target",
        "validation",
    )
    lines = ["| " + " | ".join(titles) + " |", "|" + "---|" * len(titles)]
    notes = []
    for cat, metrics in per_category.items():
        recall = metrics.get("per_defect_recall") or {}
        weakest = str(metrics.get("weakest_defect_type", ""))
        per_type = ", ".join(f"{name} {_share(value)}" for name, value in recall.items())
        cells = [
            cat,
            weakest,
            _share(recall.get(weakest)),
            per_type,
            _share(metrics.get("false_alarm_rate")),
            _share(metrics.get("false_alarm_rate_target")),
            _share(metrics.get("false_alarm_rate_validation")),
        ]
        lines.append("| " + " | ".join(cells) + " |")
        if isinstance(metrics.get("pixel_metrics"), str):
            notes.append(f"- {cat}: pixel metrics {metrics['pixel_metrics']}")
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


def write_report(
    categories: Sequence[str],
    metrics_dir: str | Path,
    out_json: str | Path,
    out_table: str | Path,
    params_by_category: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, dict[str, float]]:
    """Read each category's metrics, write the summary JSON and Markdown tables, return the summary.

    ``params_by_category`` (category -> :func:`key_params`) fills the compact table's param
    columns; without it the compact table shows the metrics only.
    """
    metrics_dir = Path(metrics_dir)
    per_category: dict[str, dict[str, Any]] = {}
    missing = []
    for category in categories:
        path = metrics_dir / f"{category}.json"
        if not path.is_file():
            missing.append(str(path))
            continue
        per_category[category] = json.loads(path.read_text(encoding="utf-8"))
    if missing:
        raise UserError(f"metrics missing for {', '.join(missing)}; run `dvc repro` to evaluate every category")
    summary = summarise(per_category)
    write_json(out_json, summary)
    compact = headline_table(summary, {cat: (params_by_category or {}).get(cat, {}) for cat in categories})
    at_threshold = threshold_section(per_category)
    write_text(
        out_table,
        f"# Evaluation summary\n\n{compact}\n## At the threshold\n\n{at_threshold}\n"
        f"## Every metric\n\n{markdown_table(summary, list(categories))}",
    )
    return summary
