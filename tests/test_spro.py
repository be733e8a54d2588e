"""MVTec LOCO AD's sPRO (saturated per-region overlap) against hand-computed cases, and its region reader."""

from __future__ import annotations

import json

import numpy as np
import pytest

from anomaly_spotter.dataset.processed import TestItem as Item
from anomaly_spotter.dataset.regions import read_regions
from anomaly_spotter.errors import DataError
from anomaly_spotter.evaluation.metrics import MetricError, au_pro, au_spro
from conftest_data import write_image

# One defect-free image (its 4 pixels make the FPR) and one defective image with two regions:
#   A = pixels 0-3, scores 0.8 0.8 0.05 0.05, saturation 2 px: two pixels found = fully detected
#   B = pixels 4-7, scores 0.6 0.3 0.3 0.3, saturation 4 px (its area): plain overlap
GOOD_MAP = np.array([[0.9, 0.5, 0.2, 0.1]])
DEFECT_MAP = np.array([[0.8, 0.8, 0.05, 0.05, 0.6, 0.3, 0.3, 0.3]])
A = np.zeros((1, 8), bool)
A[0, :4] = True
B = np.zeros((1, 8), bool)
B[0, 4:] = True


def spro(limit: float, saturation_a: float = 2.0) -> float:
    return au_spro([GOOD_MAP, DEFECT_MAP], [[], [(A, saturation_a), (B, 4.0)]], [True, False], fpr_limit=limit)


def test_two_regions_one_saturated_by_hand():
    # Thresholds from the top: 0.9 (normal): FPR 0 -> 1/4 at sPRO 0. 0.8: A has 2 of its 2
    # saturation pixels -> sPRO (1 + 0)/2 = 0.5 (vertical). 0.6: B 1/4 -> sPRO 0.625 (vertical).
    # 0.5 (normal): FPR 1/4 -> 1/2 at sPRO 0.625: area 0.15625. 0.3: B full -> sPRO 1.
    # 0.2 and 0.1 (normal): FPR 1/2 -> 1 at sPRO 1: area 0.5.
    assert spro(0.5) == pytest.approx(0.15625 / 0.5)  # 0.3125
    assert spro(1.0) == pytest.approx(0.15625 + 0.5)  # 0.65625
    assert spro(0.375) == pytest.approx(0.125 * 0.625 / 0.375)  # the last step cut at the limit
    assert spro(0.25) == 0.0  # only the step to FPR 1/4, at sPRO 0


def test_saturation_is_what_differs_from_plain_overlap():
    # Without saturation (A's area, 4 px) A is only half found at 0.8: sPRO 0.25 + 0.125 = 0.375 on 1/4..1/2.
    assert spro(0.5, saturation_a=4.0) == pytest.approx(0.25 * 0.375 / 0.5)
    # With every saturation at the region's area, sPRO is PRO on one region per mask, FPR on good images.
    masks, maps = [np.zeros((1, 4), bool), A | B], [GOOD_MAP, DEFECT_MAP]
    two_regions = au_spro(maps, [[], [(A, 4.0), (B, 4.0)]], [True, False], fpr_limit=1.0)
    assert 0.0 < two_regions < 1.0
    # au_pro takes FPR over all defect-free pixels (here none outside the regions but the good image's).
    assert au_pro(masks, maps, fpr_limit=1.0) == pytest.approx(
        au_spro(maps, [[], [(A | B, 8.0)]], [True, False], fpr_limit=1.0)
    )


@pytest.mark.parametrize(
    "maps, regions, good, message",
    [
        ([GOOD_MAP], [[]], [True], "no defect regions"),
        ([DEFECT_MAP], [[(A, 2.0)]], [False], "needs defect-free test images"),
        ([GOOD_MAP, DEFECT_MAP], [[], [(A, 0.0)]], [True, False], "saturation area must be > 0"),
        ([GOOD_MAP, DEFECT_MAP], [[], [(A[:, :4], 2.0)]], [True, False], "must be the same shape"),
    ],
)
def test_undefined_cases_say_why(maps, regions, good, message):
    with pytest.raises(MetricError, match=message):
        au_spro(maps, regions, good, fpr_limit=0.5)


def make_loco_regions(raw, config):
    for name, mask in (("000.png", A), ("001.png", B)):
        pixels = np.zeros((1, 8), np.uint8)
        pixels[mask] = 255 if name == "000.png" else 254
        write_image(raw / "regions" / "structural_anomalies" / "000" / name, pixels)
    (raw / "regions" / "defects_config.json").write_text(json.dumps(config))


def test_regions_and_saturation_read_from_defects_config(tmp_path):
    make_loco_regions(
        tmp_path,
        [
            {"defect_name": "missing", "pixel_value": 255, "saturation_threshold": 2, "relative_saturation": False},
            {"defect_name": "broken", "pixel_value": 254, "saturation_threshold": 1.0, "relative_saturation": True},
        ],
    )
    items = [
        Item("test/good/000.png", 0, "good", None, 1, 4),
        Item("test/structural_anomalies/000.png", 1, "structural_anomalies", "m", 1, 8),
    ]
    regions = read_regions(tmp_path, items)
    assert regions[0] == [] and [(m.tolist(), s) for m, s in regions[1]] == [(A.tolist(), 2.0), (B.tolist(), 4.0)]
    assert au_spro([GOOD_MAP, DEFECT_MAP], regions, [True, False], fpr_limit=0.5) == pytest.approx(0.3125)
    assert read_regions(tmp_path / "nothing", items) is None  # not a LOCO category: no sPRO


def test_region_value_missing_from_defects_config_is_named(tmp_path):
    make_loco_regions(
        tmp_path,
        [{"defect_name": "missing", "pixel_value": 255, "saturation_threshold": 2, "relative_saturation": False}],
    )
    items = [Item("test/structural_anomalies/000.png", 1, "structural_anomalies", "m", 1, 8)]
    with pytest.raises(DataError, match=r"001\.png: holds pixel values \[254\]"):
        read_regions(tmp_path, items)
