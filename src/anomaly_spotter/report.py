"""Stage ``report``: collect ``metrics/<category>.json`` of the categories in ``params.yaml``.

``metrics/summary.json`` holds, for every numeric metric, its value per category and the
mean over categories; ``metrics/summary.md`` shows the same as a table.

Example:
    >>> summarise({"a": {"image_auroc": 1.0}, "b": {"image_auroc": 0.5}})
    {'image_auroc': {'a': 1.0, 'b': 0.5, 'mean': 0.75}}
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from anomaly_spotter.errors import UserError
from anomaly_spotter.fileio import write_json, write_text

# Headline metrics first in the table, in this order; other numeric metrics follow by name.
HEADLINE = ("image_auroc", "pixel_auroc", "au_pro", "f1", "precision", "recall", "accuracy", "f1_max_oracle")
MEAN = "mean"
# Per-category only: a mean of thresholds or of confusion counts over categories means nothing.
NOT_AVERAGED = frozenset({"threshold", "tp", "fp", "tn", "fn", "test_images"})


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


def write_report(categories: Sequence[str], metrics_dir: str | Path, out_json: str | Path, out_table: str | Path) -> dict[str, dict[str, float]]:
    """Read each category's metrics, write the summary JSON and Markdown table, return the summary."""
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
    write_text(out_table, f"# Evaluation summary\n\n{markdown_table(summary, list(categories))}")
    return summary
