"""Stage ``preprocess``: decode, convert and resize one category once, for every later stage.

Output folder (``data/processed/<category>/``), all written atomically as one unit::

    train.npy        uint8 (N_train, S, S, 3)  training images (train/good minus the hold-out)
    val.npy          uint8 (N_val, S, S, 3)    validation hold-out of train/good (normal only)
    test.npy         uint8 (N_test, S, S, 3)   test images
    test_masks.npy   uint8 (N_test, S, S)      ground truth at model resolution (0/1)
    index.json       file names per split, test labels, defect types, mask paths and original sizes

``.npy`` is used rather than ``.npz`` because ``np.savez`` stores zip timestamps, which would
change the bytes (and DVC's md5) on every run. Training memory-maps these arrays and never
decodes a PNG per epoch.

Example:
    >>> data = load_processed("data/processed/weave")  # doctest: +SKIP
    >>> data.train.shape, data.test_labels.mean()  # doctest: +SKIP
    ((61, 128, 128, 3), 0.5)
"""

from __future__ import annotations

import io
import json
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from anomaly_spotter.config import PreprocessConfig
from anomaly_spotter.errors import DataError
from anomaly_spotter.fileio import staging_dir, write_bytes, write_json
from anomaly_spotter.images import read_image, read_mask, resize
from anomaly_spotter.layout import list_category, validate_category

# OpenCV releases the GIL while decoding and resizing, so threads use both cores.
DECODE_THREADS = 2


@dataclass(frozen=True)
class TestItem:
    """One test image as recorded in ``index.json``."""

    file: str  # relative to the category root
    label: int  # 0 good, 1 defective
    defect_type: str  # "good" for good images
    mask: str | None  # relative mask path, None for good images
    height: int  # original size
    width: int


@dataclass(frozen=True)
class ProcessedCategory:
    """A preprocessed category, arrays memory-mapped from disk."""

    root: Path
    image_size: int
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    test_masks: np.ndarray
    test_items: tuple[TestItem, ...]
    train_files: tuple[str, ...]
    val_files: tuple[str, ...]

    @property
    def test_labels(self) -> np.ndarray:
        return np.array([item.label for item in self.test_items], dtype=np.int64)

    @property
    def defect_types(self) -> list[str]:
        return [item.defect_type for item in self.test_items]


def split_validation(count: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic (train, val) index split of ``count`` normal images.

    At least one image goes to each side.

    >>> train, val = split_validation(10, 0.2, seed=0)
    >>> len(train), len(val), sorted(set(train) | set(val)) == list(range(10))
    (8, 2, True)
    """
    if count < 2:
        raise DataError([f"need at least 2 training images to hold one out for validation, found {count}"])
    n_val = min(count - 1, max(1, math.ceil(fraction * count)))
    order = np.random.default_rng(seed).permutation(count)
    return np.sort(order[n_val:]), np.sort(order[:n_val])


def _save_npy(path: Path, array: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    write_bytes(path, buffer.getvalue())


def _load_images(paths: list[Path], size: int) -> tuple[np.ndarray, list[tuple[int, int]]]:
    def one(path: Path) -> tuple[np.ndarray, tuple[int, int]]:
        image = read_image(path)
        return resize(image, size), image.shape[:2]

    out = np.zeros((len(paths), size, size, 3), np.uint8)
    sizes: list[tuple[int, int]] = []
    with ThreadPoolExecutor(DECODE_THREADS) as pool:
        for i, (image, original) in enumerate(pool.map(one, paths)):
            out[i] = image
            sizes.append((int(original[0]), int(original[1])))
    return out, sizes


def preprocess_category(raw_dir: str | Path, out_dir: str | Path, config: PreprocessConfig, *, min_train_images: int = 2) -> None:
    """Decode ``raw_dir`` (MVTec AD layout) into the arrays described above, in ``out_dir``."""
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    validate_category(raw_dir, min_train_images=max(2, min_train_images))
    listing = list_category(raw_dir)
    size = config.image_size
    train_idx, val_idx = split_validation(len(listing.train), config.val_fraction, config.seed)
    train_paths = [listing.train[i] for i in train_idx]
    val_paths = [listing.train[i] for i in val_idx]
    test_paths = [item.path for item in listing.test]

    with staging_dir(out_dir) as staging:
        train, _ = _load_images(train_paths, size)
        val, _ = _load_images(val_paths, size)
        test, test_sizes = _load_images(test_paths, size)
        masks = np.zeros((len(test_paths), size, size), np.uint8)
        items = []
        for i, (item, (height, width)) in enumerate(zip(listing.test, test_sizes)):
            if item.mask is not None:
                masks[i] = resize(read_mask(item.mask).astype(np.uint8), size, nearest=True)
            items.append(
                {
                    "file": item.path.relative_to(raw_dir).as_posix(),
                    "label": int(item.label),
                    "defect_type": item.defect_type,
                    "mask": item.mask.relative_to(raw_dir).as_posix() if item.mask is not None else None,
                    "height": height,
                    "width": width,
                }
            )
        _save_npy(staging / "train.npy", train)
        _save_npy(staging / "val.npy", val)
        _save_npy(staging / "test.npy", test)
        _save_npy(staging / "test_masks.npy", masks)
        write_json(
            staging / "index.json",
            {
                "image_size": size,
                "train": [p.relative_to(raw_dir).as_posix() for p in train_paths],
                "val": [p.relative_to(raw_dir).as_posix() for p in val_paths],
                "test": items,
            },
        )


def load_processed(folder: str | Path) -> ProcessedCategory:
    """Open a ``data/processed/<category>`` folder (arrays memory-mapped, read-only)."""
    folder = Path(folder)
    index_path = folder / "index.json"
    if not index_path.is_file():
        raise DataError([f"{index_path} is missing; run `dvc repro preprocess` first"])
    index: dict[str, Any] = json.loads(index_path.read_text(encoding="utf-8"))

    def array(name: str) -> np.ndarray:
        return np.load(folder / f"{name}.npy", mmap_mode="r", allow_pickle=False)

    return ProcessedCategory(
        root=folder,
        image_size=int(index["image_size"]),
        train=array("train"),
        val=array("val"),
        test=array("test"),
        test_masks=array("test_masks"),
        test_items=tuple(TestItem(**item) for item in index["test"]),
        train_files=tuple(index["train"]),
        val_files=tuple(index["val"]),
    )
