"""The MVTec AD catalogue and fetching one category of it (``data.source: mvtec``).

MVTec AD (Bergmann et al., CVPR 2019) is licensed CC BY-NC-SA 4.0 (non-commercial): the
project downloads it on the user's machine and never ships it. URLs and the checksum come
from the dataset's official share (see ``shared/reference/mvtec_ad.md``); no per-category
checksums are published, so per-category archives are checked by length only and DVC records
the hash of the extracted folder.

A category comes from, in order of preference:

1. ``archive``: an archive on disk, either one category (``bottle.tar.xz``) or the whole
   dataset (``mvtec_anomaly_detection.tar.xz``, checked against its published SHA-256 first);
   no network access at all;
2. ``whole_archive=True``: the whole dataset is downloaded once into ``cache_dir`` (SHA-256
   checked) and each category is read out of it;
3. otherwise the category's own archive, downloaded into ``cache_dir`` (an earlier complete
   download there is reused). ``mirror`` replaces the official base URL of both shares.

Only the category's members are extracted (reading stops after them), into a temporary folder
beside ``dest``; the result is validated with :mod:`anomaly_spotter.dataset.layout` and then swapped in,
so a failure leaves ``dest`` as it was and no temporary folder behind.

Example:
    >>> category_url("pill", mirror="https://mirror.example.org/mvtec/")
    'https://mirror.example.org/mvtec/420938129-1629953099/pill.tar.xz'
    >>> fetch_mvtec_category("bottle", Path("data/raw/bottle"), cache_dir=Path(".cache/downloads"))  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from anomaly_spotter.errors import FetchError, UserError, did_you_mean
from anomaly_spotter.sources.archives import (
    DatasetArchive,
    download_with_advice,
    extract_category,
    move_layout_folders,
    obtain_archive,
)
from anomaly_spotter.sources.source import Source

if TYPE_CHECKING:
    from anomaly_spotter.config import DataConfig

# MVTec AD's 15 categories (shared/reference/mvtec_ad.md).
CATEGORIES: tuple[str, ...] = (
    "bottle",
    "cable",
    "capsule",
    "carpet",
    "grid",
    "hazelnut",
    "leather",
    "metal_nut",
    "pill",
    "screw",
    "tile",
    "toothbrush",
    "transistor",
    "wood",
    "zipper",
)


BASE_URL = "https://www.mydrive.ch/shares/38536/3830184030e49fe74747669442f0f282/download/"
PILL_BASE_URL = (
    "https://www.mydrive.ch/shares/43421/11a215a5749fcfb75e331ddd5f8e43ee/download/"  # pill lives on another share
)

# Path of each archive under its share's base URL.
CATEGORY_PATHS: dict[str, str] = {
    "bottle": "420937370-1629951468/bottle.tar.xz",
    "cable": "420937413-1629951498/cable.tar.xz",
    "capsule": "420937454-1629951595/capsule.tar.xz",
    "carpet": "420937484-1629951672/carpet.tar.xz",
    "grid": "420937487-1629951814/grid.tar.xz",
    "hazelnut": "420937545-1629951845/hazelnut.tar.xz",
    "leather": "420937607-1629951964/leather.tar.xz",
    "metal_nut": "420937637-1629952063/metal_nut.tar.xz",
    "pill": "420938129-1629953099/pill.tar.xz",
    "screw": "420938130-1629953152/screw.tar.xz",
    "tile": "420938133-1629953189/tile.tar.xz",
    "toothbrush": "420938134-1629953256/toothbrush.tar.xz",
    "transistor": "420938166-1629953277/transistor.tar.xz",
    "wood": "420938383-1629953354/wood.tar.xz",
    "zipper": "420938385-1629953449/zipper.tar.xz",
}

WHOLE_ARCHIVE_NAME = "mvtec_anomaly_detection.tar.xz"
WHOLE_ARCHIVE_PATH = f"420938113-1629952094/{WHOLE_ARCHIVE_NAME}"
WHOLE_ARCHIVE = DatasetArchive(
    dataset="MVTec AD",
    base_url=BASE_URL,
    path=WHOLE_ARCHIVE_PATH,
    algorithm="sha256",
    checksum="cf4313b13603bec67abb49ca959488f7eedce2a9f7795ec54446c649ac98cd3d",
    size="about 5 GB",
    licence="CC BY-NC-SA 4.0",
)

LICENSE = WHOLE_ARCHIVE.licence


def check_category_names(names: Iterable[str]) -> None:
    """Raise :class:`UserError` naming every unknown category, the closest valid name and all valid names.

    >>> check_category_names(["bottle", "botle"])  # doctest: +ELLIPSIS, +NORMALIZE_WHITESPACE
    Traceback (most recent call last):
    ...
    anomaly_spotter.errors.UserError: data.categories: unknown MVTec AD category 'botle' (did you mean 'bottle'?);
    valid names: ...
    """
    unknown = []
    for name in names:
        if name not in CATEGORIES:
            unknown.append(f"{name!r}{did_you_mean(name, CATEGORIES)}")
    if unknown:
        plural = "categories" if len(unknown) > 1 else "category"
        raise UserError(
            f"data.categories: unknown MVTec AD {plural} {', '.join(unknown)}; valid names: {', '.join(CATEGORIES)}"
        )


def _url(base: str, path: str, mirror: str | None) -> str:
    return f"{mirror.rstrip('/')}/{path}" if mirror else base + path


def category_url(category: str, mirror: str | None = None) -> str:
    """Download URL of one category's archive; ``mirror`` replaces the base URL of both shares.

    >>> category_url("bottle")
    'https://www.mydrive.ch/shares/38536/3830184030e49fe74747669442f0f282/download/420937370-1629951468/bottle.tar.xz'
    """
    check_category_names([category])
    return _url(PILL_BASE_URL if category == "pill" else BASE_URL, CATEGORY_PATHS[category], mirror)


def whole_archive_url(mirror: str | None = None) -> str:
    """Download URL of the whole-dataset archive (about 5 GB)."""
    return WHOLE_ARCHIVE.url(mirror)


def is_whole_archive(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is named like the whole-dataset archive (which then must match its SHA-256)."""
    return Path(path).name == WHOLE_ARCHIVE_NAME


def _missing_hint(category: str) -> str:
    return f"use the MVTec AD archive of this category ({category}.tar.xz) or the whole {WHOLE_ARCHIVE_NAME}"


def fetch_mvtec_category(
    category: str,
    dest: str | os.PathLike[str],
    *,
    mirror: str | None = None,
    archive: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str],
    min_train_images: int = 1,
    progress: bool = True,
    whole_archive: bool = False,
) -> None:
    """Write MVTec AD ``category`` to ``dest`` in MVTec AD layout, validated, all or nothing.

    See the module docstring for where the data comes from. Raises :class:`UserError` for an
    unknown category, :class:`FetchError` for download, checksum and archive problems and
    :class:`DataError` when the extracted category fails validation.

    >>> fetch_mvtec_category(  # doctest: +SKIP
    ...     "bottle", "data/raw/bottle", archive="bottle.tar.xz", cache_dir=".cache/downloads"
    ... )
    """
    check_category_names([category])
    dest, cache_dir = Path(dest), Path(cache_dir)
    if (archive is not None and is_whole_archive(archive)) or (archive is None and whole_archive):
        path, source = obtain_archive(
            WHOLE_ARCHIVE, archive=archive, mirror=mirror, cache_dir=cache_dir, progress=progress
        )
    elif archive is not None:
        path = Path(archive).expanduser()
        if not path.is_file():
            raise FetchError(
                f"{path}: archive not found (data.archive); check the path, or set data.archive to '' to download"
            )
        source = str(path)
    else:
        source = category_url(category, mirror)
        path = download_with_advice(
            source, cache_dir / f"{category}.tar.xz", what=f"{category}.tar.xz", share="MVTec AD", progress=progress
        )
    extract_category(
        path,
        category,
        dest,
        source=source,
        to_layout=move_layout_folders,
        min_train_images=min_train_images,
        missing_hint=_missing_hint(category),
    )


def _fetch(category: str, dest: Path, config: DataConfig) -> None:
    fetch_mvtec_category(
        category,
        dest,
        mirror=config.mirror or None,
        archive=Path(config.archive) if config.archive else None,
        cache_dir=Path(config.cache_dir),
        min_train_images=config.min_train_images,
    )


SOURCE = Source("mvtec", CATEGORIES, _fetch)
