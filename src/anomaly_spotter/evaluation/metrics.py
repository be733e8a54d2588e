"""Evaluation metrics for anomaly detection: image level and pixel level (MVTec protocol).

Conventions used throughout:

* ``labels`` are 0 (good) / 1 (anomalous); higher ``scores`` mean more anomalous; a sample is
  predicted anomalous when ``score >= threshold``.
* Pixel metrics take one boolean mask and one float map per test image, at the image's own
  (original) resolution, so images may differ in size. Good images have all-False masks.
* Every function raises :class:`MetricError` (a ``ValueError`` and a
  :class:`~anomaly_spotter.errors.UserError`) when a metric is undefined for the inputs (one
  class only, no defect regions, non-finite scores), instead of returning NaN.

Pixel metrics are exact (ties included) yet memory-light: the only full-size buffer is one
copy of the defect-free pixels' scores, sorted or partitioned in place. Maps keep their
precision: float64 maps are compared in float64 (casting them down would merge scores that
differ below float32 resolution and change the result), anything else in float32, so the
pipeline's float32 maps (MVTec-sized test sets) never get a float64 copy.

Example:
    >>> import numpy as np
    >>> labels, scores = np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])
    >>> image_auroc(labels, scores)
    0.75
    >>> classification_at_threshold(labels, scores, 0.35)["tp"]
    2
    >>> mask = np.zeros((4, 4), bool); mask[1:3, 1:3] = True
    >>> au_pro([mask], [mask.astype(np.float32)])
    1.0
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from scipy import ndimage
from sklearn.metrics import precision_recall_curve, roc_auc_score, roc_curve

from anomaly_spotter.errors import UserError

# Curves written for plots are capped at this many points (test sets give far fewer).
MAX_CURVE_POINTS = 1000
# Keys are searched in blocks of this many so temporary index arrays stay small (~64 MiB).
_SEARCH_CHUNK = 1 << 22
# MVTec: defect regions are 8-connected components of a mask.
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


class MetricError(UserError, ValueError):
    """A metric is undefined for these inputs; the message says why."""


# --------------------------------------------------------------------------- image level


def _binary_inputs(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validated (bool labels, float64 scores), both 1-D and of equal length."""
    y = np.asarray(labels)
    s = np.asarray(scores, dtype=np.float64)
    if y.ndim != 1 or s.ndim != 1 or len(y) != len(s):
        raise MetricError(f"labels and scores must be 1-D of equal length; got shapes {y.shape} and {s.shape}")
    if len(y) == 0:
        raise MetricError("labels and scores are empty")
    if y.dtype != bool and not np.isin(y, (0, 1)).all():
        raise MetricError(f"labels must be 0 (good) or 1 (anomalous); got values {np.unique(y)[:10].tolist()}")
    if not np.isfinite(s).all():
        raise MetricError(f"{int((~np.isfinite(s)).sum())} score(s) are NaN or infinite")
    return y.astype(bool), s


def _require_both_classes(y: np.ndarray, what: str) -> None:
    positives = int(y.sum())
    if positives == 0 or positives == len(y):
        only = "anomalous" if positives else "good"
        raise MetricError(f"{what} needs good and anomalous samples; all {len(y)} are {only}")


def image_auroc(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """Area under the ROC curve of image scores (ties count one half).

    >>> image_auroc([0, 1, 0, 1], [0.2, 0.9, 0.5, 0.5])
    0.875
    """
    y, s = _binary_inputs(labels, scores)
    _require_both_classes(y, "image AUROC")
    return float(roc_auc_score(y, s))


def _cap_points(curve: dict[str, np.ndarray], max_points: int) -> dict[str, list[float]]:
    """Evenly subsample (keeping both ends) to at most ``max_points``; plain float lists out."""
    if max_points < 2:
        raise MetricError(f"max_points must be >= 2; got {max_points}")
    n = len(next(iter(curve.values())))
    if n > max_points:
        keep = np.unique(np.round(np.linspace(0, n - 1, max_points)).astype(np.int64))
        curve = {k: v[keep] for k, v in curve.items()}
    return {k: [float(x) for x in v] for k, v in curve.items()}


def _above_all(s: np.ndarray) -> float:
    """A finite stand-in for sklearn's ``inf`` threshold: just above the highest score (JSON-safe)."""
    return float(np.nextafter(s.max(), np.inf))


def roc_points(
    labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray, *, max_points: int = MAX_CURVE_POINTS
) -> dict[str, list[float]]:
    """ROC curve as ``{"fpr", "tpr", "threshold"}`` lists, from (0, 0) to (1, 1).

    Collinear points are dropped (sklearn ``drop_intermediate``); the first threshold, which
    sklearn sets to ``inf``, is replaced by the next float above the highest score.

    >>> roc_points([0, 1], [0.2, 0.9])["tpr"]
    [0.0, 1.0, 1.0]
    """
    y, s = _binary_inputs(labels, scores)
    _require_both_classes(y, "a ROC curve")
    fpr, tpr, thr = roc_curve(y, s, drop_intermediate=True)
    thr = np.where(np.isfinite(thr), thr, _above_all(s))
    return _cap_points({"fpr": fpr, "tpr": tpr, "threshold": thr}, max_points)


def pr_points(
    labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray, *, max_points: int = MAX_CURVE_POINTS
) -> dict[str, list[float]]:
    """Precision-recall curve as ``{"precision", "recall", "threshold"}`` lists (recall decreasing).

    sklearn's final point (precision 1, recall 0) has no threshold; it gets the next float
    above the highest score, i.e. "predict nothing anomalous".

    >>> pr_points([0, 1], [0.2, 0.9])
    {'precision': [0.5, 1.0, 1.0], 'recall': [1.0, 1.0, 0.0], 'threshold': [0.2, 0.9, 0.9000000000000001]}
    """
    y, s = _binary_inputs(labels, scores)
    _require_both_classes(y, "a precision-recall curve")
    precision, recall, thr = precision_recall_curve(y, s)
    thr = np.append(thr, _above_all(s))
    return _cap_points({"precision": precision, "recall": recall, "threshold": thr}, max_points)


def classification_at_threshold(
    labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray, threshold: float
) -> dict[str, float | int]:
    """Confusion counts and accuracy / precision / recall / F1 when ``score >= threshold`` is anomalous.

    Undefined ratios are 0: precision when nothing is predicted anomalous, recall when there are
    no anomalous samples, F1 when precision + recall is 0 (sklearn's ``zero_division=0``).

    >>> r = classification_at_threshold([0, 0, 1, 1], [0.1, 0.6, 0.4, 0.9], 0.5)
    >>> r["tp"], r["fp"], r["tn"], r["fn"], r["precision"], r["accuracy"]
    (1, 1, 1, 1, 0.5, 0.5)
    """
    y, s = _binary_inputs(labels, scores)
    if not math.isfinite(threshold):
        raise MetricError(f"threshold must be finite; got {threshold!r}")
    predicted = s >= threshold
    tp = int(np.count_nonzero(predicted & y))
    fp = int(np.count_nonzero(predicted & ~y))
    fn = int(np.count_nonzero(~predicted & y))
    tn = len(y) - tp - fp - fn
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": (tp + tn) / len(y),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
    }


def _tie_group_ends(sorted_desc: np.ndarray) -> np.ndarray:
    """Indices of the last element of each run of equal values: one threshold step per distinct score."""
    return np.flatnonzero(np.append(sorted_desc[1:] != sorted_desc[:-1], True))


def f1_max(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> dict[str, float]:
    """Best F1 over all thresholds and the (highest) threshold reaching it: an oracle, as it peeks at labels.

    With the k highest-scoring samples predicted anomalous, F1 = 2·TP / (k + P), so one sort and
    one cumulative sum give F1 at every distinct score.

    >>> f1_max([0, 1, 0, 1], [0.1, 0.8, 0.7, 0.3])
    {'f1_max': 0.8, 'threshold': 0.3}
    """
    y, s = _binary_inputs(labels, scores)
    positives = int(y.sum())
    if positives == 0:
        raise MetricError("F1 needs at least one anomalous sample")
    order = np.argsort(-s, kind="stable")
    ends = _tie_group_ends(s[order])
    tp = np.cumsum(y[order])[ends]
    f1 = 2.0 * tp / (ends + 1 + positives)
    best = int(np.argmax(f1))  # first maximum = highest threshold, the fewest false alarms
    return {"f1_max": float(f1[best]), "threshold": float(s[order][ends[best]])}


def per_defect_auroc(
    labels: Sequence[int] | np.ndarray, defect_types: Sequence[str], scores: Sequence[float] | np.ndarray
) -> dict[str, float]:
    """Image AUROC of each defect type's images against all good images, keyed by type (sorted).

    Types are taken from the anomalous samples (``labels == 1``), so the good images' type name
    does not matter.

    >>> per_defect_auroc([0, 0, 1, 1], ["good", "good", "crack", "hole"], [0.1, 0.5, 0.9, 0.3])
    {'crack': 1.0, 'hole': 0.5}
    """
    y, s = _binary_inputs(labels, scores)
    types = np.asarray(defect_types, dtype=object)
    if types.shape != y.shape:
        raise MetricError(f"defect_types has {len(types)} entries for {len(y)} labels")
    if y.all():
        raise MetricError("per-defect AUROC needs good images; there are none")
    good = s[~y]
    result: dict[str, float] = {}
    for name in sorted({str(t) for t in types[y]}):
        bad = s[y & (types == name)]
        result[name] = image_auroc(np.r_[np.zeros(len(good), int), np.ones(len(bad), int)], np.r_[good, bad])
    return result


# --------------------------------------------------------------------------- pixel level


def _map_dtype(amap: np.ndarray) -> type[np.floating]:
    """float64 for float64 maps (exact scores), float32 for everything else (half the memory).

    >>> _map_dtype(np.zeros(2)), _map_dtype(np.zeros(2, np.float16)), _map_dtype(np.zeros(2, np.uint8))
    (<class 'numpy.float64'>, <class 'numpy.float32'>, <class 'numpy.float32'>)
    """
    return np.float64 if amap.dtype == np.float64 else np.float32


def _pixel_pairs(masks: Sequence[np.ndarray], maps: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Validated (bool mask, float map) pairs; checks shapes, dtypes and finiteness.

    Maps become float32, except float64 maps, which stay float64 (see :func:`_map_dtype`).
    """
    if len(masks) != len(maps):
        raise MetricError(f"{len(masks)} masks but {len(maps)} anomaly maps")
    if len(masks) == 0:
        raise MetricError("no masks and anomaly maps given")
    pairs = []
    for i, (mask, amap) in enumerate(zip(masks, maps, strict=False)):
        mask, amap = np.asarray(mask), np.asarray(amap)
        if mask.ndim != 2 or mask.shape != amap.shape:
            raise MetricError(f"image {i}: mask {mask.shape} and map {amap.shape} must be 2-D of the same shape")
        if mask.dtype != bool:
            # Integer masks (0/1, 0/255) are fine; fractional ones would need a threshold first.
            if not np.issubdtype(mask.dtype, np.integer):
                raise MetricError(f"image {i}: mask must be boolean or integer, got {mask.dtype}")
            mask = mask != 0
        amap = np.asarray(amap, dtype=_map_dtype(amap))  # no copy when already float32/float64
        if not np.isfinite(amap).all():
            raise MetricError(f"image {i}: anomaly map has NaN or infinite values")
        pairs.append((mask, amap))
    return pairs


def _normal_scores(pairs: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """One array of every defect-free pixel's score, filled without per-image copies piling up.

    float32 when every map is float32; float64 as soon as one map is float64 (a float32 buffer
    would round its scores and merge distinct ones into ties).
    """
    total = sum(m.size - int(np.count_nonzero(m)) for m, _ in pairs)
    if total == 0:
        raise MetricError("every pixel is inside a defect mask; FPR needs defect-free pixels")
    out = np.empty(total, dtype=np.result_type(*(amap.dtype for _, amap in pairs)))
    pos = 0
    for mask, amap in pairs:
        part = amap[~mask]
        out[pos : pos + len(part)] = part
        pos += len(part)
    return out


def _defect_scores(
    pairs: list[tuple[np.ndarray, np.ndarray]], *, region_weights: bool
) -> tuple[np.ndarray, np.ndarray | None]:
    """Scores (the maps' dtype) of all defect pixels and, optionally, each pixel's PRO weight (float64).

    A pixel of an 8-connected region of size n gets weight ``1 / (n * R)`` with R regions over
    all images, so summing the weights of the pixels at or above a threshold gives PRO.
    """
    scores, weights, regions = [], [], 0
    for mask, amap in pairs:
        if not mask.any():
            continue
        scores.append(amap[mask])
        if region_weights:
            labelled, n = ndimage.label(mask, structure=_EIGHT_CONNECTED)
            sizes = np.bincount(labelled.ravel())
            weights.append(1.0 / sizes[labelled[mask]])  # float64; labels >= 1 inside the mask
            regions += n
    if not scores:
        raise MetricError("no defect pixels in any mask; the metric needs anomalous regions")
    if not region_weights:
        return np.concatenate(scores), None
    return np.concatenate(scores), np.concatenate(weights) / regions


def _midrank_sum(sorted_asc: np.ndarray, keys: np.ndarray, weights: np.ndarray | None = None) -> float:
    """Σ_i w_i · (#{sorted < key_i} + ½ #{sorted == key_i}) in float64 (w_i = 1 without weights).

    This counts how many reference values each key beats, ties counting one half: the
    Mann-Whitney statistic behind AUROC and, with PRO weights, the area under the PRO curve.
    Keys go in chunks so the temporary index arrays stay small whatever the number of pixels.
    """
    n = len(sorted_asc)
    if n == 0:
        return 0.0
    total = 0.0
    for start in range(0, len(keys), _SEARCH_CHUNK):
        k = keys[start : start + _SEARCH_CHUNK]
        left = np.searchsorted(sorted_asc, k, side="left")
        mid = left.astype(np.float64)
        # Ties are rare with continuous maps: search the right side only where one exists.
        tied = np.flatnonzero(sorted_asc[np.minimum(left, n - 1)] == k)
        if len(tied):
            mid[tied] += 0.5 * (np.searchsorted(sorted_asc, k[tied], side="right") - left[tied])
        total += float(mid.sum()) if weights is None else float(np.dot(mid, weights[start : start + _SEARCH_CHUNK]))
    return total


def pixel_auroc(masks: Sequence[np.ndarray], maps: Sequence[np.ndarray]) -> float:
    """ROC AUC over all pixels of all images (defect pixels positive), exact with ties.

    Computed as the Mann-Whitney statistic: the defect-free scores are sorted once (one copy,
    in the maps' precision) and every defect pixel is located in them, so no float64 copy of
    float32 maps and no index array over all pixels is ever built.

    >>> import numpy as np
    >>> mask = np.array([[True, False], [False, False]])
    >>> pixel_auroc([mask], [np.array([[0.5, 0.1], [0.5, 0.9]], np.float32)])
    0.5
    """
    pairs = _pixel_pairs(masks, maps)
    normal = _normal_scores(pairs)
    defect, _ = _defect_scores(pairs, region_weights=False)
    normal.sort()
    return _midrank_sum(normal, defect) / (float(len(normal)) * len(defect))


def _pro_inputs(
    masks: Sequence[np.ndarray], maps: Sequence[np.ndarray], fpr_limit: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """What :func:`au_pro` and :func:`pro_points` integrate: ``(defect, weights, normal, kth)``.

    Defect scores with their region weights, and the defect-free scores partitioned so that
    ``normal[kth]`` is the score of the step that crosses ``fpr_limit``: the c-th highest
    (0-based c) with c / N < fpr_limit <= (c + 1) / N (epsilon guards float noise in L * N).
    """
    if not (0.0 < fpr_limit <= 1.0):
        raise MetricError(f"fpr_limit must be in (0, 1]; got {fpr_limit!r}")
    pairs = _pixel_pairs(masks, maps)
    defect, weights = _defect_scores(pairs, region_weights=True)
    assert weights is not None
    normal = _normal_scores(pairs)
    c = max(0, math.ceil(fpr_limit * len(normal) - 1e-9) - 1)
    kth = len(normal) - 1 - c
    normal.partition(kth)  # in place; the selection is O(N), unlike a full sort
    return defect, weights, normal, kth


def au_pro(masks: Sequence[np.ndarray], maps: Sequence[np.ndarray], *, fpr_limit: float = 0.3) -> float:
    """Normalised area under the PRO curve up to ``fpr_limit``: MVTec AD's AU-PRO, exactly.

    Definition (MVTec's evaluation code): regions are the 8-connected components of every mask;
    at threshold t, PRO(t) is the mean over all regions (each weighted equally) of the fraction
    of its pixels scoring >= t, and FPR(t) the fraction of all defect-free pixels scoring >= t.
    The curve has one vertex per distinct score, runs from (0, 0) to (1, 1) (a run of tied
    scores is one straight step), is integrated with the trapezoid rule up to ``fpr_limit``
    (interpolated there) and divided by ``fpr_limit``. A perfect map gives 1.0.

    How, without building the curve: each defect pixel i (weight w_i, see
    :func:`_defect_scores`) adds w_i to PRO from the FPR at which its score is reached, ramping
    linearly across a tied step. So the area over the fully covered steps is
    Σ w_i · (number of defect-free pixels scoring above s_i within those steps, ties ½) / N:
    one partial selection finds the step containing ``fpr_limit``, only the defect-free scores
    above it are sorted, and the last, partly covered step is interpolated explicitly. This is
    the same number as sorting every pixel and integrating the curve (see :func:`pro_curve`;
    the tests check both against a threshold-by-threshold reference) at a fraction of the time
    and memory.

    >>> import numpy as np
    >>> mask = np.zeros((3, 3), bool); mask[0, 0] = True
    >>> amap = np.full((3, 3), 0.5, np.float32); amap[0, 0] = 0.2   # defect below every normal pixel
    >>> au_pro([mask], [amap], fpr_limit=1.0)
    0.0
    """
    defect, weights, normal, kth = _pro_inputs(masks, maps, fpr_limit)
    n_normal = len(normal)
    v_cross = normal[kth]
    above = normal[kth:]
    above = above[above > v_cross]  # defect-free scores of the fully covered steps (a copy)
    above.sort()
    n_tied = int(np.count_nonzero(normal == v_cross))
    del normal

    higher = defect > v_cross
    area = _midrank_sum(above, defect[higher], weights[higher]) / n_normal
    # The crossing step runs from (f0, p0) to (f1, p1); integrate it up to fpr_limit only.
    f0 = len(above) / n_normal
    f1 = (len(above) + n_tied) / n_normal
    p0 = float(weights[higher].sum())
    p1 = p0 + float(weights[defect == v_cross].sum())
    p_limit = p0 + (p1 - p0) * (fpr_limit - f0) / (f1 - f0)
    area += 0.5 * (p0 + p_limit) * (fpr_limit - f0)
    return float(min(max(area / fpr_limit, 0.0), 1.0))


def pro_curve(
    masks: Sequence[np.ndarray], maps: Sequence[np.ndarray], *, max_points: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The full PRO curve ``(fpr, pro)`` (float64, FPR ascending) with one vertex per distinct score.

    Built the direct way: sort every pixel by score (descending), accumulate each defect
    pixel's region weight and each defect-free pixel's 1/N, and keep the last index of every
    run of tied scores; (0, 0) and (1, 1) close the curve. Meant for plots and checks: it holds
    an index array over all pixels, so for whole test sets use :func:`au_pro` for the number and
    ``max_points`` (even subsample, ends kept) for a plot.

    >>> import numpy as np
    >>> mask = np.array([[True, False]])
    >>> fpr, pro = pro_curve([mask], [np.array([[0.9, 0.1]], np.float32)])
    >>> fpr.tolist(), pro.tolist()
    ([0.0, 0.0, 1.0, 1.0], [0.0, 1.0, 1.0, 1.0])
    """
    pairs = _pixel_pairs(masks, maps)
    _, region_weights = _defect_scores(pairs, region_weights=True)  # raises if there are no regions
    scores = np.concatenate([amap.ravel() for _, amap in pairs])
    is_defect = np.concatenate([mask.ravel() for mask, _ in pairs])
    weights = np.zeros(len(scores), dtype=np.float64)
    weights[is_defect] = region_weights  # both in the same (image, row-major) pixel order
    n_normal = len(scores) - int(np.count_nonzero(is_defect))
    if n_normal == 0:
        raise MetricError("every pixel is inside a defect mask; FPR needs defect-free pixels")
    order = np.argsort(-scores, kind="stable")
    ends = _tie_group_ends(scores[order])
    fpr = np.cumsum(~is_defect[order], dtype=np.int64)[ends] / n_normal
    pro = np.clip(np.cumsum(weights[order])[ends], 0.0, 1.0)
    fpr, pro = np.r_[0.0, fpr, 1.0], np.r_[0.0, pro, 1.0]
    if max_points is not None:
        capped = _cap_points({"fpr": fpr, "pro": pro}, max_points)
        fpr, pro = np.asarray(capped["fpr"]), np.asarray(capped["pro"])
    return fpr, pro


def pro_points(
    masks: Sequence[np.ndarray],
    maps: Sequence[np.ndarray],
    *,
    fpr_limit: float = 0.3,
    max_points: int = MAX_CURVE_POINTS,
) -> dict[str, list[float]]:
    """The PRO curve from (0, 0) up to ``fpr_limit`` as ``{"fpr", "pro"}`` lists, for a plot.

    Memory-light like :func:`au_pro` (no index array over all pixels, unlike :func:`pro_curve`):
    only the defect-free scores above the one crossing ``fpr_limit`` are sorted, and each
    vertex is two binary searches. Every distinct defect-free score t gives the two ends of its
    step, (FPR(> t), PRO(> t)) and (FPR(>= t), PRO(>= t)); runs of defect-only scores in between
    are vertical, so with no subsampling these vertices are exactly the curve and its trapezoid
    area up to ``fpr_limit``, divided by ``fpr_limit``, is :func:`au_pro`. The last point is
    interpolated at ``fpr_limit``. Above ``max_points`` the steps are subsampled evenly (ends kept).

    >>> import numpy as np
    >>> mask = np.array([[True, False, False]])
    >>> pro_points([mask], [np.array([[0.9, 0.5, 0.1]], np.float32)], fpr_limit=0.5)
    {'fpr': [0.0, 0.0, 0.5], 'pro': [0.0, 1.0, 1.0]}
    """
    if max_points < 4:
        raise MetricError(f"max_points must be >= 4; got {max_points}")
    defect, weights, normal, kth = _pro_inputs(masks, maps, fpr_limit)
    n_normal = len(normal)
    top = normal[normal >= normal[kth]]  # ties of the crossing score may sit below kth too
    top.sort()  # ascending; its smallest value is the crossing score
    del normal
    order = np.argsort(defect, kind="stable")
    defect = defect[order]
    # weight_above[i] = total PRO weight of defect pixels from sorted index i upwards.
    weight_above = np.r_[np.cumsum(weights[order][::-1])[::-1], 0.0]

    distinct = top[np.r_[top[1:] != top[:-1], True]][::-1]  # descending, the crossing score last
    steps = max_points // 2 - 1
    if len(distinct) > steps:
        distinct = distinct[np.unique(np.round(np.linspace(0, len(distinct) - 1, steps)).astype(np.int64))]
    above = len(top) - np.searchsorted(top, distinct, side="right")  # defect-free pixels > t
    at_or_above = len(top) - np.searchsorted(top, distinct, side="left")  # ... >= t
    pro_above = weight_above[np.searchsorted(defect, distinct, side="right")]
    pro_at_or_above = weight_above[np.searchsorted(defect, distinct, side="left")]
    fpr = np.stack([above, at_or_above], axis=1).ravel() / n_normal
    pro = np.stack([pro_above, pro_at_or_above], axis=1).ravel()
    # The crossing step runs from its last two vertices; stop it at fpr_limit.
    (f0, f1), (p0, p1) = fpr[-2:], pro[-2:]
    p_limit = p0 + (p1 - p0) * (fpr_limit - f0) / (f1 - f0) if f1 > f0 else p1
    fpr = np.r_[0.0, fpr[:-1], fpr_limit]
    pro = np.clip(np.r_[0.0, pro[:-1], p_limit], 0.0, 1.0)
    return {"fpr": [float(x) for x in fpr], "pro": [float(x) for x in pro]}


# --------------------------------------------------------------------------- MVTec LOCO AD


def au_spro(
    maps: Sequence[np.ndarray],
    regions: Sequence[Sequence[tuple[np.ndarray, float]]],
    good: Sequence[bool],
    *,
    fpr_limit: float = 0.05,
) -> float:
    """Normalised area under the sPRO curve up to ``fpr_limit``: MVTec LOCO AD's localisation metric.

    ``regions[i]`` lists image ``i``'s defect regions as (bool mask, saturation area in pixels);
    ``good[i]`` marks the defect-free images. For a threshold t, a region's saturated overlap is
    ``min(#{its pixels with score >= t} / saturation, 1)`` and sPRO is the mean over all
    regions of all images (each region weighted equally); the false positive rate is the share
    of the *defect-free images'* pixels at or above t (LOCO's protocol: the ground truth of a
    logical anomaly need not cover everything a method may fairly flag, so defective images
    give no false positives). As in :func:`au_pro`, the curve's vertices are the distinct
    scores, integrated with the trapezoid rule up to ``fpr_limit`` (the last segment
    interpolated) and divided by ``fpr_limit``.

    >>> import numpy as np
    >>> good_map = np.array([[0.9, 0.5, 0.2, 0.1]])
    >>> defect_map = np.array([[0.8, 0.8, 0.05, 0.05, 0.6, 0.3, 0.3, 0.3]])
    >>> a = np.zeros((1, 8), bool); a[0, :4] = True
    >>> b = np.zeros((1, 8), bool); b[0, 4:] = True
    >>> au_spro([good_map, defect_map], [[], [(a, 2.0), (b, 4.0)]], [True, False], fpr_limit=0.5)
    0.3125
    """
    if not (0.0 < fpr_limit <= 1.0):
        raise MetricError(f"fpr_limit must be in (0, 1]; got {fpr_limit!r}")
    if not (len(maps) == len(regions) == len(good)):
        raise MetricError(f"{len(maps)} maps, {len(regions)} region lists and {len(good)} good flags must be as many")
    normal_maps = [np.asarray(amap) for amap, is_good in zip(maps, good, strict=False) if is_good]
    if not normal_maps:
        raise MetricError("sPRO's false positive rate needs defect-free test images; there are none")
    normal = np.sort(np.concatenate([amap.ravel() for amap in normal_maps]).astype(np.float64))[::-1]  # descending
    region_scores: list[np.ndarray] = []
    saturations: list[float] = []
    for i, (amap, image_regions) in enumerate(zip(maps, regions, strict=False)):
        amap = np.asarray(amap, dtype=np.float64)
        for mask, saturation in image_regions:
            if mask.shape != amap.shape:
                raise MetricError(f"image {i}: region mask {mask.shape} and map {amap.shape} must be the same shape")
            if not saturation > 0:
                raise MetricError(f"image {i}: a region's saturation area must be > 0, got {saturation}")
            region_scores.append(np.sort(amap[mask]))  # ascending, for searchsorted
            saturations.append(float(saturation))
    if not region_scores:
        raise MetricError("no defect regions: sPRO is undefined")
    if not (np.isfinite(normal).all() and all(np.isfinite(s).all() for s in region_scores)):
        raise MetricError("anomaly maps have NaN or infinite values")

    # The step crossing fpr_limit: thresholds above it are the distinct normal scores down to there.
    n = len(normal)
    crossing = normal[min(n - 1, max(0, math.ceil(fpr_limit * n - 1e-9) - 1))]
    distinct = np.unique(normal[normal >= crossing])[::-1]  # descending
    asc = normal[::-1]
    above = n - np.searchsorted(asc, distinct, side="right")  # normal pixels > t
    at_or_above = n - np.searchsorted(asc, distinct, side="left")  # ... >= t

    def spro(side: Literal["left", "right"]) -> np.ndarray:
        total = np.zeros(len(distinct))
        for scores, saturation in zip(region_scores, saturations, strict=False):
            count = len(scores) - np.searchsorted(scores, distinct, side=side)
            total += np.minimum(count / saturation, 1.0)
        return total / len(region_scores)

    f0, f1 = above / n, at_or_above / n
    s0, s1 = spro("right"), spro("left")
    # Each normal-score step runs from (f0, s0) to (f1, s1); steps of region-only scores between
    # them are vertical and add no area. The last step is cut at fpr_limit.
    last = len(distinct) - 1
    if f1[last] > fpr_limit and f1[last] > f0[last]:
        fraction = (fpr_limit - f0[last]) / (f1[last] - f0[last])
        s1 = s1.copy()
        s1[last] = s0[last] + fraction * (s1[last] - s0[last])
        f1 = f1.copy()
        f1[last] = fpr_limit
    area = float(np.sum((f1 - f0) * (s0 + s1) / 2.0))
    return area / fpr_limit
