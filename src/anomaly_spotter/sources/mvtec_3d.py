"""MVTec 3D-AD (``data.source: mvtec_3d``): its RGB images and ground truth in MVTec AD layout.

MVTec 3D-AD (Bergmann et al., VISAPP 2022; CC BY-NC-SA 4.0) pairs every RGB image with an
``xyz`` point cloud (a 3-channel TIFF)::

    <category>/train/good/{rgb,xyz}/NNN.{png,tiff}
    <category>/validation/good/{rgb,xyz}/NNN.{png,tiff}       the official normal validation split
    <category>/test/<defect>/{rgb,xyz,gt}/NNN.{png,tiff,png}

The detectors here are 2-D, so only ``rgb/`` and ``gt/`` are read; the point clouds are out of
scope and are not even extracted (they are most of the archive's bytes). ``gt/`` exists for good
test images too (all zero) and is dropped there; defect masks are written as 0/255 PNGs. The
published checksum is an MD5 (the only one the dataset gives).
"""

from __future__ import annotations

from pathlib import Path

from anomaly_spotter.dataset.layout import GOOD, MASK_SUFFIX
from anomaly_spotter.sources.archives import (
    Dataset,
    DatasetArchive,
    archive_source,
    move_files,
    visible_folders,
    write_union_mask,
)

# Its categories (shared/reference/datasets.md).
CATEGORIES: tuple[str, ...] = (
    "bagel",
    "cable_gland",
    "carrot",
    "cookie",
    "dowel",
    "foam",
    "peach",
    "potato",
    "rope",
    "tire",
)

ARCHIVE = DatasetArchive(
    dataset="MVTec 3D-AD",
    base_url="https://www.mydrive.ch/shares/150646/25de33f1276dd418cd856f2f48a84cdb/download/",
    path="428824485-1643299897/mvtec_3d_anomaly_detection.tar.xz",
    algorithm="md5",
    checksum="d8bb2800fbf3ac88e798da6ae10dc819",
    size="several GB, mostly point clouds (size not in our reference)",
    licence="CC BY-NC-SA 4.0",
)


def is_point_cloud(relative: str) -> bool:
    """True for members in or under an ``xyz`` folder (paths relative to the category): never extracted.

    >>> (
    ...     is_point_cloud("train/good/xyz/000.tiff"),
    ...     is_point_cloud("train/good/xyz"),
    ...     is_point_cloud("train/good/rgb/000.png"),
    ... )
    (True, True, False)
    """
    return "xyz" in relative.split("/")


def to_layout(root: Path, staging: Path) -> None:
    """Move ``rgb/`` images and ``gt/`` masks of the category at ``root`` into ``staging`` in MVTec AD layout."""
    for split in ("train", "validation"):
        move_files(root / split / GOOD / "rgb", staging / split / GOOD)
    for folder in visible_folders(root / "test"):
        for image in move_files(folder / "rgb", staging / "test" / folder.name):
            mask = folder / "gt" / image.name
            # A defective image without gt/ is left for layout validation to report.
            if folder.name != GOOD and mask.is_file():
                write_union_mask([mask], staging / "ground_truth" / folder.name / f"{image.stem}{MASK_SUFFIX}.png")


DATASET = Dataset(source="mvtec_3d", archive=ARCHIVE, categories=CATEGORIES, to_layout=to_layout, skip=is_point_cloud)
SOURCE = archive_source(DATASET)
