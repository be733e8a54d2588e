"""Stage evaluate: metrics, plots and per-image results of one category's test set."""

import _bootstrap  # noqa: F401  (workspace src/ first)

from pathlib import Path

from anomaly_spotter.cli import run, stage_parser
from anomaly_spotter.config import load_params
from anomaly_spotter.detectors import check_params
from anomaly_spotter.evaluation.evaluate import evaluate_category
from anomaly_spotter.dataset.processed import load_processed
from anomaly_spotter.evaluation.thresholds import read_thresholds
from anomaly_spotter.detectors import load_model


def main(argv=None):
    parser = stage_parser(__doc__)
    parser.add_argument("--data", required=True, help="preprocessed category folder")
    parser.add_argument("--raw", required=True, help="raw category folder (original-size masks)")
    parser.add_argument("--model", required=True, help="trained model.pt")
    parser.add_argument("--thresholds", required=True, help="thresholds.json from the thresholds stage")
    parser.add_argument("--metrics", required=True, help="metrics JSON to write")
    parser.add_argument("--plots", required=True, help="plots folder to write")
    parser.add_argument("--results", required=True, help="per-image results folder to write")
    args = parser.parse_args(argv)
    params = check_params(load_params(args.params, args.category))
    model, _ = load_model(args.model)
    thresholds = read_thresholds(args.thresholds, category=args.category)
    results = evaluate_category(
        load_processed(args.data),
        Path(args.raw),
        model,
        thresholds,
        params,
        category=args.category,
        metrics_path=Path(args.metrics),
        plots_dir=Path(args.plots),
        results_dir=Path(args.results),
    )
    pixel = (
        f"pixel AUROC {results['pixel_auroc']:.4f}, AU-PRO {results['au_pro']:.4f}"
        if "pixel_auroc" in results
        else f"pixel metrics {results['pixel_metrics']}"
    )
    weakest = results.get("weakest_defect_type")
    print(f"{args.category}: image AUROC {results['image_auroc']:.4f}, {pixel}; lowest recall: {weakest}")


if __name__ == "__main__":
    run(main)
