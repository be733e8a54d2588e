"""The README's results table, generated from ``metrics/summary.json``.

So the README never states a number the committed ``dvc.lock`` does not hold: the table sits
between two marker lines and is rewritten from the summary by ``make readme`` (which runs this
module); ``tests/test_readme.py`` fails when the two disagree.

Example:
    >>> summary = {"image_auroc": {"weave": 0.99876, "mean": 0.99876}, "pixel_auroc": {"weave": 0.97},
    ...            "au_pro": {"weave": 0.95}, "f1": {"weave": 0.9}, "test_images": {"weave": 192}}
    >>> print(results_table(summary, ["weave"]).splitlines()[2])
    | weave (regular texture) | 0.999 | 0.970 | 0.950 | 0.900 | 192 |
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from pathlib import Path

from anomaly_spotter.config import load_params
from anomaly_spotter.errors import UserError
from anomaly_spotter.fileio import write_text
from anomaly_spotter.sources.synthetic import DESCRIPTIONS as SYNTHETIC_DESCRIPTIONS

BEGIN = "<!-- results-table: generated from metrics/summary.json by `make readme`; do not edit by hand -->"
END = "<!-- /results-table -->"
COLUMNS = (
    ("image_auroc", "image AUROC"),
    ("pixel_auroc", "pixel AUROC"),
    ("au_pro", "AU-PRO (FPR ≤ {fpr_limit:g})"),  # evaluate.pro_fpr_limit
    ("f1", "F1 at the validation threshold"),
)


def _cell(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.3f}"


def results_table(summary: dict[str, dict[str, float]], categories: Sequence[str], *, fpr_limit: float = 0.3) -> str:
    """Markdown table: one row per category (and the mean when there are several), headline metrics.

    ``fpr_limit`` is the ``evaluate.pro_fpr_limit`` AU-PRO was integrated to (named in its column).
    """
    header = (
        "| built-in category | "
        + " | ".join(title.format(fpr_limit=fpr_limit) for _, title in COLUMNS)
        + " | test images |"
    )
    lines = [header, "|---" * (len(COLUMNS) + 2) + "|"]
    for category in categories:
        label = f"{category} ({SYNTHETIC_DESCRIPTIONS[category]})" if category in SYNTHETIC_DESCRIPTIONS else category
        cells = [_cell(summary.get(key, {}).get(category)) for key, _ in COLUMNS]
        count = summary.get("test_images", {}).get(category)
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {'n/a' if count is None else int(count)} |")
    if len(categories) > 1:
        cells = [_cell(summary.get(key, {}).get("mean")) for key, _ in COLUMNS]
        total = sum(int(summary.get("test_images", {}).get(c, 0)) for c in categories)
        lines.append("| **mean** | " + " | ".join(cells) + f" | {total} |")
    return "\n".join(lines)


def replace_block(
    text: str, table: str, *, source: str = "README.md", begin: str = BEGIN, end: str = END, name: str = "results"
) -> str:
    """``text`` with the lines between the markers ``begin`` and ``end`` replaced by ``table``."""
    if text.count(begin) != 1 or text.count(end) != 1 or text.index(begin) > text.index(end):
        raise UserError(f"{source}: needs exactly one {name} block, the line {begin!r} followed later by {end!r}")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{begin}\n{table}\n{end}{tail}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Rewrite the README's results table from metrics/summary.json.")
    parser.add_argument("--summary", default="metrics/summary.json")
    parser.add_argument("--readme", default="README.md")
    parser.add_argument("--params", default="params.yaml", help="its data.categories give the rows, in order")
    args = parser.parse_args(argv)
    summary_path, readme = Path(args.summary), Path(args.readme)
    if not summary_path.is_file():
        raise SystemExit(f"{summary_path}: missing; run `dvc repro` (or `dvc pull`) first")
    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    params = load_params(args.params)
    table = results_table(summary, params.data.categories, fpr_limit=params.evaluate.pro_fpr_limit)
    write_text(readme, replace_block(readme.read_text(encoding="utf-8"), table, source=str(readme)))
    print(f"{readme}: results table rewritten from {summary_path}")


if __name__ == "__main__":
    main()
