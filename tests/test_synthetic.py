import numpy as np
import pytest

from anomaly_spotter.config import SyntheticConfig
from anomaly_spotter.dataset.images import read_image, read_mask
from anomaly_spotter.sources.synthetic import CATEGORIES, DEFECTS, GRAYSCALE, generate_category, render_sample

CONFIG = SyntheticConfig(side=64, train_good=3, test_good=2, test_defect_per_type=2, seed=3)


def test_categories_cover_texture_irregular_texture_and_object():
    assert {"weave", "marble", "washer"} <= set(CATEGORIES)
    assert GRAYSCALE & set(CATEGORIES)
    assert all(len(DEFECTS[c]) >= 3 for c in CATEGORIES)


@pytest.mark.parametrize("category", CATEGORIES)
def test_deterministic_from_seed(category):
    a = render_sample(category, "good", index=1, config=CONFIG)
    b = render_sample(category, "good", index=1, config=CONFIG)
    other_seed = render_sample(category, "good", index=1, config=SyntheticConfig(side=64, seed=4))
    other_index = render_sample(category, "good", index=2, config=CONFIG)
    assert np.array_equal(a.image, b.image)
    assert not np.array_equal(a.image, other_seed.image)
    assert not np.array_equal(a.image, other_index.image)  # normal images vary


@pytest.mark.parametrize("category, defect", [(c, d) for c in CATEGORIES for d in DEFECTS[c]])
def test_mask_marks_exactly_the_changed_pixels(category, defect):
    for index in range(3):
        sample = render_sample(category, defect, index=index, config=SyntheticConfig(side=96))
        changed = (sample.image != sample.clean).any(axis=2)
        assert sample.mask.sum() >= 10
        assert not (changed & ~sample.mask).any(), "pixels changed outside the mask"
        assert changed[sample.mask].mean() > 0.9, "mask pixels the defect did not change"


def test_object_defects_land_on_the_object():
    for index in range(5):
        sample = render_sample("washer", "scratch", index=index, config=SyntheticConfig(side=96))
        background = np.array([40, 40, 45])
        on_background = (np.abs(sample.clean.astype(int) - background).max(axis=2) < 15) & sample.mask
        assert on_background.sum() == 0


def test_generate_category_writes_mvtec_layout(tmp_path):
    generate_category("marble", tmp_path / "marble", CONFIG)
    root = tmp_path / "marble"
    assert len(list((root / "train" / "good").glob("*.png"))) == 3
    assert len(list((root / "test" / "good").glob("*.png"))) == 2
    for defect in DEFECTS["marble"]:
        images = sorted((root / "test" / defect).glob("*.png"))
        masks = sorted((root / "ground_truth" / defect).glob("*_mask.png"))
        assert [p.stem + "_mask" for p in images] == [m.stem for m in masks]
        assert read_mask(masks[0]).any()
    assert read_image(root / "train" / "good" / "000.png").shape == (64, 64, 3)
    assert not list(tmp_path.glob(".*partial"))  # no staging folder left behind


def test_generate_is_byte_identical(tmp_path):
    generate_category("weave", tmp_path / "a", CONFIG)
    generate_category("weave", tmp_path / "b", CONFIG)
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.png"))
    assert files_a == sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*.png"))
    for rel in files_a:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()


def test_unknown_category():
    with pytest.raises(KeyError, match="built-in ones are"):
        render_sample("carpet", "good", index=0, config=CONFIG)
