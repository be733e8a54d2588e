"""Stage ``evaluate``: score the test set once and write metrics, plots and per-image results.

Outputs for one category:

* ``metrics/<category>.json`` – image AUROC, pixel AUROC, AU-PRO (FPR ≤ ``evaluate.pro_fpr_limit``,
  0.3 by default; for MVTec LOCO AD also its AU-sPRO at the same limit), accuracy /
  precision / recall / F1 and confusion counts at the threshold chosen on *normal validation
  images* (``models/<category>/thresholds.json``, refused when it records other score params
  than ``params.score``), the oracle best F1 (comparison only) and image AUROC per defect type;
* ``plots/<category>/`` – the data of the charts ``dvc plots show`` draws with the templates in
  ``.dvc/plots/`` (declared in ``dvc.yaml``, so ``dvc plots diff`` overlays experiments):
  ``roc.json`` and ``pr.json`` (one extra row, ``operating_point: true``, is where the chosen
  threshold sits on the curve), ``pro.json`` (the PRO curve up to that FPR, every row carrying
  ``au_pro``) and ``scores.json`` (every test image's score, label and the threshold); also
  ``heatmaps.png`` and ``score_histogram.png``; at the threshold (:mod:`anomaly_spotter.evaluation.mistakes`):
  ``mistakes.png`` (the worst misses and false alarms), ``selection.png`` (the same seeded test
  images in every experiment) and ``defect_types.json`` (recall and region PRO per defect type,
  the good images' false-alarm rate);
* ``evaluation/<category>/scores.csv`` – one row per test image; ``mistakes.csv`` and
  ``mistakes/``, every miss and false alarm drawn; with
  ``evaluate.export_maps`` also ``anomaly_maps/<category>/test/<defect>/<id>.tiff``, the
  layout MVTec's official evaluation script reads.

Pixel metrics are computed at each image's original resolution by default, as MVTec's
evaluation does: maps are upsampled one image at a time and kept as float32. A category with
image labels only (``data.masks: none``) skips them, and ``pixel_metrics`` says so.

Example:
    >>> evaluate_category(data, raw_dir, model, thresholds, params, category="weave",
    ...                   metrics_path=..., plots_dir=..., results_dir=...)  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import numpy as np

from anomaly_spotter.config import EvaluateConfig, Params
from anomaly_spotter.dataset.images import encode_float_tiff, read_mask
from anomaly_spotter.dataset.processed import ProcessedCategory
from anomaly_spotter.dataset.regions import read_regions
from anomaly_spotter.detectors.anomaly_map import resize_to
from anomaly_spotter.detectors.base import Detector
from anomaly_spotter.evaluation import metrics as m
from anomaly_spotter.evaluation.mistakes import PIXEL_SKIPPED, defect_type_rows, mistake_files, operating_point_results
from anomaly_spotter.evaluation.thresholds import Thresholds, score_record
from anomaly_spotter.evaluation.visualize import HeatmapRow, heatmap_grid_png, score_histogram_png
from anomaly_spotter.fileio import staging_dir, write_bytes, write_json
from anomaly_spotter.scoring import ScoredImages, score_images

GOOD = "good"
DEFECT = "defect"


def pixel_inputs(
    data: ProcessedCategory, raw_dir: Path, maps: np.ndarray, resolution: str
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Ground-truth masks and anomaly maps, paired, at ``original`` or ``model`` resolution."""
    if resolution == "model":
        return [np.asarray(mask, dtype=bool) for mask in data.test_masks], list(maps)
    masks, resized = [], []
    for item, amap in zip(data.test_items, maps, strict=False):
        size = (item.height, item.width)
        masks.append(read_mask(raw_dir / item.mask) if item.mask else np.zeros(size, bool))
        resized.append(resize_to(amap, size))
    return masks, resized


def compute_metrics(
    data: ProcessedCategory,
    scored: ScoredImages,
    threshold: float,
    masks: list[np.ndarray] | None,
    maps: list[np.ndarray] | None,
    *,
    fpr_limit: float = EvaluateConfig().pro_fpr_limit,
) -> dict[str, Any]:
    """Every number of ``metrics/<category>.json``; AU-PRO integrates up to ``fpr_limit`` (``evaluate.pro_fpr_limit``).

    Without ``masks`` (image labels only) the pixel metrics are left out and ``pixel_metrics`` says why.
    """
    labels, scores = data.test_labels, scored.scores
    at_threshold = m.classification_at_threshold(labels, scores, threshold)
    oracle = m.f1_max(labels, scores)
    if masks is None or maps is None:
        pixel: dict[str, Any] = {"pixel_metrics": PIXEL_SKIPPED}
    else:
        pixel = {"pixel_auroc": m.pixel_auroc(masks, maps), "au_pro": m.au_pro(masks, maps, fpr_limit=fpr_limit)}
    return {
        "image_auroc": m.image_auroc(labels, scores),
        **pixel,
        **at_threshold,
        "threshold": threshold,
        "f1_max_oracle": oracle["f1_max"],  # best F1 over all thresholds: peeks at test labels
        "per_defect_image_auroc": m.per_defect_auroc(labels, data.defect_types, scores),
        "test_images": int(len(labels)),
    }


def _curve_rows(curve: dict[str, list[float]], **constant: Any) -> list[dict[str, Any]]:
    """One dict per point; ``constant`` fields go into every row (DVC wants equal keys in all rows)."""
    keys = list(curve)
    return [{**dict(zip(keys, values, strict=False)), **constant} for values in zip(*curve.values(), strict=False)]


def curve_with_operating_point(curve: dict[str, list[float]], point: dict[str, float]) -> list[dict[str, Any]]:
    """The curve's rows plus one row for where the threshold in use sits on it.

    The point is a row of the same file, not a file of its own, because ``dvc plots diff``
    gives one chart per file and must overlay curve and point for each revision; the template
    (``.dvc/plots/curve_operating_point.json``) draws rows with ``operating_point`` as a marker.

    >>> curve_with_operating_point({"fpr": [0.0, 1.0], "tpr": [0.0, 1.0]}, {"fpr": 0.5, "tpr": 0.5})[-1]
    {'fpr': 0.5, 'tpr': 0.5, 'operating_point': True}
    """
    return [*_curve_rows(curve, operating_point=False), {**point, "operating_point": True}]


def operating_points(results: dict[str, Any]) -> tuple[dict[str, float], dict[str, float]]:
    """Where ``results``' threshold sits on the ROC (fpr, tpr) and PR (recall, precision) curves."""
    negatives = results["fp"] + results["tn"]
    threshold = float(results["threshold"])
    roc = {
        "fpr": results["fp"] / negatives if negatives else 0.0,
        "tpr": float(results["recall"]),
        "threshold": threshold,
    }
    pr = {"precision": float(results["precision"]), "recall": float(results["recall"]), "threshold": threshold}
    return roc, pr


def score_rows(data: ProcessedCategory, scores: np.ndarray, threshold: float) -> list[dict[str, Any]]:
    """Every test image's score with its label (good / defect) and the threshold: the histogram's data."""
    return [
        {
            "file": item.file,
            "defect_type": item.defect_type,
            "label": DEFECT if item.label else GOOD,
            "score": float(score),
            "threshold": float(threshold),
        }
        for item, score in zip(data.test_items, scores, strict=False)
    ]


def heatmap_rows(data: ProcessedCategory, scored: ScoredImages, per_type: int) -> list[HeatmapRow]:
    """``per_type`` images of each defect type plus as many good ones, in test order."""
    picked: dict[str, list[int]] = {}
    for i, item in enumerate(data.test_items):
        chosen = picked.setdefault(item.defect_type, [])
        if len(chosen) < per_type:
            chosen.append(i)
    order = sorted(picked, key=lambda name: (name != GOOD, name))  # good first, then defect types
    rows = []
    for name in order:
        for i in picked[name]:
            rows.append(
                HeatmapRow(
                    title=f"{name} {Path(data.test_items[i].file).name} s={scored.scores[i]:.3g}",
                    image=np.asarray(data.test[i]),
                    reconstruction=None if scored.reconstructions is None else scored.reconstructions[i],
                    anomaly_map=scored.maps[i],
                    mask=np.asarray(data.test_masks[i], dtype=bool),
                )
            )
    return rows


def scores_csv(data: ProcessedCategory, scores: np.ndarray, threshold: float) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["file", "defect_type", "label", "score", "predicted_anomalous"])
    for item, score in zip(data.test_items, scores, strict=False):
        writer.writerow([item.file, item.defect_type, item.label, f"{score:.8g}", int(score >= threshold)])
    return buffer.getvalue().encode("utf-8")


def export_tiffs(folder: Path, category: str, data: ProcessedCategory, maps: list[np.ndarray]) -> None:
    """Float32 TIFF maps at ``<folder>/<category>/test/<defect>/<id>.tiff`` (MVTec evaluation layout)."""
    for item, amap in zip(data.test_items, maps, strict=False):
        stem = Path(item.file).stem
        write_bytes(folder / category / "test" / item.defect_type / f"{stem}.tiff", encode_float_tiff(amap))


def region_spro(
    data: ProcessedCategory,
    raw_dir: Path,
    model_maps: np.ndarray,
    maps: list[np.ndarray] | None,
    resolution: str,
    fpr_limit: float,
) -> float | None:
    """MVTec LOCO AD's official sPRO, on maps at the regions' (original) size; None without ``regions/``.

    ``maps`` are the ones already at ``resolution`` (reused when that is ``original``).
    """
    regions = read_regions(raw_dir, data.test_items)
    if regions is None:
        return None
    original = maps if resolution == "original" else pixel_inputs(data, raw_dir, model_maps, "original")[1]
    assert original is not None  # regions come with masks, so the maps were upsampled
    good = [item.label == 0 for item in data.test_items]
    return m.au_spro(original, regions, good, fpr_limit=fpr_limit)


def evaluate_category(
    data: ProcessedCategory,
    raw_dir: Path,
    model: Detector,
    thresholds: Thresholds,
    params: Params,
    *,
    category: str,
    metrics_path: Path,
    plots_dir: Path,
    results_dir: Path,
) -> dict[str, Any]:
    """Score the test set of one category and write every evaluate output; return the metrics.

    ``thresholds`` must record the score params used now (``params.score`` with this model),
    else :class:`~anomaly_spotter.evaluation.thresholds.ThresholdsMismatchError` says what to re-run.
    """
    thresholds.require_score(score_record(params.score, model), category=category, user="evaluate")
    threshold = thresholds.threshold
    scored = score_images(model, data.test, params.score)
    with_masks = data.masks != "none"
    resolution = params.evaluate.resolution
    masks, maps = pixel_inputs(data, Path(raw_dir), scored.maps, resolution) if with_masks else (None, None)
    fpr_limit = params.evaluate.pro_fpr_limit
    results = compute_metrics(data, scored, threshold, masks, maps, fpr_limit=fpr_limit)
    spro = region_spro(data, Path(raw_dir), scored.maps, maps, resolution, fpr_limit) if with_masks else None
    if spro is not None:
        results["au_spro"] = spro
    results["threshold_strategy"] = thresholds.strategy
    results.update(operating_point_results(data, scored.scores, thresholds, masks, maps))
    labels = data.test_labels

    roc_point, pr_point = operating_points(results)

    with staging_dir(plots_dir) as plots, staging_dir(results_dir) as out:
        write_json(
            plots / "roc.json", {"roc": curve_with_operating_point(m.roc_points(labels, scored.scores), roc_point)}
        )
        write_json(plots / "pr.json", {"pr": curve_with_operating_point(m.pr_points(labels, scored.scores), pr_point)})
        if masks is not None and maps is not None:
            pro_rows = _curve_rows(m.pro_points(masks, maps, fpr_limit=fpr_limit), au_pro=results["au_pro"], note="")
        else:  # the chart says why it is empty
            pro_rows = [{"fpr": 0.0, "pro": 0.0, "au_pro": None, "note": f"pixel metrics {PIXEL_SKIPPED}"}]
        write_json(plots / "pro.json", {"pro": pro_rows})
        write_json(plots / "scores.json", {"scores": score_rows(data, scored.scores, threshold)})
        write_json(plots / "defect_types.json", {"defect_types": defect_type_rows(results)})
        # One colour scale for all rows, from the typical map value (blue) to the extreme (red).
        vmin, vmax = (float(q) for q in np.quantile(scored.maps, (0.5, 0.999)))
        rows = heatmap_rows(data, scored, params.evaluate.heatmap_examples)
        mask_title = "ground truth" if with_masks else "no masks (image labels only)"
        heatmaps = heatmap_grid_png(rows, pixel_threshold=threshold, vmin=vmin, vmax=vmax, mask_title=mask_title)
        write_bytes(plots / "heatmaps.png", heatmaps)
        gallery, cases = mistake_files(
            data, scored, thresholds, params.evaluate, category=category, vmin=vmin, vmax=vmax
        )
        for name, content in (*((plots / n, c) for n, c in gallery.items()), *((out / n, c) for n, c in cases.items())):
            write_bytes(name, content)
        write_bytes(
            plots / "score_histogram.png",
            score_histogram_png(
                scored.scores[labels == 0],
                scored.scores[labels == 1],
                threshold=threshold,
                title=f"{category}: image scores",
            ),
        )
        write_bytes(out / "scores.csv", scores_csv(data, scored.scores, threshold))
        if params.evaluate.export_maps:  # always at original size, as MVTec's script expects
            at_original = with_masks and params.evaluate.resolution == "original"
            original = maps if at_original else pixel_inputs(data, Path(raw_dir), scored.maps, "original")[1]
            assert original is not None  # at_original implies with_masks, so the maps were upsampled above
            export_tiffs(out / "anomaly_maps", category, data, original)
    write_json(metrics_path, results)
    return results
