"""The mistakes at the operating threshold, results per defect type, and a fixed image selection.

Everything here reads what ``evaluate`` has already computed (the image scores, the anomaly
maps and the ground-truth masks): no second scoring pass. An image is flagged when its score
is >= the threshold (as in :func:`anomaly_spotter.evaluation.metrics.classification_at_threshold`).

* :func:`mistakes` – every false negative (a defective image passed), lowest score first (the
  clearest miss first), and every false positive (a good image flagged), highest score first;
  ties keep test order. ``evaluate`` draws the first ``evaluate.gallery_size`` of each on the
  plots page and every one under ``evaluation/<category>/mistakes/``.
* :func:`per_defect_results` – per defect type: the images, how many were flagged and the
  recall (their share); the mean PRO of its regions at the threshold (pixel level: each
  8-connected region of a mask counts the share of its pixels whose map value reaches the
  threshold, as in the heatmaps' thresholded column) and, for the good test images, the
  false-alarm rate.
* :func:`comparison_selection` – a seeded choice of test images per defect type (``good``
  included) that depends only on the test files, so two experiments draw the same parts.

Example:
    >>> import numpy as np
    >>> fn, fp = mistakes(np.array([1, 1, 0, 0]), np.array([0.2, 0.9, 0.8, 0.1]), 0.5)
    >>> fn, fp
    ([0], [2])
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import ndimage

from anomaly_spotter.config import EvaluateConfig
from anomaly_spotter.dataset.processed import ProcessedCategory
from anomaly_spotter.evaluation.gallery import GalleryRow, gallery_png
from anomaly_spotter.evaluation.thresholds import Thresholds, false_alarm_target

if TYPE_CHECKING:  # scoring imports torch; only its result type is used here
    from anomaly_spotter.scoring import ScoredImages

GOOD = "good"
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)  # MVTec's regions: 8-connected components


def mistakes(labels: np.ndarray, scores: np.ndarray, threshold: float) -> tuple[list[int], list[int]]:
    """Indices of the false negatives (lowest score first) and false positives (highest first).

    >>> mistakes(np.array([1, 1, 1, 0]), np.array([0.3, 0.1, 0.3, 0.7]), 0.5)
    ([1, 0, 2], [3])
    """
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    flagged = s >= threshold
    fn = np.flatnonzero(y & ~flagged)
    fp = np.flatnonzero(~y & flagged)
    fn = fn[np.argsort(s[fn], kind="stable")]
    fp = fp[np.argsort(-s[fp], kind="stable")]
    return [int(i) for i in fn], [int(i) for i in fp]


def region_overlaps(mask: np.ndarray, amap: np.ndarray, threshold: float) -> list[float]:
    """Per 8-connected region of ``mask``: the share of its pixels whose map value is >= ``threshold``.

    >>> mask = np.array([[1, 1, 0, 1]], bool)
    >>> region_overlaps(mask, np.array([[0.9, 0.1, 0.9, 0.9]]), 0.5)
    [0.5, 1.0]
    """
    regions, count = ndimage.label(np.asarray(mask, dtype=bool), structure=_EIGHT_CONNECTED)
    if not count:
        return []
    flat = regions.ravel()
    sizes = np.bincount(flat, minlength=count + 1)[1:]
    hits = np.bincount(flat, weights=(np.asarray(amap) >= threshold).ravel(), minlength=count + 1)[1:]
    return [float(h / n) for h, n in zip(hits, sizes, strict=False)]


def per_defect_results(
    labels: np.ndarray,
    defect_types: Sequence[str],
    scores: np.ndarray,
    threshold: float,
    masks: Sequence[np.ndarray] | None = None,
    maps: Sequence[np.ndarray] | None = None,
) -> dict[str, Any]:
    """Recall per defect type, mean region PRO at the threshold (with masks) and the false-alarm rate.

    ``masks`` and ``maps`` are evaluate's pixel inputs (same resolution per image); without
    them (image labels only) the PRO entry is left out. Keys of every dict are sorted types.

    >>> r = per_defect_results(np.array([0, 0, 1, 1, 1]), ["good", "good", "a", "a", "b"],
    ...                        np.array([0.1, 0.9, 0.8, 0.2, 0.7]), 0.5)
    >>> r["per_defect_recall"], r["per_defect_images"], r["false_alarm_rate"]
    ({'a': 0.5, 'b': 1.0}, {'a': 2, 'b': 1}, 0.5)
    """
    y = np.asarray(labels).astype(bool)
    types = np.asarray(defect_types, dtype=object)
    flagged = np.asarray(scores, dtype=np.float64) >= threshold
    names = sorted({str(t) for t in types[y]})
    recall, images, hits = {}, {}, {}
    for name in names:
        of_type = y & (types == name)
        images[name] = int(of_type.sum())
        hits[name] = int((of_type & flagged).sum())
        recall[name] = hits[name] / images[name]
    good = int((~y).sum())
    result: dict[str, Any] = {
        "per_defect_recall": recall,
        "per_defect_images": images,
        "per_defect_flagged": hits,
        "false_alarm_rate": float((~y & flagged).sum() / good) if good else float("nan"),
        "good_images": good,
    }
    if masks is not None and maps is not None:
        overlaps: dict[str, list[float]] = {name: [] for name in names}
        for i in map(int, np.flatnonzero(y)):
            overlaps[str(types[i])].extend(region_overlaps(masks[i], maps[i], threshold))
        result["per_defect_pro_at_threshold"] = {
            name: float(np.mean(values)) if values else float("nan") for name, values in overlaps.items()
        }
    return result


def weakest_defect_type(recall: dict[str, float]) -> str | None:
    """The type with the lowest recall (ties: the first by name); None without defect types.

    >>> weakest_defect_type({"crack": 0.5, "hole": 0.25, "stain": 0.25})
    'hole'
    """
    return min(sorted(recall), key=lambda name: recall[name]) if recall else None


def comparison_selection(defect_types: Sequence[str], files: Sequence[str], per_type: int, seed: int) -> list[int]:
    """``per_type`` seeded test images of every type (``good`` first, then types by name), in a stable order.

    The choice depends only on the test files and ``seed`` (never on scores), so every
    experiment on the same data picks the same images. Within a type, files are ordered by name
    before drawing, and the drawn ones are listed by name.

    >>> types = ["crack", "crack", "crack", "good", "good"]
    >>> files = [f"test/{t}/{i}.png" for i, t in enumerate(types)]
    >>> picked = comparison_selection(types, files, 2, seed=0)
    >>> len(picked), picked == comparison_selection(types, files, 2, seed=0), picked[:2]
    (4, True, [3, 4])
    """
    by_type: dict[str, list[int]] = {}
    for i, name in enumerate(defect_types):
        by_type.setdefault(str(name), []).append(i)
    order = sorted(by_type, key=lambda name: (name != GOOD, name))
    picked: list[int] = []
    for name in order:
        members = sorted(by_type[name], key=lambda i: files[i])
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])  # per type: adding a type moves no other
        chosen = rng.choice(len(members), size=min(per_type, len(members)), replace=False)
        picked.extend(sorted((members[int(c)] for c in chosen), key=lambda i: files[i]))
    return picked


# --------------------------------------------------------------------------- evaluate's outputs

PIXEL_SKIPPED = "skipped: data.masks is none (image labels only, no ground_truth/ masks), so nothing is known per pixel"
VERDICTS = {
    (1, True): "flagged (TP)",
    (1, False): "missed (FN)",
    (0, True): "false alarm (FP)",
    (0, False): "passed (TN)",
}


def operating_point_results(
    data: ProcessedCategory,
    scores: np.ndarray,
    thresholds: Thresholds,
    masks: Sequence[np.ndarray] | None,
    maps: Sequence[np.ndarray] | None,
) -> dict[str, Any]:
    """What ``metrics/<category>.json`` gains at the threshold: :func:`per_defect_results`, the
    weakest type, and the false-alarm rate next to its target (``fpr_<p>``) and its validation value."""
    labels = data.test_labels
    result = per_defect_results(labels, data.defect_types, scores, thresholds.threshold, masks, maps)
    weakest = weakest_defect_type(result["per_defect_recall"])
    if weakest is not None:
        result["weakest_defect_type"] = weakest
    target = false_alarm_target(thresholds.strategy)
    if target is not None:
        result["false_alarm_rate_target"] = target
    if thresholds.strategy in thresholds.validation_false_alarm_rates:
        result["false_alarm_rate_validation"] = thresholds.validation_false_alarm_rates[thresholds.strategy]
    return result


def defect_type_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows of ``plots/<category>/defect_types.json``: recall and region PRO per type, the good images' false alarms.

    >>> defect_type_rows({"per_defect_recall": {"a": 0.5}, "per_defect_images": {"a": 2}, "false_alarm_rate": 0.1,
    ...                   "good_images": 10})[0]  # doctest: +ELLIPSIS
    {'defect_type': 'a', 'measure': 'recall', 'value': 0.5, 'images': 2, 'note': 'pixel PRO skipped: ...'}
    """
    note = "" if "per_defect_pro_at_threshold" in results else f"pixel PRO {PIXEL_SKIPPED}"
    rows = []
    for name, recall in results["per_defect_recall"].items():
        images = results["per_defect_images"][name]
        rows.append({"defect_type": name, "measure": "recall", "value": recall, "images": images, "note": note})
        if "per_defect_pro_at_threshold" in results:
            pro = results["per_defect_pro_at_threshold"][name]
            rows.append({"defect_type": name, "measure": "region PRO", "value": pro, "images": images, "note": note})
    good = {"defect_type": GOOD, "measure": "false-alarm rate", "value": results["false_alarm_rate"]}
    rows.append({**good, "images": int(results.get("good_images", 0)), "note": note})
    return rows


def _row(data: ProcessedCategory, scored: ScoredImages, i: int, caption: str, with_masks: bool) -> GalleryRow:
    mask = np.asarray(data.test_masks[i], dtype=bool) if with_masks else None
    return GalleryRow(caption=caption, image=np.asarray(data.test[i]), anomaly_map=scored.maps[i], mask=mask)


def _case_name(kind: str, rank: int, file: str) -> str:
    parts = Path(file).parts
    return f"{kind}_{rank:03d}_{parts[-2] if len(parts) > 1 else GOOD}_{Path(file).stem}.png"


def mistake_files(
    data: ProcessedCategory,
    scored: ScoredImages,
    thresholds: Thresholds,
    settings: EvaluateConfig,
    *,
    category: str,
    vmin: float,
    vmax: float,
) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """``(plots, results)``: file name -> bytes for ``plots/<category>/`` (``mistakes.png``,
    ``selection.png``) and ``evaluation/<category>/`` (``mistakes.csv`` and one PNG per mistake in ``mistakes/``)."""
    threshold, scores, labels = thresholds.threshold, scored.scores, data.test_labels
    with_masks = data.masks != "none"
    fn, fp = mistakes(labels, scores, threshold)
    files = [item.file for item in data.test_items]
    draw = dict(threshold=threshold, vmin=vmin, vmax=vmax)
    cases = [
        ("fn", rank, i, f"miss #{rank}: {files[i]} score {scores[i]:.4g} < {threshold:.4g}")
        for rank, i in enumerate(fn, 1)
    ]
    cases += [
        ("fp", rank, i, f"false alarm #{rank}: {files[i]} score {scores[i]:.4g} >= {threshold:.4g}")
        for rank, i in enumerate(fp, 1)
    ]
    results: dict[str, bytes] = {}
    lines = ["kind,rank,file,defect_type,score,threshold,image"]
    for kind, rank, i, caption in cases:
        name = _case_name(kind, rank, files[i])
        title = f"{category}: {'missed defect' if kind == 'fn' else 'false alarm'} at {thresholds.strategy}"
        results[f"mistakes/{name}"] = gallery_png([_row(data, scored, i, caption, with_masks)], title=title, **draw)
        defect = data.test_items[i].defect_type
        lines.append(f"{kind},{rank},{files[i]},{defect},{scores[i]:.8g},{threshold:.8g},mistakes/{name}")
    results["mistakes.csv"] = ("\n".join(lines) + "\n").encode("utf-8")
    shown = [c for c in cases if c[1] <= settings.gallery_size]
    title = (
        f"{category}: {len(fn)} missed defect(s), {len(fp)} false alarm(s) at threshold {threshold:.4g} "
        f"({thresholds.strategy})\nworst first; showing {sum(c[0] == 'fn' for c in shown)} + "
        f"{sum(c[0] == 'fp' for c in shown)} (evaluate.gallery_size), all in evaluation/{category}/mistakes/"
    )
    rows = [_row(data, scored, i, caption, with_masks) for _, _, i, caption in shown]
    plots = {"mistakes.png": gallery_png(rows, title=title, **draw)}
    picked = comparison_selection(data.defect_types, files, settings.compare_per_type, settings.compare_seed)
    verdicts = [VERDICTS[(int(labels[i]), bool(scores[i] >= threshold))] for i in picked]
    rows = [
        _row(data, scored, i, f"{files[i]} score {scores[i]:.4g}: {verdict}", with_masks)
        for i, verdict in zip(picked, verdicts, strict=False)
    ]
    title = (
        f"{category}: the same test images in every run (evaluate.compare_seed {settings.compare_seed})\n"
        f"threshold {threshold:.4g} ({thresholds.strategy})"
    )
    plots["selection.png"] = gallery_png(rows, title=title, **draw)
    return plots, results
