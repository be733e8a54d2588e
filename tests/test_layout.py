"""Category layout validation (layout.py) and the local-folder import (local_folder.py)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from anomaly_spotter.dataset.images import read_image
from anomaly_spotter.dataset.layout import find_problems, list_category, validate_category
from anomaly_spotter.errors import DataError
from anomaly_spotter.sources.local_folder import import_folder_category
from conftest_data import SIZE, make_category, square_mask, texture, tree_bytes, write_image


@pytest.fixture
def category(tmp_path: Path) -> Path:
    return make_category(tmp_path)


def test_valid_category_has_no_problems(category):
    assert find_problems(category) == []
    validate_category(category, min_train_images=3)


def test_listing_is_sorted_labelled_and_paired_with_masks(category):
    listing = list_category(category)
    assert [p.name for p in listing.train] == ["000.png", "001.png", "002.png"]
    assert [(t.defect_type, t.path.name, t.label) for t in listing.test] == [
        ("crack", "000.png", 1),
        ("crack", "001.png", 1),
        ("good", "000.png", 0),
        ("good", "001.png", 0),
        ("scratch", "000.png", 1),
        ("scratch", "001.png", 1),
    ]
    for item in listing.test:
        expected = category / "ground_truth" / item.defect_type / f"{item.path.stem}_mask.png" if item.label else None
        assert item.mask == expected
    assert listing.defect_types == ("crack", "scratch")


def test_tolerated_variants_are_not_problems(category):
    # 0/1 masks, all-defect masks, upper-case suffixes, masks in another image format, and OS clutter.
    write_image(category / "ground_truth" / "crack" / "000_mask.png", square_mask(0, value=1))
    write_image(category / "ground_truth" / "crack" / "001_mask.png", np.full((SIZE, SIZE), 255, np.uint8))
    (category / "ground_truth" / "scratch" / "001_mask.png").unlink()
    write_image(category / "ground_truth" / "scratch" / "001_mask.bmp", square_mask(1))
    (category / "train" / "good" / "002.png").rename(category / "train" / "good" / "002.PNG")
    (category / "train" / "good" / ".DS_Store").write_bytes(b"\x00\x01junk")
    (category / "test" / "good" / "._000.png").write_bytes(b"AppleDouble")  # macOS resource fork
    (category / "Thumbs.db").write_bytes(b"junk")
    assert find_problems(category) == []
    listing = list_category(category)
    assert [p.name for p in listing.train] == ["000.png", "001.png", "002.PNG"]
    assert not any(t.path.name.startswith(".") for t in listing.test)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:40])


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


# (id, how to break a valid category, substrings the single problem must contain)
BREAKAGES: list[tuple[str, Callable[[Path], None], tuple[str, ...]]] = [
    ("missing train/good", lambda c: shutil.rmtree(c / "train"), ("train/good/", "missing")),
    ("missing test", lambda c: (shutil.rmtree(c / "test"), shutil.rmtree(c / "ground_truth")), ("test/", "missing")),
    (
        "truncated image",
        lambda c: _truncate(c / "train" / "good" / "001.png"),
        ("train/good/001.png", "not a decodable image"),
    ),
    ("zero-byte image", lambda c: _write(c / "test" / "good" / "001.png", b""), ("test/good/001.png", "empty")),
    (
        "not an image",
        lambda c: _write(c / "test" / "crack" / "001.png", b"hello, I am text"),
        ("test/crack/001.png", "not a decodable image"),
    ),
    (
        "truncated mask",
        lambda c: _truncate(c / "ground_truth" / "crack" / "000_mask.png"),
        ("ground_truth/crack/000_mask.png", "decodable"),
    ),
    (
        "defect image without mask",
        lambda c: (c / "ground_truth" / "scratch" / "001_mask.png").unlink(),
        ("test/scratch/001.png", "no mask", "ground_truth/scratch/001_mask.png"),
    ),
    (
        "no ground_truth at all",
        lambda c: shutil.rmtree(c / "ground_truth"),
        ("ground_truth/", "4 defective test image(s)"),
    ),
    (
        "mask of another size",
        lambda c: write_image(c / "ground_truth" / "crack" / "001_mask.png", square_mask(1, size=(16, SIZE))),
        ("ground_truth/crack/001_mask.png", "16x32", "test/crack/001.png is 32x32"),
    ),
    (
        "mask not binary",
        lambda c: write_image(
            c / "ground_truth" / "crack" / "000_mask.png",
            np.tile(np.array([0, 128, 255], np.uint8), (SIZE, 11))[:, :SIZE],
        ),
        ("ground_truth/crack/000_mask.png", "not binary", "0, 128, 255"),
    ),
    (
        "mask for a good image",
        lambda c: write_image(c / "ground_truth" / "good" / "000_mask.png", square_mask(0)),
        ("ground_truth/good/000_mask.png", "good image"),
    ),
    (
        "mask without image",
        lambda c: write_image(c / "ground_truth" / "crack" / "007_mask.png", square_mask(0)),
        ("ground_truth/crack/007_mask.png", "without an image"),
    ),
    (
        "unknown file type",
        lambda c: _write(c / "train" / "good" / "notes.txt", b"x"),
        ("train/good/notes.txt", "unknown file type", ".png"),
    ),
    (
        "file without suffix",
        lambda c: _write(c / "test" / "crack" / "README", b"x"),
        ("test/crack/README", "unknown file type"),
    ),
    ("unexpected top-level folder", lambda c: (c / "extras").mkdir(), ("extras/", "unexpected folder")),
    (
        "defect folder in train",
        lambda c: write_image(c / "train" / "bad" / "000.png", texture(1)),
        ("train/bad/", "test/bad/"),
    ),
    ("image loose in test/", lambda c: write_image(c / "test" / "000.png", texture(1)), ("test/000.png", "sub-folder")),
    (
        "nested folder",
        lambda c: write_image(c / "test" / "crack" / "deeper" / "000.png", texture(1)),
        ("test/crack/deeper/", "sub-folder"),
    ),
    (
        "mask named without _mask",
        lambda c: write_image(c / "ground_truth" / "crack" / "x.png", square_mask(0)),
        ("ground_truth/crack/x.png", "_mask"),
    ),
    (
        "two images share a name",
        lambda c: write_image(c / "test" / "crack" / "000.jpg", texture(1)),
        ("test/crack/000.jpg", "test/crack/000.png", "ambiguous"),
    ),
    (
        "two masks for one image",
        lambda c: write_image(c / "ground_truth" / "crack" / "000_mask.bmp", square_mask(0)),
        ("ground_truth/crack/000_mask.bmp", "ground_truth/crack/000_mask.png", "several masks"),
    ),
]


@pytest.mark.parametrize(
    "breakage, expected", [(b, e) for _, b, e in BREAKAGES], ids=[name for name, _, _ in BREAKAGES]
)
def test_each_problem_is_reported_naming_the_file(category, breakage, expected):
    breakage(category)
    problems = find_problems(category)
    assert len(problems) == 1, problems
    for text in expected:
        assert text in problems[0], (text, problems[0])
    with pytest.raises(DataError) as info:
        validate_category(category)
    assert str(category) in str(info.value) and problems[0] in str(info.value)


def test_missing_category_folder(tmp_path):
    problems = find_problems(tmp_path / "bottel")
    assert problems == [
        f"{tmp_path / 'bottel'}: the category folder does not exist; check the path and the category name"
    ]


def test_too_few_training_images(category):
    problems = find_problems(category, min_train_images=5)
    assert problems == [
        "train/good/: holds 3 image(s) but at least 5 are needed (min_train_images); add defect-free training images"
    ]


def test_empty_test_folder(category):
    shutil.rmtree(category / "test")
    shutil.rmtree(category / "ground_truth")
    (category / "test").mkdir()
    assert find_problems(category) == ["test/: holds no images; add test/good/ and test/<defect type>/ images"]


def test_all_problems_are_reported_at_once(category):
    _truncate(category / "train" / "good" / "000.png")
    _write(category / "test" / "good" / "001.png", b"")
    (category / "ground_truth" / "scratch" / "001_mask.png").unlink()
    write_image(category / "ground_truth" / "crack" / "001_mask.png", square_mask(1, size=(16, SIZE)))
    write_image(category / "ground_truth" / "good" / "000_mask.png", square_mask(0))
    _write(category / "train" / "good" / "notes.txt", b"x")
    with pytest.raises(DataError) as info:
        validate_category(category, min_train_images=10)
    problems = info.value.problems
    for name in [
        "train/good/000.png",
        "test/good/001.png",
        "test/scratch/001.png",
        "ground_truth/crack/001_mask.png",
        "ground_truth/good/000_mask.png",
        "train/good/notes.txt",
        "train/good/: holds",
    ]:
        assert sum(name in p for p in problems) == 1, (name, problems)
    assert len(problems) == 7
    assert str(info.value).startswith(f"7 data problem(s) in {category}:")


# ---------------------------------------------------------------------------------------------
# Local folder import
# ---------------------------------------------------------------------------------------------


def test_import_copies_bytes_as_they_are(tmp_path):
    source = make_category(tmp_path / "src")
    (source / "train" / "good" / ".DS_Store").write_bytes(b"junk")
    dest = tmp_path / "data" / "raw" / "bottle"
    import_folder_category(source, dest, min_train_images=3)
    expected = {k: v for k, v in tree_bytes(source).items() if not k.endswith(".DS_Store")}
    assert tree_bytes(dest) == expected
    assert [p.name for p in dest.parent.iterdir()] == ["bottle"]  # no staging folder left


def test_import_mixed_formats_gray_and_sizes(tmp_path):
    source = tmp_path / "src" / "parts"
    write_image(source / "train" / "good" / "a.png", texture(1, gray=True))
    write_image(source / "train" / "good" / "b.jpg", texture(2, size=(40, 56)))
    write_image(source / "train" / "good" / "c.bmp", texture(3, size=(24, 24), gray=True))
    write_image(source / "train" / "good" / "d.tiff", texture(4, size=(30, 20)))
    write_image(source / "test" / "good" / "e.tif", texture(5, gray=True))
    write_image(source / "test" / "dent" / "f.jpeg", texture(6, size=(48, 40)))
    write_image(source / "ground_truth" / "dent" / "f_mask.png", square_mask(0, size=(48, 40)))
    write_image(source / "test" / "dent" / "g.bmp", texture(7, size=(20, 36), gray=True))
    write_image(source / "ground_truth" / "dent" / "g_mask.tif", square_mask(1, size=(20, 36), value=1))
    dest = tmp_path / "raw" / "parts"
    import_folder_category(source, dest, min_train_images=4)
    assert tree_bytes(dest) == tree_bytes(source)
    assert read_image(dest / "train" / "good" / "c.bmp").shape == (24, 24, 3)  # grayscale comes back as RGB
    listing = list_category(dest)
    assert [t.mask.name if t.mask else None for t in listing.test] == ["f_mask.png", "g_mask.tif", None]


def test_import_refuses_a_broken_folder_and_keeps_the_old_copy(tmp_path):
    source = make_category(tmp_path / "src")
    dest = make_category(tmp_path / "raw", "bottle", train=4)
    before = tree_bytes(dest)
    (source / "ground_truth" / "crack" / "000_mask.png").unlink()
    with pytest.raises(DataError, match=r"test/crack/000\.png: defective test image has no mask"):
        import_folder_category(source, dest, min_train_images=1)
    assert tree_bytes(dest) == before
    assert [p.name for p in (tmp_path / "raw").iterdir()] == ["bottle"]


def test_import_of_a_missing_folder(tmp_path):
    with pytest.raises(DataError, match="category folder does not exist"):
        import_folder_category(tmp_path / "nope", tmp_path / "dest", min_train_images=1)
    assert not (tmp_path / "dest").exists()


def test_official_validation_split_is_listed_checked_and_imported(tmp_path, category):
    for i in range(2):
        write_image(category / "validation" / "good" / f"{i:03d}.png", texture(50 + i))
    assert find_problems(category) == []
    assert [p.name for p in list_category(category).validation] == ["000.png", "001.png"]
    dest = tmp_path / "imported"
    import_folder_category(category, dest, min_train_images=3)
    assert tree_bytes(dest) == tree_bytes(category)  # the folder source keeps it too
    write_image(category / "validation" / "crack" / "000.png", texture(60))
    (category / "validation" / "good" / "001.png").write_bytes(b"not an image")
    problems = find_problems(category)
    assert any(p.startswith("validation/crack/: only validation/good/ is used") for p in problems)
    assert any(p.startswith("validation/good/001.png") for p in problems)
    shutil.rmtree(category / "validation" / "good")
    assert (
        "validation/good/: folder is missing; put the defect-free validation images there or delete validation/"
        in find_problems(category)
    )


def test_regions_folder_is_not_a_layout_problem(category):
    write_image(category / "regions" / "logical_anomalies" / "000" / "000.png", square_mask(0))
    assert find_problems(category) == []
