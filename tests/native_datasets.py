"""Tiny look-alikes of the benchmarks' whole-dataset archives, in each dataset's native layout.

Each builder writes a dataset tree (32 px images, a few per split) including the awkward parts
the readers must handle: VisA's split CSV and masks with values other than 0/255, 3D-AD's
``xyz`` TIFFs and all-zero ``gt`` of good images, LOCO's mask folders (several regions per
image) and ``defects_config.json``, AD 2's private splits without masks. A second category sits
beside the wanted one, so tests can check that only the listed category is read.

Example:
    >>> archive = build_archive("visa", tmp_path)  # doctest: +SKIP
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from conftest_data import make_tar, square_mask, texture, write_image

# The category each test fetches, and another one beside it in the archive.
CATEGORY = {
    "visa": ("candle", "pcb1"),
    "mvtec_3d": ("bagel", "tire"),
    "mvtec_loco": ("pushpins", "screw_bag"),
    "mvtec_ad2": ("can", "vial"),
}
# Counts small enough for 2 cores, large enough for the pipeline: thresholds need 2 validation images.
TRAIN, VALIDATION, TEST_GOOD, TEST_BAD = 6, 2, 2, 2


class _Seeds:
    """Distinct texture seeds, so no two images are equal."""

    def __init__(self) -> None:
        self.value = 0

    def image(self, path: Path) -> Path:
        self.value += 1
        return write_image(path, texture(self.value))


def build_visa(root: Path, category: str, seeds: _Seeds) -> list[str]:
    """``<category>/Data/...`` plus its rows of ``split_csv/1cls.csv`` (returned)."""
    rows = []
    data = root / category / "Data"
    for i in range(TRAIN + TEST_GOOD):
        seeds.image(data / "Images" / "Normal" / f"{i:04d}.JPG")
        split = "train" if i < TRAIN else "test"
        rows.append(f"{category},{split},normal,{category}/Data/Images/Normal/{i:04d}.JPG,")
    for i in range(TEST_BAD):
        seeds.image(data / "Images" / "Anomaly" / f"{i:03d}.JPG")
        # VisA's masks are not 0/255: here two defect pixels values in one mask.
        mask = square_mask(i, value=1)
        mask[20:24, 20:24] = 2
        write_image(data / "Masks" / "Anomaly" / f"{i:03d}.png", mask)
        rows.append(
            f"{category},test,anomaly,{category}/Data/Images/Anomaly/{i:03d}.JPG,{category}/Data/Masks/Anomaly/{i:03d}.png"
        )
    (root / category / "image_anno.csv").write_text("image,label,mask\n")
    return rows


def write_visa_csv(root: Path, rows: list[str]) -> Path:
    path = root / "split_csv" / "1cls.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("object,split,label,image,mask\n" + "\n".join(rows) + "\n")
    return path


def build_normal_splits(base: Path, seeds: _Seeds, suffix: str = "") -> None:
    """``train/good`` and the official ``validation/good`` of the MVTec datasets."""
    for split, count in (("train", TRAIN), ("validation", VALIDATION)):
        for i in range(count):
            seeds.image(base / split / "good" / f"{i:03d}{suffix}.png")


def build_mvtec_3d(root: Path, category: str, seeds: _Seeds) -> None:
    """rgb/, xyz/ (float TIFF point clouds, to be ignored) and gt/ (all zero for good images)."""
    base = root / category

    def sample(folder: Path, name: str, mask: np.ndarray | None) -> None:
        seeds.image(folder / "rgb" / f"{name}.png")
        assert cv2.imwrite(
            str(folder / "xyz" / f"{name}.tiff"), np.random.default_rng(seeds.value).random((32, 32, 3), np.float32)
        )
        if mask is not None:
            write_image(folder / "gt" / f"{name}.png", mask)

    for split, count in (("train", TRAIN), ("validation", VALIDATION)):
        for i in range(count):
            (base / split / "good" / "xyz").mkdir(parents=True, exist_ok=True)
            sample(base / split / "good", f"{i:03d}", None)
    for i in range(TEST_GOOD):
        (base / "test" / "good" / "xyz").mkdir(parents=True, exist_ok=True)
        sample(base / "test" / "good", f"{i:03d}", np.zeros((32, 32), np.uint8))
    for i in range(TEST_BAD):
        (base / "test" / "crack" / "xyz").mkdir(parents=True, exist_ok=True)
        sample(base / "test" / "crack", f"{i:03d}", square_mask(i))


# LOCO's defects_config.json: pixel value and saturation of each defect type.
LOCO_DEFECTS = [
    {"defect_name": "missing_pushpin", "pixel_value": 255, "saturation_threshold": 20, "relative_saturation": False},
    {"defect_name": "broken", "pixel_value": 254, "saturation_threshold": 1.0, "relative_saturation": True},
]


def build_mvtec_loco(root: Path, category: str, seeds: _Seeds) -> None:
    """Test images with one mask folder each: a structural image with two region masks."""
    base = root / category
    build_normal_splits(base, seeds)
    for i in range(TEST_GOOD):
        seeds.image(base / "test" / "good" / f"{i:03d}.png")
    for family, value in (("logical_anomalies", 255), ("structural_anomalies", 254)):
        for i in range(TEST_BAD):
            seeds.image(base / "test" / family / f"{i:03d}.png")
            write_image(base / "ground_truth" / family / f"{i:03d}" / "000.png", square_mask(i, value=value))
            if family == "structural_anomalies":  # a second region of the same image
                second = np.zeros((32, 32), np.uint8)
                second[24:28, 24:30] = value
                write_image(base / "ground_truth" / family / f"{i:03d}" / "001.png", second)
    (base / "defects_config.json").write_text(json.dumps(LOCO_DEFECTS))
    (base / "readme.txt").write_text("MVTec LOCO AD look-alike\n")


def build_mvtec_ad2(root: Path, category: str, seeds: _Seeds) -> None:
    """test_public with masks, test_private / test_private_mixed without (never to be read)."""
    base = root / category
    build_normal_splits(base, seeds, "_regular")
    for i in range(TEST_GOOD):
        seeds.image(base / "test_public" / "good" / f"{i:03d}_regular.png")
    for i in range(TEST_BAD):
        seeds.image(base / "test_public" / "bad" / f"{i:03d}_regular.png")
        write_image(base / "test_public" / "ground_truth" / "bad" / f"{i:03d}_regular_mask.png", square_mask(i))
    for split in ("test_private", "test_private_mixed"):
        for i in range(2):
            seeds.image(base / split / f"{i:03d}_regular.png")


def build_tree(source: str, root: Path) -> Path:
    """The whole dataset tree of ``source`` under ``root`` (the wanted category and one more)."""
    seeds = _Seeds()
    if source == "visa":
        rows = [row for category in CATEGORY[source] for row in build_visa(root, category, seeds)]
        write_visa_csv(root, rows)
    else:
        builder = {"mvtec_3d": build_mvtec_3d, "mvtec_loco": build_mvtec_loco, "mvtec_ad2": build_mvtec_ad2}[source]
        for category in CATEGORY[source]:
            builder(root, category, seeds)
    (root / "license.txt").write_text("licence text\n")
    return root


# How each archive packs its tree: VisA at the root (uncompressed tar), the MVTec ones with
# their categories under a top folder in some (both shapes occur among real archives).
_PACKING = {
    "visa": ("", "w"),
    "mvtec_3d": ("", "w:xz"),
    "mvtec_loco": ("mvtec_loco_anomaly_detection/", "w:xz"),
    "mvtec_ad2": ("mvtec_ad_2/", "w:gz"),
}


def build_archive(source: str, tmp_path: Path, name: str) -> Path:
    """Build ``source``'s tree in ``tmp_path/tree`` and pack it as ``tmp_path/archives/<name>``."""
    tree = build_tree(source, tmp_path / "tree" / source)
    top, mode = _PACKING[source]
    members = {top + p.name: p for p in sorted(tree.iterdir())}
    return make_tar(tmp_path / "archives" / name, members, mode=mode)
