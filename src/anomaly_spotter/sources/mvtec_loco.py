"""MVTec LOCO AD (``data.source: mvtec_loco``): logical and structural anomalies in MVTec AD layout.

MVTec LOCO AD (Bergmann et al., IJCV 2022; CC BY-NC-SA 4.0)::

    <category>/train/good/NNN.png
    <category>/validation/good/NNN.png                 the official normal validation split
    <category>/test/{good,logical_anomalies,structural_anomalies}/NNN.png
    <category>/ground_truth/<family>/NNN/MMM.png       one mask image per defect region
    <category>/defects_config.json                     each defect type's pixel value and saturation

A test image's mask is the union of its mask images (a pixel is defective when > 0 in any of
them), written to ``ground_truth/<family>/NNN_mask.png``. The defect family stays the defect
type (``logical_anomalies`` / ``structural_anomalies``), so ``evaluate`` reports each family's
image AUROC separately (``per_defect_image_auroc``). The per-region masks and
``defects_config.json`` are kept under ``regions/`` for the official sPRO metric
(:mod:`anomaly_spotter.dataset.regions`, :func:`anomaly_spotter.evaluation.metrics.au_spro`).
"""

from __future__ import annotations

import os
from pathlib import Path

from anomaly_spotter.dataset.layout import GOOD, MASK_SUFFIX, REGIONS
from anomaly_spotter.dataset.regions import DEFECTS_CONFIG
from anomaly_spotter.errors import DataError
from anomaly_spotter.sources.archives import (
    Dataset,
    DatasetArchive,
    archive_source,
    move_files,
    visible_files,
    visible_folders,
    write_union_mask,
)

# Its categories (shared/reference/datasets.md).
CATEGORIES: tuple[str, ...] = ("breakfast_box", "juice_bottle", "pushpins", "screw_bag", "splicing_connectors")

ARCHIVE = DatasetArchive(
    dataset="MVTec LOCO AD",
    base_url="https://www.mydrive.ch/shares/48237/1b9106ccdfbb09a0c414bd49fe44a14a/download/",
    path="430647091-1646842701/mvtec_loco_anomaly_detection.tar.xz",
    algorithm="sha256",
    checksum="9e7c84dba550fd2e59d8e9e231c929c45ba737b6b6a6d3814100f54d63aae687",
    size="several GB (size not in our reference)",
    licence="CC BY-NC-SA 4.0",
)


def to_layout(root: Path, staging: Path) -> None:
    """Move the images of ``root`` into ``staging``; masks become one union per image, regions are kept."""
    for split in ("train", "validation"):
        move_files(root / split / GOOD, staging / split / GOOD)
    for folder in visible_folders(root / "test"):
        move_files(folder, staging / "test" / folder.name)
    for family in visible_folders(root / "ground_truth"):
        for image_folder in visible_folders(family):
            masks = visible_files(image_folder)
            if not masks:
                raise DataError(
                    [
                        f"ground_truth/{family.name}/{image_folder.name}/: holds no mask images; "
                        "the archive is damaged, download it again"
                    ]
                )
            write_union_mask(masks, staging / "ground_truth" / family.name / f"{image_folder.name}{MASK_SUFFIX}.png")
            move_files(image_folder, staging / REGIONS / family.name / image_folder.name)
    config = root / DEFECTS_CONFIG
    if not config.is_file():
        raise DataError(
            [
                f"{DEFECTS_CONFIG}: missing beside the category's folders; "
                "the archive is damaged or not LOCO's, download it again"
            ]
        )
    (staging / REGIONS).mkdir(exist_ok=True)
    os.replace(config, staging / REGIONS / DEFECTS_CONFIG)


DATASET = Dataset(source="mvtec_loco", archive=ARCHIVE, categories=CATEGORIES, to_layout=to_layout)
SOURCE = archive_source(DATASET)
