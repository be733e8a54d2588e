"""MVTec AD 2 (``data.source: mvtec_ad2``): its public test split in MVTec AD layout.

MVTec AD 2 (Heckler-Kram et al., 2025; CC BY-NC-SA 4.0)::

    <category>/train/good/                           high-resolution images
    <category>/validation/good/                      the official normal validation split
    <category>/test_public/{good,bad}/
    <category>/test_public/ground_truth/bad/<name>_mask.png
    <category>/test_private/, test_private_mixed/    no ground truth: scored by the benchmark server only

``test_public`` is the split evaluated here (``test/good``, ``test/bad`` and
``ground_truth/bad``); the private splits are never extracted, so they can never be evaluated
locally by mistake. Its paper reports AU-PRO at FPR 0.05: ``-S evaluate.pro_fpr_limit=0.05``.
"""

from __future__ import annotations

from pathlib import Path

from anomaly_spotter.dataset.layout import GOOD
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
CATEGORIES: tuple[str, ...] = ("can", "fabric", "fruit_jelly", "rice", "sheet_metal", "vial", "wallplugs", "walnuts")

ARCHIVE = DatasetArchive(
    dataset="MVTec AD 2",
    base_url="https://www.mydrive.ch/shares/150997/701c90d3aea6588f404936e32a674602/download/",
    path="466712769-1743429042/mvtec_ad_2.tar.gz",
    algorithm="sha256",
    checksum="c0ded99ef32bfc8e352d52beb44515e5b292b8598cb963aadfa91ca0763505e4",
    size="tens of GB of high-resolution images (size not in our reference)",
    licence="CC BY-NC-SA 4.0",
)

PUBLIC_TEST = "test_public"
GROUND_TRUTH = "ground_truth"


def is_private(relative: str) -> bool:
    """True for members of the private test splits (paths relative to the category): never extracted.

    >>> (
    ...     is_private("test_private/000_regular.png"),
    ...     is_private("test_private_mixed"),
    ...     is_private("test_public/bad/0.png"),
    ... )
    (True, True, False)
    """
    return relative.split("/")[0].startswith("test_private")


def to_layout(root: Path, staging: Path) -> None:
    """Move the train, validation and public test images (masks binarised) of ``root`` into ``staging``."""
    for split in ("train", "validation"):
        move_files(root / split / GOOD, staging / split / GOOD)
    public = root / PUBLIC_TEST
    for folder in visible_folders(public):
        if folder.name != GROUND_TRUTH:
            move_files(folder, staging / "test" / folder.name)
    for folder in visible_folders(public / GROUND_TRUTH):
        for mask in visible_files(folder):
            write_union_mask([mask], staging / "ground_truth" / folder.name / f"{mask.stem}.png")


DATASET = Dataset(source="mvtec_ad2", archive=ARCHIVE, categories=CATEGORIES, to_layout=to_layout, skip=is_private)
SOURCE = archive_source(DATASET)
