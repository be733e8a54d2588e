"""Stage report: every metric per category and its mean, as JSON and as a Markdown table."""

import _bootstrap  # noqa: F401  (workspace src/ first)

from pathlib import Path

from anomaly_spotter.cli import run, stage_parser
from anomaly_spotter.config import load_params
from anomaly_spotter.report import write_report


def main(argv=None):
    parser = stage_parser(__doc__, category=False)
    parser.add_argument("--metrics", required=True, help="folder holding <category>.json")
    parser.add_argument("--out", required=True, help="summary JSON to write")
    parser.add_argument("--table", required=True, help="summary Markdown to write")
    args = parser.parse_args(argv)
    params = load_params(args.params)
    write_report(params.data.categories, args.metrics, args.out, args.table)
    print(Path(args.table).read_text(encoding="utf-8"))


if __name__ == "__main__":
    run(main)
