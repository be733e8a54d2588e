"""The processed-data format: what ``preprocess`` writes and every later stage reads.

A folder ``data/processed/<category>/``, written atomically as one unit by
:mod:`anomaly_spotter.dataset.preprocessing`::

    train.npy        uint8 (N_train, S, S, 3)  training images (train/good minus the hold-out)
    val.npy          uint8 (N_val, S, S, 3)    normal validation images: the dataset's official
                                               validation/good split when it has one, else a
                                               hold-out of train/good (index.json "val_source")
    test.npy         uint8 (N_test, S, S, 3)   test images
    test_masks.npy   uint8 (N_test, S, S)      ground truth at model resolution (0/1; all 0 without masks)
    index.json       file names per split, test labels, defect types, mask paths and original sizes;
                     "masks": "pixel", or "none" for image labels only (data.masks)

This module is its own file because it is a DVC dependency of train, thresholds, evaluate and
export: an edit to how preprocessing *works* must not re-run them, only an edit to the format.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from anomaly_spotter.errors import DataError
from anomaly_spotter.fileio import write_bytes


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
    val_source: str = "holdout"  # "official" (validation/good) or "holdout" (of train/good)
    masks: str = "pixel"  # "pixel": every defective test image has a mask; "none": image labels only

    @property
    def test_labels(self) -> np.ndarray:
        return np.array([item.label for item in self.test_items], dtype=np.int64)

    @property
    def defect_types(self) -> list[str]:
        return [item.defect_type for item in self.test_items]


def save_npy(path: Path, array: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    write_bytes(path, buffer.getvalue())


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
        val_source=str(index.get("val_source", "holdout")),  # folders written before it existed are hold-outs
        masks=str(index.get("masks", "pixel")),  # ... and had masks
    )
