"""What in anomalib's map path moves localisation: each of its choices swapped alone into ours.

bench/peer_anomalib.py compares the two systems whole; this script explains the gap (or its
absence) at equal settings. It fits our PatchCore once per set (the pipeline's own fit, on the
pixels bench/peer_anomalib.py exports), takes the raw patch distances of the test split once, and
re-makes the maps and image scores with anomalib 2.7.0's choices instead of ours, one at a time:

- map upsampling: nearest (``F.interpolate``'s default, anomalib) vs bilinear (ours);
- Gaussian kernel: ``2 * int(4 sigma + 0.5) + 1`` = 33 px (anomalib) vs ``2 * ceil(3 sigma) + 1`` = 25 (ours);
- blur border: reflect (anomalib) vs replicate (ours);
- image score: the max patch distance x reweighting (anomalib) vs the mean of the top 1 % (ours).

Metrics come from the project's code at each test image's original resolution
(``peer_anomalib.side_metrics``). Where the work folder also holds anomalib's maps
(``anomalib.npz``, left by a bench/peer_anomalib.py run), their agreement with ours on anomalib's
path is recorded too. Writes ``bench/results/peer_anomalib_localisation.json``.

Run: ``nice python bench/peer_localisation.py [--datasets mvtec3d_tire magnetic_tile]`` (~2 minutes a set).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

import peer_anomalib  # noqa: E402  (puts src/ on the path)
from anomaly_spotter.detectors import anomaly_map  # noqa: E402

OUT = peer_anomalib.REPO / "bench" / "results" / "peer_anomalib_localisation.json"
OURS = {"mode": "bilinear", "kernel": "ours", "border": "replicate"}
# Each variant is ours with the named choices replaced by anomalib's.
VARIANTS = {
    "ours (bilinear, k25, replicate)": {},
    "nearest upsampling": {"mode": "nearest"},
    "kernel 33 (4 sigma)": {"kernel": "anomalib"},
    "reflect border": {"border": "reflect"},
    "k33 + reflect": {"kernel": "anomalib", "border": "reflect"},
    "anomalib map path (nearest, k33, reflect)": {"mode": "nearest", "kernel": "anomalib", "border": "reflect"},
}


def kernel_size(sigma: float, rule: str) -> int:
    """Our ±3 sigma kernel, or anomalib's ``2 * int(4 sigma + 0.5) + 1``."""
    return anomaly_map.gaussian_kernel_size(sigma) if rule == "ours" else 2 * int(4.0 * sigma + 0.5) + 1


def make_maps(distances: torch.Tensor, side: int, sigma: float, mode: str, kernel: str, border: str) -> np.ndarray:
    """(N, g, g) patch distances -> (N, side, side) maps, upsampled by ``mode`` and blurred as told."""
    from kornia.filters import gaussian_blur2d

    align = {"align_corners": False} if mode == "bilinear" else {}
    maps = F.interpolate(distances.unsqueeze(1), size=(side, side), mode=mode, **align)  # (N, 1, S, S)
    k = kernel_size(sigma, kernel)
    return gaussian_blur2d(maps, (k, k), (sigma, sigma), border_type=border).squeeze(1).float().numpy()


def distances_and_weights(detector: Any, images: np.ndarray, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The detector's raw (N, g, g) patch distances and (N,) reweighting of uint8 (N, S, S, 3) images."""
    from anomaly_spotter.tensors import to_tensor

    parts, weights = [], []
    with torch.inference_mode():
        for lo in range(0, len(images), batch):
            d, w = detector(to_tensor(np.asarray(images[lo : lo + batch])))
            parts.append(d)
            weights.append(w)
    return torch.cat(parts), torch.cat(weights)


def one_set(name: str, raw: Path, params: Any) -> dict[str, Any]:
    data, work = peer_anomalib.prepare(name, raw, params)
    detector, _ = peer_anomalib.fit_ours(data, params)
    distances, weights = distances_and_weights(detector, data.test, params.score.batch_size)
    side, sigma = int(data.image_size), float(params.score.smoothing_sigma)
    topk = anomaly_map.image_scores(distances, reduction="topk_mean", topk_percent=params.score.topk_percent)
    ours_scores = (topk * weights).double().numpy()
    found: dict[str, Any] = {}
    for label, swap in VARIANTS.items():
        maps = make_maps(distances, side, sigma, **{**OURS, **swap})
        found[label] = peer_anomalib.side_metrics(data, raw, maps, ours_scores)
        print(f"{name}: {label}: {found[label]}", flush=True)
    ours_maps = make_maps(distances, side, sigma, **OURS)
    max_scores = (anomaly_map.image_scores(distances, reduction="max") * weights).double().numpy()
    found["image score max x weight (anomalib's)"] = peer_anomalib.side_metrics(data, raw, ours_maps, max_scores)
    peer_file = work / "anomalib.npz"
    if peer_file.is_file():
        theirs = np.load(peer_file)["maps"].astype(np.float64)
        mine = make_maps(distances, side, sigma, "nearest", "anomalib", "reflect").astype(np.float64)
        found["anomalib vs our maps on its path"] = {
            "max_abs_diff": float(np.abs(theirs - mine).max()),
            "max_abs": float(np.abs(theirs).max()),
            "pearson": float(np.corrcoef(theirs.ravel(), mine.ravel())[0, 1]),
        }
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--datasets", nargs="+", help="sets under ../shared/datasets (default: every one present)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    present = peer_anomalib.available_sets()
    names, skipped = peer_anomalib.choose_sets(args.datasets, present)
    for name in skipped:
        print(f"skipped {name}: not found under {peer_anomalib.SHARED}")
    params = peer_anomalib.pipeline_params()
    results = json.loads(args.out.read_text(encoding="utf-8")) if args.out.is_file() else {}
    for name in names:
        # Merged: a set's anomalib comparison stays from the last run that had its maps.
        results[name] = {**results.get(name, {}), **one_set(name, present[name], params)}
    args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
