"""Stage fetch: put one category's raw images in data/raw/<category> (MVTec AD layout)."""

import _bootstrap  # noqa: F401  (workspace src/ first)

from anomaly_spotter.cli import run, stage_parser
from anomaly_spotter.config import load_params
from anomaly_spotter.sources.fetch import fetch_category


def main(argv=None):
    parser = stage_parser(__doc__)
    parser.add_argument("--out", required=True, help="destination folder, e.g. data/raw/<category>")
    args = parser.parse_args(argv)
    params = load_params(args.params, args.category)
    fetch_category(args.category, args.out, params.data)


if __name__ == "__main__":
    run(main)
