"""Stage train: fit one category's detector (any model.kind); a gradient run resumes from its checkpoint when killed.

With ``train.processes > 1`` it relaunches itself under ``torch.distributed.run`` (DDP); under
``torchrun`` it joins the process group the launcher describes.
"""

import _bootstrap  # noqa: F401  (workspace src/ first)

import sys
from pathlib import Path

from anomaly_spotter.cli import run, stage_parser
from anomaly_spotter.config import load_params
from anomaly_spotter.training.distributed import launched_by_torchrun, relaunch
from anomaly_spotter.dataset.processed import load_processed
from anomaly_spotter.training import train_category


def main(argv=None):
    parser = stage_parser(__doc__)
    parser.add_argument("--data", required=True, help="preprocessed category folder")
    parser.add_argument("--model", required=True, help="where to write model.pt")
    parser.add_argument("--checkpoints", required=True, help="checkpoint folder (kept between runs)")
    parser.add_argument("--logs", required=True, help="DVCLive folder")
    args = parser.parse_args(argv)
    params = load_params(args.params, args.category)
    if params.train.processes > 1 and not launched_by_torchrun():
        sys.exit(relaunch(params.train.processes, [__file__, *(sys.argv[1:] if argv is None else argv)]))
    result = train_category(
        load_processed(args.data), params, Path(args.model), Path(args.checkpoints), Path(args.logs)
    )
    if result.written:
        print(f"{args.category}: {result.summary}")


if __name__ == "__main__":
    run(main)
