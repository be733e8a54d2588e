"""Stage export: the trained model as ONNX (with anomaly map and score), checked against PyTorch."""

import _bootstrap  # noqa: F401  (workspace src/ first)

from anomaly_spotter.cli import run, stage_parser
from anomaly_spotter.config import load_params
from anomaly_spotter.detectors import check_params
from anomaly_spotter.deploy.export import export_category


def main(argv=None):
    parser = stage_parser(__doc__)
    parser.add_argument("--model", required=True, help="trained model.pt")
    parser.add_argument("--data", required=True, help="preprocessed category folder (its test images check the export)")
    parser.add_argument("--out", required=True, help="model.onnx to write")
    parser.add_argument("--metrics", required=True, help="export metrics JSON to write")
    args = parser.parse_args(argv)
    params = check_params(load_params(args.params, args.category))
    metrics = export_category(args.model, args.data, args.out, args.metrics, params.score)
    print(
        f"{args.category}: wrote {args.out} (opset {metrics['opset']}, dynamic batch); "
        f"max |ONNX - PyTorch| over {metrics['images_checked']} test images: "
        f"map {metrics['onnx_max_abs_diff_map']:.2g}, score {metrics['onnx_max_abs_diff_score']:.2g}"
    )


if __name__ == "__main__":
    run(main)
