"""Ground-truth masks: one reader at native bit depth (images.read_mask), the all-zero check of
layout validation, and resizing to model resolution without losing thin defects (images.resize_mask)."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from anomaly_spotter.config import PreprocessConfig
from anomaly_spotter.dataset.images import read_mask, read_mask_values, resize_mask
from anomaly_spotter.dataset.layout import find_problems, validate_category
from anomaly_spotter.dataset.preprocessing import preprocess_category
from anomaly_spotter.dataset.processed import load_processed
from anomaly_spotter.errors import DataError
from conftest_data import SIZE, make_category, square_mask, texture, write_image

MASK = "ground_truth/crack/000_mask.png"


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def write_palette_png(path: Path, indices: np.ndarray, palette: list[tuple[int, int, int]]) -> Path:
    """An 8-bit palette PNG (colour type 3) of ``indices`` (H, W), written by hand: OpenCV cannot write one."""
    height, width = indices.shape
    raw = b"".join(b"\x00" + row.astype(np.uint8).tobytes() for row in indices)  # filter 0 per row
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 3, 0, 0, 0))
        + _png_chunk(b"PLTE", bytes(c for colour in palette for c in colour))
        + _png_chunk(b"IDAT", zlib.compress(raw))
        + _png_chunk(b"IEND", b"")
    )
    return path


def _shape() -> np.ndarray:
    """Where the test masks mark a defect: a rectangle plus a 1-px line."""
    where = square_mask(1) > 0
    where[20, 3:30] = True
    return where


def _gray(dtype: type, value: int) -> np.ndarray:
    return (_shape() * value).astype(dtype)


def _bgr(rgb: tuple[int, int, int], alpha: int | None = None, background_alpha: int | None = None) -> np.ndarray:
    """OpenCV-order (BGR[A]) pixels: colour ``rgb`` on the defect, black elsewhere."""
    channels = [np.where(_shape(), c, 0) for c in rgb[::-1]]
    if alpha is not None:
        channels.append(np.where(_shape(), alpha, background_alpha))
    return np.stack(channels, axis=2).astype(np.uint8)


READABLE = {
    "8-bit 0/255": lambda p: write_image(p, _gray(np.uint8, 255)),
    "8-bit 0/1": lambda p: write_image(p, _gray(np.uint8, 1)),
    "16-bit 0/1": lambda p: write_image(p, _gray(np.uint16, 1)),  # IMREAD_GRAYSCALE read these three as all zero
    "16-bit 0/255": lambda p: write_image(p, _gray(np.uint16, 255)),
    "16-bit 0/65535": lambda p: write_image(p, _gray(np.uint16, 65535)),
    "1-channel TIFF 0/1": lambda p: write_image(p.with_suffix(".tif"), _gray(np.uint8, 1)),
    "palette, index 1 red": lambda p: write_palette_png(p, _shape().astype(np.uint8), [(0, 0, 0), (255, 0, 0)]),
    "palette, index 1 dark blue": lambda p: write_palette_png(p, _shape().astype(np.uint8), [(0, 0, 0), (0, 0, 1)]),
    "RGB red": lambda p: write_image(p, _bgr((255, 0, 0))),
    "RGB dark blue": lambda p: write_image(p, _bgr((0, 0, 1))),  # luminance weighting rounded it to 0
    "RGBA opaque, alpha ignored": lambda p: write_image(p, _bgr((255, 255, 255), alpha=255, background_alpha=255)),
    "RGBA colour on transparent": lambda p: write_image(p, _bgr((0, 255, 0), alpha=255, background_alpha=0)),
    "RGBA black on transparent": lambda p: write_image(p, _bgr((0, 0, 0), alpha=255, background_alpha=0)),
    "16-bit RGB": lambda p: write_image(p, _bgr((0, 0, 1)).astype(np.uint16)),
}


@pytest.mark.parametrize("write", READABLE.values(), ids=READABLE.keys())
def test_every_mask_kind_reads_as_its_defect(tmp_path, write):
    path = write(tmp_path / "000_mask.png")
    mask = read_mask(path)
    assert mask.dtype == bool and mask.shape == (SIZE, SIZE)
    assert np.array_equal(mask, _shape())


@pytest.mark.parametrize("write", READABLE.values(), ids=READABLE.keys())
def test_every_mask_kind_passes_validation(tmp_path, write):
    category = make_category(tmp_path)
    (category / MASK).unlink()
    write(category / MASK)
    assert find_problems(category) == []


def test_palette_masks_are_judged_by_colour_not_index(tmp_path):
    # The documented rule: a defect index drawn black looks empty in a viewer and reads empty here.
    indices = _shape().astype(np.uint8)
    assert not read_mask(write_palette_png(tmp_path / "black_mask.png", indices, [(0, 0, 0), (0, 0, 0)])).any()
    # ... and an index 0 with a colour is a defect wherever it is drawn.
    assert (
        read_mask(write_palette_png(tmp_path / "white_mask.png", indices, [(255, 255, 255), (0, 0, 0)])).sum()
        == (~_shape()).sum()
    )


def test_colour_values_stay_distinct_for_the_binary_check(tmp_path):
    pixels = _bgr((255, 0, 0))
    pixels[0, 0] = (0, 0, 254)  # a second, slightly different red
    path = write_image(tmp_path / "m.png", pixels)
    assert np.unique(read_mask_values(path)).tolist() == [0, 0xFE0000, 0xFF0000]
    category = make_category(tmp_path / "c")
    write_image(category / MASK, pixels)
    problems = find_problems(category)
    assert len(problems) == 1 and "not binary" in problems[0] and "(#000000, #fe0000, #ff0000)" in problems[0], problems


def test_unsupported_mask_pixel_type_names_the_file(tmp_path):
    path = write_image(tmp_path / "m_mask.tiff", _shape().astype(np.float32))
    with pytest.raises(DataError, match=r"m_mask\.tiff: unsupported mask pixel type float32"):
        read_mask(path)


EMPTY = {
    "8-bit": lambda p: write_image(p, np.zeros((SIZE, SIZE), np.uint8)),
    "16-bit": lambda p: write_image(p, np.zeros((SIZE, SIZE), np.uint16)),
    "RGBA opaque black": lambda p: write_image(p, _bgr((0, 0, 0), alpha=255, background_alpha=255)),
    "palette, defect colour black": lambda p: write_palette_png(p, _shape().astype(np.uint8), [(0, 0, 0), (0, 0, 0)]),
}


@pytest.mark.parametrize("write", EMPTY.values(), ids=EMPTY.keys())
def test_all_zero_mask_on_a_defect_image_is_rejected_naming_the_file(tmp_path, write):
    category = make_category(tmp_path)
    write(category / MASK)
    problems = find_problems(category)
    assert len(problems) == 1, problems
    assert problems[0].startswith(
        f"{MASK}: mask is all zero, so the defective image test/crack/000.png has no defect pixels;"
    )
    assert "non-zero value" in problems[0] and "move it to test/good/" in problems[0]
    with pytest.raises(DataError) as info:
        validate_category(category)
    assert problems[0] in str(info.value)


def test_empty_masks_are_listed_with_the_other_problems(tmp_path):
    category = make_category(tmp_path)
    write_image(category / MASK, np.zeros((SIZE, SIZE), np.uint16))
    write_image(
        category / "ground_truth" / "scratch" / "001_mask.png", np.zeros((16, SIZE), np.uint8)
    )  # wrong size and empty
    write_image(
        category / "ground_truth" / "good" / "000_mask.png", square_mask(0)
    )  # a mask on a good image: still rejected
    with pytest.raises(DataError) as info:
        validate_category(category)
    problems = info.value.problems
    assert len(problems) == 4, problems
    assert sum("ground_truth/crack/000_mask.png: mask is all zero" in p for p in problems) == 1
    assert sum("ground_truth/scratch/001_mask.png: mask is all zero" in p for p in problems) == 1
    assert sum("ground_truth/scratch/001_mask.png: mask is 16x32" in p for p in problems) == 1
    assert sum("ground_truth/good/000_mask.png: a mask for a good image" in p for p in problems) == 1


# ---------------------------------------------------------------------------------------------
# Resizing to model resolution
# ---------------------------------------------------------------------------------------------


def _scratches(count: int, seed: int = 0) -> list[tuple[str, np.ndarray]]:
    """1-px wide horizontal, vertical and diagonal scratches at random places in 1024x1024."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        mask = np.zeros((1024, 1024), bool)
        kind = ("horizontal", "vertical", "diagonal", "anti-diagonal")[i % 4]
        start, length = (int(v) for v in rng.integers(0, 1024, 2))
        length = max(1, length // 4)
        steps = np.arange(length)
        if kind == "horizontal":
            rows, cols = np.full(length, start), (int(rng.integers(0, 1024)) + steps) % 1024
        elif kind == "vertical":
            rows, cols = (int(rng.integers(0, 1024)) + steps) % 1024, np.full(length, start)
        else:
            rows = (start + steps) % 1024
            col0 = int(rng.integers(0, 1024))
            cols = (col0 + steps) % 1024 if kind == "diagonal" else (col0 - steps) % 1024
        mask[rows, cols] = True
        out.append((f"{kind}{i}", mask))
    return out


@pytest.mark.parametrize("name, mask", _scratches(20), ids=[name for name, _ in _scratches(20)])
def test_a_thin_scratch_marks_exactly_the_blocks_it_touches(name, mask):
    small = resize_mask(mask, 128)
    assert small.shape == (128, 128) and small.dtype == bool
    rows, cols = np.nonzero(mask)
    expected = np.zeros((128, 128), bool)
    expected[rows // 8, cols // 8] = True  # 1024 / 128: each output pixel is an 8x8 block
    assert small.any()
    assert np.array_equal(small, expected)


def test_a_single_pixel_survives_any_block_position():
    for row, col in [(0, 0), (7, 7), (8, 8), (1023, 1023), (515, 2)]:
        mask = np.zeros((1024, 1024), bool)
        mask[row, col] = True
        assert np.argwhere(resize_mask(mask, 128)).tolist() == [[row // 8, col // 8]]


def test_non_square_masks_keep_height_and_width_apart():
    # 700 rows -> 128: a block is 700/128 = 5.47 rows; 1024 columns -> 128: 8 columns.
    mask = np.zeros((700, 1024), bool)
    mask[690, :] = True  # row 690 lies inside output row 126 = [689.06, 694.53)
    mask[:, 1000] = True  # column 1000 lies inside output column 125
    small = resize_mask(mask, 128)
    assert small.shape == (128, 128)
    assert np.flatnonzero(small.all(axis=1)).tolist() == [126]
    assert np.flatnonzero(small.all(axis=0)).tolist() == [125]
    assert small.sum() == 128 + 128 - 1


def test_a_pixel_straddling_two_blocks_marks_both():
    mask = np.zeros((700, 700), bool)
    mask[5, 5] = True  # 700/128: row and column 5 span [5, 6), across the block edge at 5.47
    assert np.argwhere(resize_mask(mask, 128)).tolist() == [[0, 0], [0, 1], [1, 0], [1, 1]]


def test_enlarging_is_exact():
    mask = np.random.default_rng(1).random((16, 16)) < 0.3
    assert np.array_equal(resize_mask(mask, 64), np.kron(mask, np.ones((4, 4), bool)))
    assert np.array_equal(resize_mask(mask, 16), mask)


def test_one_axis_shrinks_the_other_grows():
    mask = np.zeros((20, 300), bool)
    mask[5, 150] = True
    small = resize_mask(mask, 128)
    assert np.flatnonzero(small.any(axis=0)).tolist() == [64]  # 300/128 = 2.34: column 150 lies in [150, 152.3)
    assert np.flatnonzero(small.any(axis=1)).tolist() == [i for i in range(128) if i * 20 // 128 == 5]  # nearest rows


def test_preprocess_keeps_a_thin_scratch_as_uint8_0_1(tmp_path):
    raw = tmp_path / "raw"
    for i in range(3):
        write_image(raw / "train" / "good" / f"{i:03d}.png", texture(i, size=(128, 128)))
    write_image(raw / "test" / "good" / "000.png", texture(10, size=(128, 128)))
    write_image(raw / "test" / "scratch" / "000.png", texture(11, size=(128, 128)))
    scratch = np.zeros((128, 128), np.uint16)
    scratch[5, 10:90] = 1  # 16-bit 0/1, and on row 5, which nearest-neighbour to 32 (rows 0, 4, 8, ...) skipped
    write_image(raw / "ground_truth" / "scratch" / "000_mask.png", scratch)
    preprocess_category(raw, tmp_path / "processed", PreprocessConfig(image_size=32, val_fraction=0.3))
    data = load_processed(tmp_path / "processed")
    masks = np.asarray(data.test_masks)
    assert masks.dtype == np.uint8 and set(np.unique(masks).tolist()) == {0, 1}
    index = [item.defect_type for item in data.test_items].index("scratch")
    assert np.array_equal(masks[index].astype(bool), resize_mask(scratch > 0, 32))
    assert np.argwhere(masks[index]).tolist() == [[1, col] for col in range(2, 23)]
