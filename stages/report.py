"""Stage report: every metric per category and its mean, as JSON and as a Markdown table."""

import _bootstrap  # noqa: F401  (workspace src/ first)

from pathlib import Path

from anomaly_spotter.cli import run, stage_parser
from anomaly_spotter.config import load_params
from anomaly_spotter.evaluation.report import key_params, write_report


def main(argv=None):
    parser = stage_parser(__doc__, category=False)
    parser.add_argument("--metrics", required=True, help="folder holding <category>.json")
    parser.add_argument("--out", required=True, help="summary JSON to write")
    parser.add_argument("--table", required=True, help="summary Markdown to write")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    categories = params.data.categories
    # Each category's own params (its preset merged), as its metrics were produced with them.
    per_category = {cat: key_params(load_params(args.params, cat)) for cat in categories}
    write_report(categories, args.metrics, args.out, args.table, per_category)
    print(Path(args.table).read_text(encoding="utf-8"))


if __name__ == "__main__":
    run(main)
