"""Detector ablation: which model, training and anomaly map find defects, and at what training cost.

Trains every variant below on the same preprocessed data, with ``params.yaml`` as the base and
the variant's overrides (plus any ``--set``) on top, then prints one row per variant and
category:

* ``val synth AUROC`` – image AUROC of the normal *validation* images against copies carrying
  synthetic anomalies (:func:`anomaly_spotter.training.yardstick.synthetic_validation_metrics`): the
  number to choose settings by, because it never looks at the test split;
* image AUROC, pixel AUROC and AU-PRO (FPR <= 0.3) on the test split, as ``evaluate`` computes
  them (pixel metrics at each image's original resolution): the numbers to report;
* training minutes (wall clock, this machine).

Variants (all share the base params; see ``VARIANTS``):

=====================  ==========================================================================
``ae_skips``           the seed's U-Net autoencoder with all three skips, clean -> clean, 1 - SSIM
``ae``                 no skips, clean -> clean, 1 - SSIM map (the ``reconstruction`` default)
``ae_skips_removal``   all skips, trained to remove synthetic anomalies (corrupted -> clean)
``ae_removal``         no skips + defect-removal training
``discriminative``     defect removal + segmentation head (DRAEM-style), head map
``patchcore_*``        memory bank of pretrained features (lite0 / lite2 backbone, 2 % or 1 % coreset)
=====================  ==========================================================================

Run (the tables of docs/detectors.md come from these):
    python bench/ablation.py --source synthetic
    python bench/ablation.py --source folder --root ../shared/datasets/magnetic_tile \
        --categories magnetic_tile --set train.epochs=12

``--set`` takes ``dvc exp run -S`` style ``key=value`` (YAML values), applied to every variant.
Results are also written as JSON (``--out``). Work files live under ``.cache/bench/``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import torch  # noqa: E402
import yaml  # noqa: E402

from anomaly_spotter.config import deep_merge, parse_params  # noqa: E402
from anomaly_spotter.dataset.preprocessing import preprocess_category
from anomaly_spotter.dataset.processed import load_processed  # noqa: E402
from anomaly_spotter.detectors import (
    DETECTORS,  # noqa: E402
    load_model,  # noqa: E402
)
from anomaly_spotter.evaluation import metrics  # noqa: E402
from anomaly_spotter.evaluation.evaluate import pixel_inputs  # noqa: E402
from anomaly_spotter.scoring import score_images  # noqa: E402
from anomaly_spotter.sources.fetch import fetch_category  # noqa: E402
from anomaly_spotter.training import train_category  # noqa: E402
from anomaly_spotter.training.yardstick import synthetic_validation_metrics  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
REMOVAL = {"probability": 0.5}
VARIANTS: dict[str, dict[str, Any]] = {
    "ae_skips": {
        "model": {"kind": "reconstruction", "skips": [1, 2, 3]},
        "anomalies": {"probability": 0.0},
        "score": {"map": "ssim"},
    },
    "ae": {
        "model": {"kind": "reconstruction", "skips": []},
        "anomalies": {"probability": 0.0},
        "score": {"map": "ssim"},
    },
    "ae_skips_removal": {
        "model": {"kind": "reconstruction", "skips": [1, 2, 3]},
        "anomalies": REMOVAL,
        "score": {"map": "ssim"},
    },
    "ae_removal": {"model": {"kind": "reconstruction", "skips": []}, "anomalies": REMOVAL, "score": {"map": "ssim"}},
    "discriminative": {
        "model": {"kind": "discriminative", "skips": []},
        "anomalies": REMOVAL,
        "score": {"map": "head"},
    },
    # Pretrained features, nothing learned (patchcore's other settings: params.yaml's defaults).
    "patchcore_lite0": {"model": {"kind": "patchcore", "backbone": "efficientnet_lite0"}, "score": {"map": "auto"}},
    "patchcore_lite2": {"model": {"kind": "patchcore", "backbone": "efficientnet_lite2"}, "score": {"map": "auto"}},
    "patchcore_lite2_1pc": {
        "model": {"kind": "patchcore", "backbone": "efficientnet_lite2", "coreset_ratio": 0.01},
        "score": {"map": "auto"},
    },
}


def parse_set(assignments: list[str]) -> dict[str, Any]:
    """``["train.epochs=12", "model.skips=[1]"]`` -> nested dict, values parsed as YAML (like ``-S``)."""
    override: dict[str, Any] = {}
    for assignment in assignments:
        key, sep, value = assignment.partition("=")
        if not sep:
            raise SystemExit(f"--set {assignment!r}: expected key=value, e.g. train.epochs=12")
        node = override
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    return override


def prepare(source: str, root: str, category: str, raw_params: dict[str, Any], work: Path) -> tuple[Path, Path]:
    """Fetch (synthetic) or point at (folder) the raw category, preprocess once; raw and processed folders."""
    params = parse_params(raw_params, category)
    if source == "synthetic":
        raw_dir = work / "raw"
        if not raw_dir.is_dir():
            fetch_category(category, raw_dir, params.data)
    else:
        raw_dir = Path(root) / category
    processed = work / f"processed_{params.preprocess.image_size}"
    if not (processed / "index.json").is_file():
        preprocess_category(raw_dir, processed, params.preprocess, min_train_images=params.data.min_train_images)
    return raw_dir, processed


def run_variant(
    name: str, raw_params: dict[str, Any], category: str, raw_dir: Path, processed_dir: Path, work: Path
) -> dict[str, Any]:
    params = parse_params(raw_params, category)
    data = load_processed(processed_dir)
    model_path = work / name / "model.pt"
    start = time.perf_counter()
    result = train_category(data, params, model_path, work / name / "checkpoints", work / name / "logs", progress=False)
    minutes = (time.perf_counter() - start) / 60
    model, _ = load_model(model_path)
    val = synthetic_validation_metrics(model, data.val, params.score, seed=params.train.seed)
    scored = score_images(model, data.test, params.score)
    masks, maps = pixel_inputs(data, raw_dir, scored.maps, params.evaluate.resolution)
    return {
        "variant": name,
        "category": category,
        "map": DETECTORS[params.model.kind].map_kind(params.score.map),
        **val,
        "image_auroc": metrics.image_auroc(data.test_labels, scored.scores),
        "pixel_auroc": metrics.pixel_auroc(masks, maps),
        "au_pro": metrics.au_pro(masks, maps, fpr_limit=0.3),
        "train_minutes": minutes,
        "epochs": result.details.get("epochs_run"),
        "best_epoch": result.details.get("best_epoch"),
    }


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| variant | category | map | val synth AUROC | image AUROC | pixel AUROC | AU-PRO 0.3 | train min |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['category']} | {r['map']} | {r['val_synthetic_image_auroc']:.3f} | "
            f"{r['image_auroc']:.3f} | {r['pixel_auroc']:.3f} | {r['au_pro']:.3f} | {r['train_minutes']:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", choices=("synthetic", "folder"), default="synthetic")
    parser.add_argument("--root", default="", help="folder source: the folder holding <category>/ in MVTec AD layout")
    parser.add_argument("--categories", nargs="+", help="default: params.yaml data.categories (synthetic)")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--params", default=str(ROOT / "params.yaml"))
    parser.add_argument("--out", help="JSON results (default bench/results/ablation_<synthetic or categories>.json)")
    parser.add_argument("--work", default=str(ROOT / ".cache" / "bench" / "ablation"), help="where data and models go")
    args = parser.parse_args()

    base = yaml.safe_load(Path(args.params).read_text(encoding="utf-8"))
    base = deep_merge(base, {"data": {"source": args.source, "root": args.root}})
    if args.categories:
        base["data"]["categories"] = args.categories
    base = deep_merge(base, parse_set(args.assignments))
    categories = parse_params(base).data.categories
    print(
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}"
    )
    print(f"# --set {' '.join(args.assignments) or '(none)'}", flush=True)
    rows = []
    for category in categories:
        work = Path(args.work) / f"{args.source}-{category}"
        raw_dir, processed = prepare(args.source, args.root, category, base, work)
        for name in args.variants:
            row = run_variant(name, deep_merge(base, VARIANTS[name]), category, raw_dir, processed, work)
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(markdown(rows))
    name = args.source if args.source == "synthetic" else "-".join(categories)
    out = Path(args.out or ROOT / "bench" / "results" / f"ablation_{name}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"set": args.assignments, "rows": rows}, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
