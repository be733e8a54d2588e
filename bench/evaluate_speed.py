"""Evaluation cost at original resolution: seconds per part and peak memory.

Part 1 times the metrics on MVTec-sized inputs: ``n`` anomaly maps of ``side`` x ``side``
(default 80 of 900x900, like a bottle category) with blob-shaped ground-truth regions,
reporting pixel AUROC and AU-PRO seconds (target for AU-PRO: <= 3 s) and the peak RSS.

Part 2 (``--category``) times the real evaluate step of a category already in the workspace
(``data/processed/<cat>``, ``models/<cat>``), split into scoring, upsampling to original
size, each metric, and the plots.

Run: ``python bench/evaluate_speed.py [--images 80 --side 900] [--category weave]``
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from anomaly_spotter.evaluation import metrics  # noqa: E402


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def synthetic_inputs(count: int, side: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(0)
    masks, maps = [], []
    for i in range(count):
        mask = np.zeros((side, side), np.uint8)
        if i % 4:  # a quarter of the images are good
            for _ in range(rng.integers(1, 4)):
                centre = tuple(int(c) for c in rng.integers(0, side, 2))
                cv2.circle(mask, centre, int(rng.integers(5, side // 10)), 1, -1)
        noise = rng.random((side // 8, side // 8)).astype(np.float32)
        amap = cv2.resize(noise, (side, side)) + 0.5 * cv2.GaussianBlur(mask.astype(np.float32), (0, 0), 5)
        masks.append(mask.astype(bool))
        maps.append(amap.astype(np.float32))
    return masks, maps


def timed(label: str, fn, *args, **kwargs):
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    print(f"  {label:<28} {time.perf_counter() - start:7.3f} s")
    return result


def bench_metrics(count: int, side: int) -> None:
    masks, maps = synthetic_inputs(count, side)
    print(f"metrics on {count} maps of {side}x{side} float32 ({count * side * side / 1e6:.1f} M pixels); RSS before {peak_rss_mb():.0f} MB")
    timed("pixel_auroc", metrics.pixel_auroc, masks, maps)
    timed("au_pro (FPR <= 0.3)", metrics.au_pro, masks, maps)
    print(f"  peak RSS {peak_rss_mb():.0f} MB (inputs alone: {count * side * side * 5 / 1e6:.0f} MB)")


def bench_category(category: str) -> None:
    from anomaly_spotter.config import load_params
    from anomaly_spotter.evaluation.evaluate import compute_metrics, pixel_inputs
    from anomaly_spotter.dataset.processed import load_processed
    from anomaly_spotter.scoring import score_images
    from anomaly_spotter.detectors import load_model
    from anomaly_spotter.evaluation.thresholds import read_thresholds, score_record

    params = load_params(ROOT / "params.yaml", category)
    data = load_processed(ROOT / "data" / "processed" / category)
    model, _ = load_model(ROOT / "models" / category / "model.pt")
    thresholds = read_thresholds(ROOT / "models" / category / "thresholds.json", category=category)
    thresholds.require_score(score_record(params.score, model), category=category, user="this benchmark")
    threshold = thresholds.threshold
    print(f"evaluate {category}: {len(data.test)} test images")
    scored = timed("score (model + maps)", score_images, model, data.test, params.score)
    masks, maps = timed("read masks + upsample maps", pixel_inputs, data, ROOT / "data" / "raw" / category, scored.maps, "original")
    timed("all metrics", compute_metrics, data, scored, threshold, masks, maps)
    print(f"  peak RSS {peak_rss_mb():.0f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=80)
    parser.add_argument("--side", type=int, default=900)
    parser.add_argument("--category", default=None)
    args = parser.parse_args()
    if args.category:
        bench_category(args.category)
    else:
        bench_metrics(args.images, args.side)


if __name__ == "__main__":
    main()
