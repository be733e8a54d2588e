"""Stage ``preprocess``: decode, convert and resize one category once, for every later stage.

Writes the folder :mod:`anomaly_spotter.dataset.processed` describes (and reads back).

Example:
    >>> preprocess_category("data/raw/weave", "data/processed/weave", params.preprocess)  # doctest: +SKIP
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from anomaly_spotter.config import PreprocessConfig
from anomaly_spotter.dataset.images import read_image, read_mask, resize, resize_mask
from anomaly_spotter.dataset.layout import list_category, validate_category
from anomaly_spotter.dataset.processed import save_npy
from anomaly_spotter.errors import DataError
from anomaly_spotter.fileio import staging_dir, write_json

# OpenCV releases the GIL while decoding and resizing, so threads use both cores.
DECODE_THREADS = 2


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


def preprocess_category(
    raw_dir: str | Path,
    out_dir: str | Path,
    config: PreprocessConfig,
    *,
    min_train_images: int = 2,
    masks: str = "pixel",
) -> None:
    """Decode ``raw_dir`` (MVTec AD layout) into the arrays described above, in ``out_dir``.

    ``masks`` is ``data.masks``: ``none`` accepts a category without ``ground_truth/`` (image labels only).
    """
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    validate_category(raw_dir, min_train_images=max(2, min_train_images), masks=masks)
    listing = list_category(raw_dir, masks=masks)
    size = config.image_size
    if listing.validation:
        # The dataset's own validation split: what its benchmark expects thresholds and model
        # selection to use, and every training image still trains.
        train_paths, val_paths, val_source = list(listing.train), list(listing.validation), "official"
    else:
        train_idx, val_idx = split_validation(len(listing.train), config.val_fraction, config.seed)
        train_paths = [listing.train[i] for i in train_idx]
        val_paths = [listing.train[i] for i in val_idx]
        val_source = "holdout"
    test_paths = [item.path for item in listing.test]

    with staging_dir(out_dir) as staging:
        train, _ = _load_images(train_paths, size)
        val, _ = _load_images(val_paths, size)
        test, test_sizes = _load_images(test_paths, size)
        test_masks = np.zeros((len(test_paths), size, size), np.uint8)
        items = []
        for i, (item, (height, width)) in enumerate(zip(listing.test, test_sizes, strict=False)):
            if item.mask is not None:
                test_masks[i] = resize_mask(read_mask(item.mask), size)  # area rule: thin defects survive
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
        save_npy(staging / "train.npy", train)
        save_npy(staging / "val.npy", val)
        save_npy(staging / "test.npy", test)
        save_npy(staging / "test_masks.npy", test_masks)
        write_json(
            staging / "index.json",
            {
                "image_size": size,
                "train": [p.relative_to(raw_dir).as_posix() for p in train_paths],
                "val": [p.relative_to(raw_dir).as_posix() for p in val_paths],
                "val_source": val_source,
                "masks": masks,
                "test": items,
            },
        )
