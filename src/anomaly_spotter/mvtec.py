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
beside ``dest``; the result is validated with :mod:`anomaly_spotter.layout` and then swapped in,
so a failure leaves ``dest`` as it was and no temporary folder behind.

Example:
    >>> category_url("pill", mirror="https://mirror.example.org/mvtec/")
    'https://mirror.example.org/mvtec/420938129-1629953099/pill.tar.xz'
    >>> fetch_mvtec_category("bottle", Path("data/raw/bottle"), cache_dir=Path(".cache/downloads"))  # doctest: +SKIP
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path

from anomaly_spotter.categories import MVTEC_CATEGORIES
from anomaly_spotter.download import download, safe_extract, sha256_file
from anomaly_spotter.errors import DataError, FetchError, UserError
from anomaly_spotter.fileio import staging_dir, write_json
from anomaly_spotter.layout import TOP_LEVEL, validate_category


BASE_URL = "https://www.mydrive.ch/shares/38536/3830184030e49fe74747669442f0f282/download/"
PILL_BASE_URL = "https://www.mydrive.ch/shares/43421/11a215a5749fcfb75e331ddd5f8e43ee/download/"  # pill lives on another share

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
WHOLE_ARCHIVE_SHA256 = "cf4313b13603bec67abb49ca959488f7eedce2a9f7795ec54446c649ac98cd3d"  # ~5 GB

LICENSE = "CC BY-NC-SA 4.0"


def check_category_names(names: Iterable[str]) -> None:
    """Raise :class:`UserError` naming every unknown category, the closest valid name and all valid names.

    >>> check_category_names(["bottle", "botle"])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    anomaly_spotter.errors.UserError: data.categories: unknown MVTec AD category 'botle' (did you mean 'bottle'?); valid names: ...
    """
    unknown = []
    for name in names:
        if name in MVTEC_CATEGORIES:
            continue
        close = difflib.get_close_matches(str(name).lower(), MVTEC_CATEGORIES, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        unknown.append(f"{name!r}{hint}")
    if unknown:
        plural = "categories" if len(unknown) > 1 else "category"
        raise UserError(f"data.categories: unknown MVTec AD {plural} {', '.join(unknown)}; valid names: {', '.join(MVTEC_CATEGORIES)}")


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
    return _url(BASE_URL, WHOLE_ARCHIVE_PATH, mirror)


def is_whole_archive(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is named like the whole-dataset archive (which then must match its SHA-256)."""
    return Path(path).name == WHOLE_ARCHIVE_NAME


def _verified_marker(path: Path, cache_dir: Path) -> Path:
    key = hashlib.sha256(str(path.resolve()).encode("utf-8")).hexdigest()[:16]
    return cache_dir / f".{path.name}.{key}.sha256-ok"


def _stamp(path: Path) -> dict[str, object]:
    st = path.stat()
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": WHOLE_ARCHIVE_SHA256}


def verify_whole_archive(path: str | os.PathLike[str], *, cache_dir: str | os.PathLike[str], progress: bool = True) -> None:
    """Check the whole-dataset archive against its published SHA-256, or raise :class:`FetchError`.

    Hashing 5 GB takes a while and the fetch stage runs once per category, so a success is
    remembered in ``cache_dir`` for this file's path, size and modification time.
    """
    path, cache_dir = Path(path), Path(cache_dir)
    marker = _verified_marker(path, cache_dir)
    stamp = _stamp(path)
    try:
        if json.loads(marker.read_text(encoding="utf-8")) == stamp:
            return
    except (OSError, ValueError):
        pass  # no (readable) record: hash it
    actual = sha256_file(path, progress=progress)
    if actual != WHOLE_ARCHIVE_SHA256:
        raise FetchError(
            f"{path}: SHA-256 is {actual} but the published MVTec AD archive has {WHOLE_ARCHIVE_SHA256}; the file is "
            f"incomplete, damaged or another version. Download {WHOLE_ARCHIVE_NAME} again, or use per-category archives"
        )
    write_json(marker, stamp)


def _download(url: str, path: Path, *, expected_sha256: str | None, progress: bool) -> Path:
    try:
        return download(url, path, expected_sha256=expected_sha256, progress=progress)
    except FetchError as exc:
        raise FetchError(
            f"{exc}\nTo fetch without this server, download the archive yourself and set data.archive to it, "
            f"or set data.mirror to a copy of the MVTec AD share"
        ) from exc


def _category_selector(category: str) -> tuple[list[str], Callable[[str], bool]]:
    """A ``select`` function for :func:`safe_extract` and the prefix it found.

    The category folder sits at the archive root in per-category archives and possibly one
    level down in the whole-dataset one; the first matching member fixes where.
    """
    found: list[str] = []

    def select(name: str) -> bool:
        if not found:
            parts = name.split("/")
            if parts[0] == category:
                found.append(category)
            elif len(parts) > 1 and parts[1] == category and parts[0] not in TOP_LEVEL:
                found.append(f"{parts[0]}/{category}")
            else:
                return False
        return name == found[0] or name.startswith(found[0] + "/")

    return found, select


def _extract_category(archive: Path, category: str, dest: Path, source: str, min_train_images: int) -> None:
    found, select = _category_selector(category)
    with staging_dir(dest) as staging:
        extracted = staging / ".extract"  # inside the staging folder, so every failure removes it too
        safe_extract(archive, extracted, select=select, stop_after_selection=True)
        if not found:
            raise FetchError(
                f"{archive}: holds no '{category}/' folder; use the MVTec AD archive of this category "
                f"({category}.tar.xz) or the whole {WHOLE_ARCHIVE_NAME}"
            )
        root = extracted / found[0]
        # Only the layout's folders are kept: readme/licence files beside them are not images.
        for name in TOP_LEVEL:
            if (root / name).exists():
                os.replace(root / name, staging / name)
        shutil.rmtree(extracted)
        try:
            validate_category(staging, min_train_images=min_train_images)
        except DataError as exc:
            # The staging path means nothing to the user; name the source instead.
            raise DataError(exc.problems, root=f"{category} from {source}") from None


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

    >>> fetch_mvtec_category("bottle", "data/raw/bottle", archive="bottle.tar.xz", cache_dir=".cache/downloads")  # doctest: +SKIP
    """
    check_category_names([category])
    dest, cache_dir = Path(dest), Path(cache_dir)
    if archive is not None:
        path = Path(archive).expanduser()
        if not path.is_file():
            raise FetchError(f"{path}: archive not found (data.archive); check the path, or set data.archive to '' to download")
        if is_whole_archive(path):
            verify_whole_archive(path, cache_dir=cache_dir, progress=progress)
        source = str(path)
    elif whole_archive:
        source = whole_archive_url(mirror)
        path = cache_dir / WHOLE_ARCHIVE_NAME
        if not path.is_file():
            _download(source, path, expected_sha256=WHOLE_ARCHIVE_SHA256, progress=progress)
            write_json(_verified_marker(path, cache_dir), _stamp(path))  # just checked by download()
        verify_whole_archive(path, cache_dir=cache_dir, progress=progress)
    else:
        source = category_url(category, mirror)
        path = _download(source, cache_dir / f"{category}.tar.xz", expected_sha256=None, progress=progress)
    _extract_category(path, category, dest, source, min_train_images)
