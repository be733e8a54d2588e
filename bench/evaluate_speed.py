"""Evaluation cost at original resolution: seconds per part and peak memory.

Part 1 times the metrics on MVTec-sized inputs: ``n`` anomaly maps of ``side`` x ``side``
(default 80 of 900x900, like a bottle category) with blob-shaped ground-truth regions,
reporting pixel AUROC and AU-PRO seconds (target for AU-PRO: <= 3 s) and the peak RSS.

Part 2 (``--category``) times the real evaluate step of a category already in the workspace
(``data/processed/<cat>``, ``models/<cat>``; ``--root`` for another one, e.g. a scratch clone),
split into scoring, upsampling to original size, each metric, and the plots; then the work
issue 22 added (per-defect-type results, the mistakes gallery and the fixed selection, every
mistake drawn) and its share of the rest, all in one run ("before" = everything else evaluate
does, "after" = that plus the additions).

Run: ``python bench/evaluate_speed.py [--images 80 --side 900] [--category weave [--root DIR]]``
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
    print(
        f"metrics on {count} maps of {side}x{side} float32 ({count * side * side / 1e6:.1f} M pixels); "
        f"RSS before {peak_rss_mb():.0f} MB"
    )
    timed("pixel_auroc", metrics.pixel_auroc, masks, maps)
    timed("au_pro (FPR <= 0.3)", metrics.au_pro, masks, maps)
    print(f"  peak RSS {peak_rss_mb():.0f} MB (inputs alone: {count * side * side * 5 / 1e6:.0f} MB)")


def timed_s(label: str, fn, *args, **kwargs):
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    seconds = time.perf_counter() - start
    print(f"  {label:<36} {seconds:7.3f} s")
    return result, seconds


def bench_category(category: str, root: Path = ROOT) -> None:
    from anomaly_spotter.config import load_params
    from anomaly_spotter.dataset.processed import load_processed
    from anomaly_spotter.detectors import load_model
    from anomaly_spotter.evaluation import metrics as m
    from anomaly_spotter.evaluation.evaluate import compute_metrics, heatmap_rows, pixel_inputs
    from anomaly_spotter.evaluation.mistakes import defect_type_rows, mistake_files, operating_point_results
    from anomaly_spotter.evaluation.thresholds import read_thresholds, score_record
    from anomaly_spotter.evaluation.visualize import heatmap_grid_png, score_histogram_png
    from anomaly_spotter.scoring import score_images

    params = load_params(root / "params.yaml", category)
    data = load_processed(root / "data" / "processed" / category)
    model, _ = load_model(root / "models" / category / "model.pt")
    thresholds = read_thresholds(root / "models" / category / "thresholds.json", category=category)
    thresholds.require_score(score_record(params.score, model), category=category, user="this benchmark")
    threshold, labels = thresholds.threshold, data.test_labels
    print(f"evaluate {category}: {len(data.test)} test images")
    scored, t_score = timed_s("score (model + maps)", score_images, model, data.test, params.score)
    (masks, maps), t_pixel = timed_s(
        "read masks + upsample maps",
        pixel_inputs,
        data,
        root / "data" / "raw" / category,
        scored.maps,
        params.evaluate.resolution,
    )
    results, t_metrics = timed_s("all metrics", compute_metrics, data, scored, threshold, masks, maps)
    _, t_pro = timed_s("PRO curve (pro.json)", m.pro_points, masks, maps, fpr_limit=params.evaluate.pro_fpr_limit)
    (vmin, vmax), t_scale = timed_s(
        "colour scale", lambda: tuple(float(q) for q in np.quantile(scored.maps, (0.5, 0.999)))
    )
    rows = heatmap_rows(data, scored, params.evaluate.heatmap_examples)
    _, t_heat = timed_s("heatmaps.png", heatmap_grid_png, rows, pixel_threshold=threshold, vmin=vmin, vmax=vmax)
    _, t_hist = timed_s(
        "score_histogram.png",
        score_histogram_png,
        scored.scores[labels == 0],
        scored.scores[labels == 1],
        threshold=threshold,
        title=category,
    )
    before = t_score + t_pixel + t_metrics + t_pro + t_scale + t_heat + t_hist
    print("  added by issue 22:")
    extra, t_types = timed_s(
        "per defect type at the threshold", operating_point_results, data, scored.scores, thresholds, masks, maps
    )
    defect_type_rows({**results, **extra})
    (plots, cases), t_gallery = timed_s(
        "mistakes gallery + selection",
        mistake_files,
        data,
        scored,
        thresholds,
        params.evaluate,
        category=category,
        vmin=vmin,
        vmax=vmax,
    )
    added = t_types + t_gallery
    drawn = sum(1 for name in cases if name.endswith(".png"))
    print(
        f"  {extra['per_defect_recall']} recall; {drawn} mistakes drawn, "
        f"{sum(map(len, plots.values())) / 1e3:.0f} kB on the page"
    )
    print(f"  before {before:.2f} s, after {before + added:.2f} s: +{added:.2f} s = +{100 * added / before:.1f} %")
    print(f"  peak RSS {peak_rss_mb():.0f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=80)
    parser.add_argument("--side", type=int, default=900)
    parser.add_argument("--category", default=None)
    parser.add_argument("--root", type=Path, default=ROOT, help="workspace holding data/, models/ and params.yaml")
    args = parser.parse_args()
    if args.category:
        bench_category(args.category, args.root)
    else:
        bench_metrics(args.images, args.side)


if __name__ == "__main__":
    main()
