"""Stage thresholds: anomaly scores of the normal validation images and the thresholds they give."""

import _bootstrap  # noqa: F401  (workspace src/ first)

from anomaly_spotter.cli import run, stage_parser
from anomaly_spotter.config import load_params
from anomaly_spotter.detectors import check_params
from anomaly_spotter.fileio import write_json
from anomaly_spotter.dataset.processed import load_processed
from anomaly_spotter.scoring import score_images
from anomaly_spotter.evaluation.thresholds import score_record, threshold_report
from anomaly_spotter.detectors import load_model


def main(argv=None):
    parser = stage_parser(__doc__)
    parser.add_argument("--data", required=True, help="preprocessed category folder")
    parser.add_argument("--model", required=True, help="trained model.pt")
    parser.add_argument("--out", required=True, help="thresholds.json to write")
    args = parser.parse_args(argv)
    params = check_params(load_params(args.params, args.category))
    model, _ = load_model(args.model)
    data = load_processed(args.data)
    validation = score_images(model, data.val, params.score)
    report = threshold_report(
        validation.scores, params.thresholds, score_record(params.score, model), val_source=data.val_source
    )
    write_json(args.out, report)


if __name__ == "__main__":
    run(main)
