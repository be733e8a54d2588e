"""Checks on the real images in ../shared/datasets (skipped when that folder is absent)."""

import pytest

from anomaly_spotter.dataset.layout import find_problems, list_category
from conftest import SHARED_DATASETS

MAGNETIC_TILE = SHARED_DATASETS / "magnetic_tile" / "magnetic_tile"
pytestmark = pytest.mark.skipif(not MAGNETIC_TILE.is_dir(), reason=f"real dataset not present at {MAGNETIC_TILE}")


def test_magnetic_tile_passes_validation_with_its_published_counts():
    assert find_problems(MAGNETIC_TILE, min_train_images=4) == []
    listing = list_category(MAGNETIC_TILE)
    assert len(listing.train) == 666
    assert len(listing.test) == 286 + 388
    defects = [item for item in listing.test if item.label == 1]
    assert len(defects) == 388 and all(item.mask is not None for item in defects)
    assert {item.defect_type for item in defects} == {"blowhole", "break", "crack", "fray", "uneven"}
