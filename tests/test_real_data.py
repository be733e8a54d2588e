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


def test_magnetic_tile_without_ground_truth_needs_the_image_labels_only_flag(tmp_path):
    # A copy without ground_truth/ (linked, outside the repository), as a user with image labels only has it.
    copy = tmp_path / "magnetic_tile"
    copy.mkdir()
    for split in ("train", "test"):
        (copy / split).symlink_to(MAGNETIC_TILE / split, target_is_directory=True)
    refused = find_problems(copy, min_train_images=4)
    assert len(refused) == 1 and "the 388 defective test image(s) have no masks" in refused[0]
    assert "data.masks: none" in refused[0]
    assert find_problems(copy, min_train_images=4, masks="none") == []
    assert all(item.mask is None for item in list_category(copy, masks="none").test)


TIRE = SHARED_DATASETS / "mvtec3d_tire" / "tire"


@pytest.mark.skipif(not TIRE.is_dir(), reason=f"real dataset not present at {TIRE}")
def test_mvtec3d_tire_passes_validation_with_its_published_counts():
    """The second real set bench/real_data.py runs on (SOURCE.md: 210 train, 25 good + 87 defective test)."""
    assert find_problems(TIRE, min_train_images=4) == []
    listing = list_category(TIRE)
    assert len(listing.train) == 210 and len(listing.test) == 25 + 87
    defects = [item for item in listing.test if item.label == 1]
    assert len(defects) == 87 and all(item.mask is not None for item in defects)
    assert {item.defect_type for item in defects} == {"combined", "contamination", "cut", "hole"}
