"""Ground-truth masks: one reader at native bit depth (images.read_mask) and the all-zero check of
layout validation."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest_data import SIZE, make_category, square_mask, write_image

from anomaly_spotter.errors import DataError
from anomaly_spotter.images import read_mask, read_mask_values
from anomaly_spotter.layout import find_problems, validate_category

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
    assert read_mask(write_palette_png(tmp_path / "white_mask.png", indices, [(255, 255, 255), (0, 0, 0)])).sum() == (~_shape()).sum()


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
    assert problems[0].startswith(f"{MASK}: mask is all zero, so the defective image test/crack/000.png has no defect pixels;")
    assert "non-zero value" in problems[0] and "move it to test/good/" in problems[0]
    with pytest.raises(DataError) as info:
        validate_category(category)
    assert problems[0] in str(info.value)


def test_empty_masks_are_listed_with_the_other_problems(tmp_path):
    category = make_category(tmp_path)
    write_image(category / MASK, np.zeros((SIZE, SIZE), np.uint16))
    write_image(category / "ground_truth" / "scratch" / "001_mask.png", np.zeros((16, SIZE), np.uint8))  # wrong size and empty
    write_image(category / "ground_truth" / "good" / "000_mask.png", square_mask(0))  # a mask on a good image: still rejected
    with pytest.raises(DataError) as info:
        validate_category(category)
    problems = info.value.problems
    assert len(problems) == 4, problems
    assert sum("ground_truth/crack/000_mask.png: mask is all zero" in p for p in problems) == 1
    assert sum("ground_truth/scratch/001_mask.png: mask is all zero" in p for p in problems) == 1
    assert sum("ground_truth/scratch/001_mask.png: mask is 16x32" in p for p in problems) == 1
    assert sum("ground_truth/good/000_mask.png: a mask for a good image" in p for p in problems) == 1
