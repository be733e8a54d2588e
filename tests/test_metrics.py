"""Evaluation metrics against hand-computed cases and slow, obviously-correct references."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from anomaly_spotter.errors import UserError
from anomaly_spotter.evaluation import metrics as m

# --------------------------------------------------------------------------- references


def reference_pro_curve(masks, maps):
    """MVTec's PRO curve, one threshold at a time (slow, tiny inputs only)."""
    regions, normal = [], []
    for mask, amap in zip(masks, maps, strict=False):
        labelled, n = ndimage.label(mask, structure=np.ones((3, 3)))
        regions += [amap[labelled == k] for k in range(1, n + 1)]
        normal.append(amap[~mask])
    normal = np.concatenate(normal)
    thresholds = np.unique(np.concatenate([a.ravel() for a in maps]))[::-1]
    fpr = [np.mean(normal >= t) for t in thresholds]
    pro = [np.mean([np.mean(r >= t) for r in regions]) for t in thresholds]
    return np.r_[0.0, fpr, 1.0], np.r_[0.0, pro, 1.0]


def reference_trapezoid(x, y, x_max):
    """MVTec's ``trapezoid`` (generic_util.py): interpolate at x_max, integrate up to it."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    correction = 0.0
    if x_max not in x:
        ins = np.searchsorted(x, x_max, side="right")  # bisect.bisect
        y_interp = y[ins - 1] + (y[ins] - y[ins - 1]) * (x_max - x[ins - 1]) / (x[ins] - x[ins - 1])
        correction = 0.5 * (y_interp + y[ins - 1]) * (x_max - x[ins - 1])
    keep = x <= x_max
    x, y = x[keep], y[keep]
    return float(np.sum(0.5 * (y[1:] + y[:-1]) * (x[1:] - x[:-1])) + correction)


def reference_au_pro(masks, maps, fpr_limit):
    return reference_trapezoid(*reference_pro_curve(masks, maps), fpr_limit) / fpr_limit


def random_case(seed: int, levels: int | None):
    """A few images of different sizes, blob masks, maps with many ties when ``levels`` is small."""
    rng = np.random.default_rng(seed)
    masks, maps = [], []
    for h, w in [(9, 11), (12, 7), (10, 10), (6, 13)]:
        mask = ndimage.binary_dilation(rng.random((h, w)) < 0.06, iterations=int(rng.integers(0, 2)))
        base = rng.random((h, w)) + 0.6 * mask
        amap = np.round(base * levels) / levels if levels else base
        masks.append(mask)
        maps.append(amap.astype(np.float32))
    masks[2][:] = False  # a good image
    masks[0][0, 0] = True  # make sure there is at least one region
    return masks, maps


# --------------------------------------------------------------------------- image level


def test_image_auroc_hand_case_and_ties() -> None:
    # pairs (good, bad): (0.1,0.35)+ (0.1,0.8)+ (0.4,0.35)- (0.4,0.8)+ -> 3/4
    assert m.image_auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.75
    # a tie counts one half: (0.5 vs 0.5) -> 0.5, (0.2 vs 0.5) -> 1 => 0.75
    assert m.image_auroc([0, 0, 1], [0.2, 0.5, 0.5]) == 0.75


def test_image_auroc_errors() -> None:
    with pytest.raises(m.MetricError, match="all 3 are good"):
        m.image_auroc([0, 0, 0], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="NaN"):
        m.image_auroc([0, 1], [0.1, float("nan")])
    with pytest.raises(ValueError, match="equal length"):
        m.image_auroc([0, 1, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="0 \\(good\\) or 1"):
        m.image_auroc([0, 2], [0.1, 0.2])
    assert issubclass(m.MetricError, UserError) and issubclass(m.MetricError, ValueError)


def test_roc_points_are_finite_and_span_the_square() -> None:
    roc = m.roc_points([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    assert set(roc) == {"fpr", "tpr", "threshold"}
    assert roc["fpr"][0] == 0 and roc["tpr"][0] == 0 and roc["fpr"][-1] == 1 and roc["tpr"][-1] == 1
    assert all(np.isfinite(roc["threshold"])) and roc["threshold"][0] > 0.8
    assert len({len(v) for v in roc.values()}) == 1


def test_pr_points_hand_case() -> None:
    pr = m.pr_points([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    # thresholds 0.1: P=2/4 R=1; 0.35: 2/3, 1; 0.4: 1/2, 1/2; 0.8: 1, 1/2; then (1, 0)
    assert pr["precision"] == pytest.approx([0.5, 2 / 3, 0.5, 1.0, 1.0])
    assert pr["recall"] == pytest.approx([1.0, 1.0, 0.5, 0.5, 0.0])
    assert pr["threshold"][:4] == pytest.approx([0.1, 0.35, 0.4, 0.8]) and pr["threshold"][4] > 0.8


def test_curves_are_capped_deterministically() -> None:
    rng = np.random.default_rng(0)
    labels, scores = rng.integers(0, 2, 5000), rng.random(5000)
    a = m.roc_points(labels, scores, max_points=50)
    b = m.pr_points(labels, scores, max_points=50)
    assert all(len(v) <= 50 for v in (*a.values(), *b.values()))
    assert a == m.roc_points(labels, scores, max_points=50)
    assert a["fpr"][0] == 0 and a["fpr"][-1] == 1  # both ends kept


def test_classification_at_threshold_hand_case() -> None:
    # score >= 0.4 is anomalous: predictions 0,1,1,1 for labels 0,0,1,1 -> tp 2, fp 1, tn 1, fn 0
    r = m.classification_at_threshold([0, 0, 1, 1], [0.1, 0.6, 0.4, 0.9], 0.4)
    assert (r["tp"], r["fp"], r["tn"], r["fn"]) == (2, 1, 1, 0)
    assert r["accuracy"] == 0.75 and r["precision"] == pytest.approx(2 / 3) and r["recall"] == 1.0
    assert r["f1"] == pytest.approx(0.8)  # 2 * (2/3) * 1 / (5/3)


def test_classification_with_nothing_predicted_has_zero_precision() -> None:
    r = m.classification_at_threshold([0, 1], [0.1, 0.2], 5.0)
    assert (r["tp"], r["fp"], r["tn"], r["fn"]) == (0, 0, 1, 1)
    assert r["precision"] == 0.0 and r["recall"] == 0.0 and r["f1"] == 0.0 and r["accuracy"] == 0.5


def test_f1_max_hand_case_and_ties() -> None:
    # k highest predicted: 0.8 -> F1 2/3; 0.7 -> 1/2; 0.3 -> 2*2/(3+2) = 0.8; 0.1 -> 2/3
    assert m.f1_max([0, 1, 0, 1], [0.1, 0.8, 0.7, 0.3]) == {"f1_max": pytest.approx(0.8), "threshold": 0.3}
    # a tie is one threshold: {0.5, 0.5} both in or both out -> best is threshold 0.9 (F1 2/3)
    # at 0.5: tp 1 + (bad 0.5) = 2, k = 3 -> 4/5 = 0.8 beats it
    r = m.f1_max([1, 1, 0, 0], [0.9, 0.5, 0.5, 0.1])
    assert r == {"f1_max": pytest.approx(0.8), "threshold": 0.5}


def test_f1_max_matches_brute_force() -> None:
    rng = np.random.default_rng(3)
    labels, scores = rng.integers(0, 2, 60), np.round(rng.random(60), 1)
    brute = max(m.classification_at_threshold(labels, scores, t)["f1"] for t in np.unique(scores))
    assert m.f1_max(labels, scores)["f1_max"] == pytest.approx(brute)
    best = m.f1_max(labels, scores)
    assert m.classification_at_threshold(labels, scores, best["threshold"])["f1"] == pytest.approx(best["f1_max"])


def test_per_defect_auroc_hand_case() -> None:
    labels = [0, 0, 0, 1, 1, 1]
    types = ["good", "good", "good", "crack", "crack", "hole"]
    scores = [0.1, 0.2, 0.6, 0.7, 0.15, 0.6]
    # crack {0.7, 0.15} vs good {0.1, 0.2, 0.6}: 0.7 beats 3, 0.15 beats 1 -> 4/6
    # hole {0.6}: beats 0.1, 0.2, ties 0.6 -> 2.5/3
    assert m.per_defect_auroc(labels, types, scores) == {"crack": pytest.approx(4 / 6), "hole": pytest.approx(2.5 / 3)}
    with pytest.raises(m.MetricError, match="needs good images"):
        m.per_defect_auroc([1, 1], ["a", "b"], [0.1, 0.2])
    with pytest.raises(m.MetricError, match="defect_types"):
        m.per_defect_auroc([0, 1], ["a"], [0.1, 0.2])


# --------------------------------------------------------------------------- pixel level


def test_pixel_auroc_hand_case_over_images_of_different_sizes() -> None:
    mask_a = np.array([[True, False, False]])
    map_a = np.array([[0.9, 0.2, 0.5]], np.float32)
    mask_b = np.array([[False], [True]])
    map_b = np.array([[0.5], [0.5]], np.float32)
    # defects {0.9, 0.5} vs normals {0.2, 0.5, 0.5}: 0.9 beats 3; 0.5 beats 1 and ties 2 -> 2
    assert m.pixel_auroc([mask_a, mask_b], [map_a, map_b]) == pytest.approx(5 / 6)


def test_pixel_auroc_matches_sklearn_with_ties() -> None:
    masks, maps = random_case(seed=1, levels=5)
    expected = roc_auc_score(np.concatenate([x.ravel() for x in masks]), np.concatenate([x.ravel() for x in maps]))
    assert m.pixel_auroc(masks, maps) == pytest.approx(expected, abs=1e-12)


def test_pixel_inputs_are_validated() -> None:
    mask = np.zeros((2, 2), bool)
    mask[0, 0] = True
    good_map = np.zeros((2, 2), np.float32)
    with pytest.raises(m.MetricError, match="same shape"):
        m.pixel_auroc([mask], [np.zeros((2, 3), np.float32)])
    with pytest.raises(m.MetricError, match="1 masks but 2"):
        m.au_pro([mask], [good_map, good_map])
    with pytest.raises(m.MetricError, match="NaN"):
        m.au_pro([mask], [np.full((2, 2), np.nan, np.float32)])
    with pytest.raises(m.MetricError, match="boolean or integer"):
        m.pixel_auroc([mask.astype(float)], [good_map])
    with pytest.raises(m.MetricError, match="no defect pixels"):
        m.au_pro([np.zeros((2, 2), bool)], [good_map])
    with pytest.raises(m.MetricError, match="defect-free"):
        m.pixel_auroc([np.ones((2, 2), bool)], [good_map])
    with pytest.raises(m.MetricError, match="fpr_limit"):
        m.au_pro([mask], [good_map], fpr_limit=0.0)
    # 0/255 masks as read from MVTec PNGs are accepted
    assert m.pixel_auroc([mask.astype(np.uint8) * 255], [mask.astype(np.float32)]) == 1.0


def test_au_pro_hand_case_two_regions_of_different_sizes() -> None:
    # 6x6 image: region A = 1 pixel at (0, 0), region B = 2x2 block at rows 3-4, cols 3-4;
    # 31 defect-free pixels, one of them at 0.5 and the other 30 at 0.0.
    mask = np.zeros((6, 6), bool)
    mask[0, 0] = True
    mask[3:5, 3:5] = True
    amap = np.zeros((6, 6), np.float32)
    amap[0, 0] = 0.9
    amap[3:5, 3:5] = [[0.8, 0.8], [0.3, 0.1]]
    amap[5, 0] = 0.5
    # Thresholds (descending) -> (FPR, PRO), PRO = mean of A's and B's fractions:
    #   0.9 -> (0, (1 + 0)/2 = 0.5);   0.8 -> (0, (1 + 2/4)/2 = 0.75);  0.5 -> (1/31, 0.75)
    #   0.3 -> (1/31, 0.875);          0.1 -> (1/31, 1);                 0.0 -> (1, 1)
    # Area up to FPR 1: 0.75 * 1/31 + 1 * 30/31 = 30.75/31.
    assert m.au_pro([mask], [amap], fpr_limit=1.0) == pytest.approx(30.75 / 31)
    # Up to 0.3: 0.75/31 + (0.3 - 1/31) * 1, divided by 0.3 = 1 - 0.25 / (31 * 0.3).
    assert m.au_pro([mask], [amap], fpr_limit=0.3) == pytest.approx(1 - 0.25 / 9.3)
    # Regions are weighted equally, not by size: the 1-pixel region is half of PRO.
    fpr, pro = m.pro_curve([mask], [amap])
    assert fpr.tolist() == pytest.approx([0, 0, 0, 1 / 31, 1 / 31, 1 / 31, 1, 1])
    assert pro.tolist() == pytest.approx([0, 0.5, 0.75, 0.75, 0.875, 1, 1, 1])


def test_au_pro_uses_eight_connectivity() -> None:
    # The mask is (0,0) plus (1,1),(1,2): diagonal neighbours, so ONE region of 3 pixels.
    # Only (0,0) scores above the 6 normal pixels (0.5): PRO stays at 1/3 across all FPRs.
    # With 4-connectivity it would be two regions and PRO (1 + 0)/2 = 0.5.
    mask = np.zeros((3, 3), bool)
    mask[0, 0] = mask[1, 1] = mask[1, 2] = True
    amap = np.full((3, 3), 0.5, np.float32)
    amap[0, 0], amap[1, 1], amap[1, 2] = 1.0, 0.0, 0.0
    assert m.au_pro([mask], [amap], fpr_limit=1.0) == pytest.approx(1 / 3)
    assert m.au_pro([mask], [amap], fpr_limit=0.3) == pytest.approx(1 / 3)


def test_au_pro_ties_are_one_diagonal_step() -> None:
    # 1x4: the defect pixel ties with two of three normal pixels at 0.5. One threshold step goes
    # from (0, 0) straight to (2/3, 1); then (1, 1). Breaking the tie either way would give 1 or 1/3.
    mask = np.array([[True, False, False, False]])
    amap = np.array([[0.5, 0.5, 0.5, 0.0]], np.float32)
    assert m.au_pro([mask], [amap], fpr_limit=1.0) == pytest.approx(0.5 * 2 / 3 + 1 / 3)
    # At FPR 0.3 the step is interpolated: PRO = 0.3 / (2/3) = 0.45; area 0.5 * 0.3 * 0.45.
    assert m.au_pro([mask], [amap], fpr_limit=0.3) == pytest.approx(0.5 * 0.45)


def test_au_pro_perfect_and_worst_maps() -> None:
    masks, _ = random_case(seed=2, levels=None)
    perfect = [mask.astype(np.float32) for mask in masks]
    assert m.au_pro(masks, perfect) == pytest.approx(1.0, abs=1e-12)  # float sum of region weights
    assert m.pixel_auroc(masks, perfect) == 1.0
    inverted = [1.0 - p for p in perfect]
    assert m.au_pro(masks, inverted) == 0.0
    constant = [np.zeros_like(p) for p in perfect]  # one threshold: straight line (0,0)-(1,1)
    assert m.au_pro(masks, constant, fpr_limit=0.3) == pytest.approx(0.15)


@pytest.mark.parametrize("seed, levels", [(0, None), (1, 4), (2, 10), (3, 3)])
@pytest.mark.parametrize("fpr_limit", [0.3, 0.05, 1.0, 0.5])
def test_au_pro_matches_threshold_by_threshold_reference(seed: int, levels: int | None, fpr_limit: float) -> None:
    masks, maps = random_case(seed, levels)
    expected = reference_au_pro(masks, maps, fpr_limit)
    assert m.au_pro(masks, maps, fpr_limit=fpr_limit) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("seed, levels", [(4, None), (5, 3)])
def test_pro_curve_matches_reference(seed: int, levels: int | None) -> None:
    masks, maps = random_case(seed, levels)
    fpr, pro = m.pro_curve(masks, maps)
    ref_fpr, ref_pro = reference_pro_curve(masks, maps)
    np.testing.assert_allclose(fpr, ref_fpr, atol=1e-12)
    np.testing.assert_allclose(pro, ref_pro, atol=1e-12)
    capped_fpr, capped_pro = m.pro_curve(masks, maps, max_points=10)
    assert len(capped_fpr) == len(capped_pro) <= 10 and capped_fpr[0] == 0 and capped_fpr[-1] == 1


# --------------------------------------------------------------------------- precision of the maps


def tiny_spread(maps, spread: float = 1e-9):
    """``maps`` squeezed into [0.5, 0.5 + spread] in float64: distinct, yet equal once cast to float32."""
    return [0.5 + spread * amap.astype(np.float64) for amap in maps]


def test_float64_maps_keep_scores_that_float32_would_merge() -> None:
    # 1x4: the defect pixel (3e-10 above 0.5) beats two of the three normal pixels and loses to one.
    # float32 rounds all four to 0.5: one tie, AUROC 0.5 and AU-PRO(1.0) 0.5. float64 keeps them apart.
    mask = np.array([[True, False, False, False]])
    amap = 0.5 + np.array([[3e-10, 4e-10, 1e-10, 2e-10]])
    assert len(np.unique(amap.astype(np.float32))) == 1 and len(np.unique(amap)) == 4
    assert m.pixel_auroc([mask], [amap]) == pytest.approx(2 / 3, abs=1e-15)
    # PRO curve: (0, 0) -> (1/3, 0) at 4e-10, -> (1/3, 1) at 3e-10, -> (1, 1): area 2/3.
    assert m.au_pro([mask], [amap], fpr_limit=1.0) == pytest.approx(2 / 3, abs=1e-15)
    # Up to FPR 0.3 PRO is still 0: the normal pixel above the defect covers FPR 0..1/3.
    assert m.au_pro([mask], [amap], fpr_limit=0.3) == 0.0
    fpr, pro = m.pro_curve([mask], [amap])
    assert fpr.tolist() == pytest.approx([0, 1 / 3, 1 / 3, 2 / 3, 1, 1]) and pro.tolist() == [0, 0, 1, 1, 1, 1]
    # The float32 map stays float32, i.e. the one tie described above.
    assert m.pixel_auroc([mask], [amap.astype(np.float32)]) == 0.5
    assert m.au_pro([mask], [amap.astype(np.float32)], fpr_limit=1.0) == pytest.approx(0.5)


@pytest.mark.parametrize("seed", [0, 3])
def test_float64_maps_below_float32_resolution_match_float64_references(seed: int) -> None:
    masks, maps = random_case(seed, levels=None)
    squeezed = tiny_spread(maps)
    assert len(np.unique(np.concatenate([x.ravel() for x in squeezed]).astype(np.float32))) < 10  # float32 merges them
    labels = np.concatenate([x.ravel() for x in masks])
    expected_auroc = roc_auc_score(labels, np.concatenate([x.ravel() for x in squeezed]))
    assert m.pixel_auroc(masks, squeezed) == pytest.approx(expected_auroc, abs=1e-12)
    # Squeezing is a monotone map: the float64 answers are the ones of the well-spread float32 maps.
    assert m.pixel_auroc(masks, squeezed) == pytest.approx(m.pixel_auroc(masks, maps), abs=1e-12)
    for fpr_limit in (0.3, 1.0):
        expected = reference_au_pro(masks, squeezed, fpr_limit)
        assert m.au_pro(masks, squeezed, fpr_limit=fpr_limit) == pytest.approx(expected, abs=1e-12)
        assert m.au_pro(masks, squeezed, fpr_limit=fpr_limit) == pytest.approx(
            m.au_pro(masks, maps, fpr_limit=fpr_limit), abs=1e-9
        )


def test_float32_maps_get_no_float64_copy(monkeypatch) -> None:
    """Memory: the defect-free buffer of float32 maps is float32 (half of float64 on MVTec-sized sets)."""
    masks, maps = random_case(seed=1, levels=None)
    seen = []
    original = m._normal_scores
    monkeypatch.setattr(m, "_normal_scores", lambda pairs: seen.append(original(pairs).dtype) or original(pairs))
    m.pixel_auroc(masks, maps)
    m.au_pro(masks, maps)
    m.pixel_auroc(masks, [x.astype(np.float16) for x in maps])
    assert seen == [np.float32] * 3
    m.pixel_auroc(masks, [x.astype(np.float64) for x in maps])
    assert seen[-1] == np.float64


@pytest.mark.parametrize("quantised", [False, True])
@pytest.mark.parametrize("fpr_limit", [0.05, 0.3, 1.0])
def test_pro_points_integrate_to_au_pro_and_stay_capped(quantised: bool, fpr_limit: float) -> None:
    # Uncapped, the points are the PRO curve's vertices up to fpr_limit (ties and all), so their
    # trapezoid area is AU-PRO exactly; capped, the plot stays within max_points and monotone.
    rng = np.random.default_rng(7)
    masks, maps = [], []
    for _ in range(3):
        mask = np.zeros((20, 24), bool)
        mask[rng.integers(0, 8) : rng.integers(10, 20), rng.integers(0, 8) : rng.integers(12, 24)] = True
        amap = (rng.random(mask.shape) + mask * rng.random()).astype(np.float32)
        masks.append(mask)
        maps.append(np.round(amap * 8) / 8 if quantised else amap)
    full = m.pro_points(masks, maps, fpr_limit=fpr_limit, max_points=100_000)
    area = float(np.trapezoid(full["pro"], full["fpr"])) / fpr_limit
    assert area == pytest.approx(m.au_pro(masks, maps, fpr_limit=fpr_limit), abs=1e-9)
    assert full["fpr"][0] == 0.0 and full["pro"][0] == 0.0 and full["fpr"][-1] == pytest.approx(fpr_limit)
    capped = m.pro_points(masks, maps, fpr_limit=fpr_limit, max_points=20)
    assert len(capped["fpr"]) <= 20
    for curve in (full, capped):
        assert np.all(np.diff(curve["fpr"]) >= 0) and np.all(np.diff(curve["pro"]) >= -1e-12)
