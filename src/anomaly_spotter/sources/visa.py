"""VisA (``data.source: visa``): its one-class split read into MVTec AD layout.

VisA (Zou et al., ECCV 2022; CC BY 4.0) is one tar of all 12 categories::

    <category>/Data/Images/{Normal,Anomaly}/*.JPG
    <category>/Data/Masks/Anomaly/*.png          values are not 0/255: a pixel is defective when > 0
    split_csv/1cls.csv                           object,split,label,image,mask

``split_csv/1cls.csv`` is the standard one-class split everybody reports on, so it (not the
folders) decides which image goes where: ``train``/``normal`` rows to ``train/good/``,
``test``/``normal`` rows to ``test/good/`` and ``test``/``anomaly`` rows to ``test/bad/`` with
their mask binarised to 0/255 in ``ground_truth/bad/`` (the standard split keeps all anomalies
one class). Images are moved byte for byte (JPEG stays JPEG). Every row of the category is
checked before anything is written: a row naming a missing file, a path outside the category's
folder (``..``, absolute, another category) or an unknown split or label is reported with its
line number, all at once.

Example:
    >>> fetch_category("candle", "data/raw/candle", load_params().data)  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import os
from pathlib import Path, PurePosixPath

from anomaly_spotter.errors import DataError
from anomaly_spotter.sources.archives import Dataset, DatasetArchive, archive_source, write_union_mask

SPLIT_CSV = "split_csv/1cls.csv"
COLUMNS = ("object", "split", "label", "image", "mask")
DEFECT = "bad"  # the folder name of VisA's one anomaly class (as anomalib names it too)

# Its categories (shared/reference/datasets.md).
CATEGORIES: tuple[str, ...] = (
    "candle",
    "capsules",
    "cashew",
    "chewinggum",
    "fryum",
    "macaroni1",
    "macaroni2",
    "pcb1",
    "pcb2",
    "pcb3",
    "pcb4",
    "pipe_fryum",
)

ARCHIVE = DatasetArchive(
    dataset="VisA",
    base_url="https://amazon-visual-anomaly.s3.us-west-2.amazonaws.com/",
    path="VisA_20220922.tar",
    algorithm="sha256",
    checksum="2eb8690c803ab37de0324772964100169ec8ba1fa3f7e94291c9ca673f40f362",
    size="about 1.8 GB",
    licence="CC BY 4.0",
)

# Where each (split, label) row goes in MVTec AD layout.
_TARGETS = {("train", "normal"): "train/good", ("test", "normal"): "test/good", ("test", "anomaly"): f"test/{DEFECT}"}


def _member(dataset_root: Path, category: str, value: str, where: str, problems: list[str]) -> Path | None:
    """The file a CSV cell names, or None after recording why it is unusable."""
    path = PurePosixPath(value.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or not path.parts or path.parts[0] != category:
        problems.append(
            f"{where}: {value!r} is outside the dataset's {category}/ folder; the split file is damaged or not VisA's, "
            f"download the archive again"
        )
        return None
    file = dataset_root.joinpath(*path.parts)
    if not file.is_file():
        problems.append(
            f"{where}: {value!r} is not in the archive; the archive is incomplete or another version, download it again"
        )
        return None
    return file


def to_layout(root: Path, staging: Path) -> None:
    """Write the category extracted at ``root`` into ``staging`` in MVTec AD layout, per :data:`SPLIT_CSV`."""
    category, dataset_root = root.name, root.parent
    csv_path = dataset_root / SPLIT_CSV
    problems: list[str] = []
    moves: list[tuple[Path, str, Path | None]] = []  # (image, target folder, mask)
    seen: set[Path] = set()
    with open(csv_path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or ())]
        if missing:
            raise DataError(
                [
                    f"{SPLIT_CSV}: no column {', '.join(missing)} (expected {','.join(COLUMNS)}); "
                    "the archive is not VisA's"
                ]
            )
        for line, row in enumerate(reader, start=2):
            if row["object"] != category:
                continue
            where = f"{SPLIT_CSV} line {line}"
            target = _TARGETS.get((row["split"], row["label"]))
            if target is None:
                problems.append(
                    f"{where}: split {row['split']!r} with label {row['label']!r} is not part of the one-class split"
                )
                continue
            image = _member(dataset_root, category, row["image"], where, problems)
            mask = None
            if target.endswith(DEFECT):
                if not row["mask"]:
                    problems.append(f"{where}: anomalous image {row['image']!r} has no mask")
                    continue
                mask = _member(dataset_root, category, row["mask"], where, problems)
            if image is not None and image in seen:
                problems.append(
                    f"{where}: {row['image']!r} is listed twice in the split; the split file is damaged, download again"
                )
            elif image is not None and (mask is not None or not target.endswith(DEFECT)):
                seen.add(image)
                moves.append((image, target, mask))
    if not moves and not problems:
        problems.append(f"{SPLIT_CSV}: no rows for {category!r}; the archive is not the expected VisA version")
    if problems:
        raise DataError(problems, root=f"{category} of VisA")
    for image, target, mask in moves:
        dest = staging / target / image.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(image, dest)
        if mask is not None:
            write_union_mask([mask], staging / "ground_truth" / DEFECT / f"{image.stem}_mask.png")


DATASET = Dataset(source="visa", archive=ARCHIVE, categories=CATEGORIES, to_layout=to_layout, extras=(SPLIT_CSV,))
SOURCE = archive_source(DATASET)
