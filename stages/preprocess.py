"""Stage preprocess: decode and resize one category into arrays under data/processed/<category>."""

import _bootstrap  # noqa: F401  (workspace src/ first)

from anomaly_spotter.cli import run, stage_parser
from anomaly_spotter.config import load_params
from anomaly_spotter.dataset.preprocessing import preprocess_category


def main(argv=None):
    parser = stage_parser(__doc__)
    parser.add_argument("--raw", required=True, help="raw category folder (MVTec AD layout)")
    parser.add_argument("--out", required=True, help="output folder")
    args = parser.parse_args(argv)
    params = load_params(args.params, args.category)
    preprocess_category(
        args.raw, args.out, params.preprocess, min_train_images=params.data.min_train_images, masks=params.data.masks
    )


if __name__ == "__main__":
    run(main)
