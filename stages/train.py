"""Stage train: fit the autoencoder of one category; resumes from its checkpoint when killed."""

import _bootstrap  # noqa: F401  (workspace src/ first)

from pathlib import Path

from anomaly_spotter.cli import run, stage_parser
from anomaly_spotter.config import load_params
from anomaly_spotter.preprocessing import load_processed
from anomaly_spotter.training import train_category


def main(argv=None):
    parser = stage_parser(__doc__)
    parser.add_argument("--data", required=True, help="preprocessed category folder")
    parser.add_argument("--model", required=True, help="where to write model.pt")
    parser.add_argument("--checkpoints", required=True, help="checkpoint folder (kept between runs)")
    parser.add_argument("--logs", required=True, help="DVCLive folder")
    args = parser.parse_args(argv)
    params = load_params(args.params, args.category)
    result = train_category(load_processed(args.data), params, Path(args.model), Path(args.checkpoints), Path(args.logs))
    print(f"{args.category}: best validation loss {result.best_val_loss:.5f} at epoch {result.best_epoch}")


if __name__ == "__main__":
    run(main)
