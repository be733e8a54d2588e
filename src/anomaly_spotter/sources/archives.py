"""Whole-dataset archives: getting one (checked, once) and turning one category of it into MVTec AD layout.

The downloaded sources (``mvtec`` with its whole archive, ``mvtec_loco``, ``mvtec_3d``,
``mvtec_ad2``, ``visa``) share this machinery; each of their modules only states its
:class:`DatasetArchive` and a ``to_layout`` function that knows its native layout.

* :func:`obtain_archive` returns a verified archive: ``data.archive`` when set (a file the user
  already has; no network), else a download into ``data.cache_dir`` (resume, retries and the
  checksum, via :func:`anomaly_spotter.sources.download.download`) that the next category reuses.
  ``data.mirror`` replaces the official base URL. Hashing a multi-GB file takes a while and the
  fetch stage runs once per category, so a successful check is remembered in the cache folder
  for that file's path, size and modification time.
* :func:`extract_category` unpacks only the category's members (plus files the dataset keeps
  beside its categories, such as VisA's ``split_csv/1cls.csv``) with
  :func:`anomaly_spotter.sources.download.safe_extract`, lets ``to_layout`` rearrange them into
  ``train/``, ``test/``, ``ground_truth/`` (and ``validation/`` where the dataset has an official
  normal validation split), validates the result with :mod:`anomaly_spotter.dataset.layout` and swaps it
  in. Everything happens in a staging folder beside ``dest``: a failure leaves ``dest`` as it was.

Example:
    >>> spec = DatasetArchive(
    ...     "Example", "https://example.org/share/", "v1/example.tar.xz", "sha256", "ab" * 32, "1 GB", "CC BY 4.0"
    ... )
    >>> spec.name, spec.url("https://mirror.example.org/x/")
    ('example.tar.xz', 'https://mirror.example.org/x/v1/example.tar.xz')
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from anomaly_spotter.dataset.images import encode_png, read_mask
from anomaly_spotter.dataset.layout import TOP_LEVEL, is_ignored, validate_category
from anomaly_spotter.errors import DataError, FetchError, UserError, did_you_mean
from anomaly_spotter.fileio import staging_dir, write_bytes, write_json
from anomaly_spotter.sources.download import download, file_digest, safe_extract
from anomaly_spotter.sources.source import Source

if TYPE_CHECKING:
    from anomaly_spotter.config import DataConfig


@dataclass(frozen=True)
class DatasetArchive:
    """One published archive: where it lives, its checksum and what the user should know about it."""

    dataset: str  # the dataset's name in messages, e.g. "MVTec LOCO AD"
    base_url: str  # the share; data.mirror replaces it
    path: str  # under base_url; its last part is the file name
    algorithm: str  # "sha256", or "md5" where that is all the dataset publishes
    checksum: str  # hex digest
    size: str  # approximate download size, for messages
    licence: str

    @property
    def name(self) -> str:
        """The archive's file name (in the cache folder too)."""
        return self.path.rsplit("/", 1)[-1]

    def url(self, mirror: str | None = None) -> str:
        """Download URL; ``mirror`` replaces the official base URL."""
        return f"{mirror.rstrip('/')}/{self.path}" if mirror else self.base_url + self.path


def _verified_marker(path: Path, cache_dir: Path) -> Path:
    key = hashlib.sha256(str(path.resolve()).encode("utf-8")).hexdigest()[:16]
    return cache_dir / f".{path.name}.{key}.checksum-ok"


def _stamp(path: Path, spec: DatasetArchive) -> dict[str, object]:
    st = path.stat()
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns, spec.algorithm: spec.checksum}


def verify_archive(
    path: str | os.PathLike[str], spec: DatasetArchive, *, cache_dir: str | os.PathLike[str], progress: bool = True
) -> None:
    """Check ``path`` against ``spec``'s published checksum, or raise :class:`FetchError`.

    A success is remembered in ``cache_dir`` (see the module docstring); the user's file is
    never deleted on a mismatch.
    """
    path, cache_dir = Path(path), Path(cache_dir)
    marker = _verified_marker(path, cache_dir)
    stamp = _stamp(path, spec)
    try:
        if json.loads(marker.read_text(encoding="utf-8")) == stamp:
            return
    except (OSError, ValueError):
        pass  # no (readable) record: hash it
    actual = file_digest(path, spec.algorithm, progress=progress)
    if actual != spec.checksum:
        label = spec.algorithm.upper().replace("SHA", "SHA-")
        raise FetchError(
            f"{path}: {label} is {actual} but the published {spec.dataset} archive {spec.name} has "
            f"{spec.checksum}; the file is incomplete, damaged or another version. Download {spec.name} again "
            f"(or delete it from {cache_dir} to let the "
            f"fetch stage download it), or point data.archive at a good copy"
        )
    write_json(marker, stamp)


def download_with_advice(
    url: str,
    path: Path,
    *,
    what: str,
    share: str,
    progress: bool,
    expected_sha256: str | None = None,
    expected_md5: str | None = None,
) -> Path:
    """:func:`anomaly_spotter.sources.download.download`, whose errors also say how to fetch without that server."""
    try:
        return download(url, path, progress=progress, expected_sha256=expected_sha256, expected_md5=expected_md5)
    except FetchError as exc:
        raise FetchError(
            f"{exc}\nTo fetch without this server, download {what} yourself and set data.archive to it, "
            f"or set data.mirror to a copy of the {share} share"
        ) from exc


def obtain_archive(
    spec: DatasetArchive,
    *,
    archive: str | os.PathLike[str] | None,
    mirror: str | None,
    cache_dir: str | os.PathLike[str],
    progress: bool = True,
) -> tuple[Path, str]:
    """The verified archive of ``spec`` and where it came from (a path or URL, for messages).

    ``archive`` (``data.archive``) is used as it is, without network access; otherwise the
    archive is downloaded once into ``cache_dir``.
    """
    cache_dir = Path(cache_dir)
    if archive is not None:
        path = Path(archive).expanduser()
        if not path.is_file():
            raise FetchError(
                f"{path}: archive not found (data.archive); check the path, or set data.archive to '' to download"
            )
        verify_archive(path, spec, cache_dir=cache_dir, progress=progress)
        return path, str(path)
    url = spec.url(mirror)
    path = cache_dir / spec.name
    if not path.is_file():
        md5 = spec.algorithm == "md5"  # MVTec 3D-AD publishes only an MD5
        download_with_advice(
            url,
            path,
            what=f"{spec.name} ({spec.size})",
            share=spec.dataset,
            progress=progress,
            expected_sha256=None if md5 else spec.checksum,
            expected_md5=spec.checksum if md5 else None,
        )
        write_json(_verified_marker(path, cache_dir), _stamp(path, spec))  # just checked by download()
    verify_archive(path, spec, cache_dir=cache_dir, progress=progress)
    return path, url


class _Selection:
    """Which archive members :func:`extract_category` unpacks, and where the category was found.

    The category folder sits at the archive root or one level down (``mvtec_loco_anomaly_detection/
    pushpins/``); the first matching member fixes which. ``extras`` are files kept beside the
    categories (matched at the same two depths, since they may come before the category).
    """

    def __init__(
        self, category: str, extras: Iterable[str], skip: Callable[[str], bool] | None, reserved: Iterable[str]
    ) -> None:
        self.category = category
        self.extras = tuple(extras)
        self.skip = skip
        self.reserved = frozenset(reserved)
        self.prefix: str | None = None
        self.found_extras: dict[str, str] = {}

    def __call__(self, name: str) -> bool:
        for extra in self.extras:
            if name == extra or (name.endswith("/" + extra) and name.count("/") == extra.count("/") + 1):
                self.found_extras[extra] = name
                return True
        if self.prefix is None:
            parts = name.split("/")
            if parts[0] == self.category:
                self.prefix = self.category
            elif len(parts) > 1 and parts[1] == self.category and parts[0] not in self.reserved:
                self.prefix = f"{parts[0]}/{self.category}"
            else:
                return False
        if name == self.prefix:
            return True
        if not name.startswith(self.prefix + "/"):
            return False
        return self.skip is None or not self.skip(name[len(self.prefix) + 1 :])

    def finished(self, name: str) -> bool:
        """True once ``name`` lies past the category's folder and every extra is found: reading can stop."""
        if self.prefix is None or name == self.prefix or name.startswith(self.prefix + "/"):
            return False
        return len(self.found_extras) == len(self.extras)


def move_layout_folders(root: Path, staging: Path) -> None:
    """``to_layout`` for a category that is in MVTec AD layout already: keep only its layout folders.

    Readme and licence files beside them are not images (validation would refuse them).
    """
    for name in TOP_LEVEL:
        if (root / name).exists():
            os.replace(root / name, staging / name)


def extract_category(
    archive: Path,
    category: str,
    dest: str | os.PathLike[str],
    *,
    source: str,
    to_layout: Callable[[Path, Path], None],
    min_train_images: int,
    missing_hint: str,
    extras: Iterable[str] = (),
    skip: Callable[[str], bool] | None = None,
) -> None:
    """Extract ``category`` from ``archive`` and write it to ``dest`` in MVTec AD layout, validated, all or nothing.

    ``to_layout(category_root, staging)`` moves or writes the extracted files into ``staging``
    (the future ``dest``); the extracted ``extras`` lie at ``category_root.parent / extra``.
    ``skip`` receives member paths relative to the category folder and leaves out what the
    reader never needs (3D-AD's point clouds), so they are not even written to disk.
    ``missing_hint`` says which archive to use when the category is not in this one; ``source``
    names the archive or URL in validation errors.
    """
    dest = Path(dest)
    extras = tuple(extras)
    selection = _Selection(category, extras, skip, reserved=TOP_LEVEL)
    with staging_dir(dest) as staging:
        extracted = staging / ".extract"  # inside the staging folder, so every failure removes it too
        safe_extract(archive, extracted, select=selection, stop=selection.finished)
        if selection.prefix is None:
            raise FetchError(f"{archive}: holds no '{category}/' folder; {missing_hint}")
        missing = [extra for extra in extras if extra not in selection.found_extras]
        if missing:
            raise FetchError(f"{archive}: holds no {', '.join(missing)}; {missing_hint}")
        root = extracted / selection.prefix
        # Extras sit beside the category folder: where the reader looks for them.
        for extra, name in selection.found_extras.items():
            target = root.parent / extra
            if (extracted / name) != target:
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(extracted / name, target)
        to_layout(root, staging)
        shutil.rmtree(extracted)
        try:
            validate_category(staging, min_train_images=min_train_images)
        except DataError as exc:
            # The staging path means nothing to the user; name the source instead.
            raise DataError(exc.problems, root=f"{category} from {source}") from None


@dataclass(frozen=True)
class Dataset:
    """A benchmark published as one archive, and how to read one category of it (see :func:`extract_category`)."""

    source: str  # its data.source name
    archive: DatasetArchive
    categories: tuple[str, ...]
    to_layout: Callable[[Path, Path], None]
    extras: tuple[str, ...] = ()
    skip: Callable[[str], bool] | None = None


def fetch_dataset_category(
    dataset: Dataset,
    category: str,
    dest: str | os.PathLike[str],
    *,
    archive: str | os.PathLike[str] | None,
    mirror: str | None,
    cache_dir: str | os.PathLike[str],
    min_train_images: int,
    progress: bool = True,
) -> None:
    """Write ``category`` of ``dataset`` to ``dest`` in MVTec AD layout: :func:`obtain_archive`, then
    :func:`extract_category`.

    Raises :class:`UserError` for an unknown category (before any download),
    :class:`FetchError` for download, checksum and archive problems and :class:`DataError`
    when the category's files do not make a valid category.
    """
    if category not in dataset.categories:
        raise UserError(
            f"data.categories: {category!r} is not a {dataset.source} "
            f"category{did_you_mean(category, dataset.categories)}; "
            f"valid: {', '.join(dataset.categories)}"
        )
    spec = dataset.archive
    path, source = obtain_archive(spec, archive=archive, mirror=mirror, cache_dir=cache_dir, progress=progress)
    extract_category(
        path,
        category,
        dest,
        source=source,
        to_layout=dataset.to_layout,
        min_train_images=min_train_images,
        missing_hint=f"data.archive must be the whole {spec.dataset} archive ({spec.name})",
        extras=dataset.extras,
        skip=dataset.skip,
    )


def write_union_mask(masks: Iterable[Path], target: Path) -> None:
    """Write the union of ``masks`` (each pixel defective when its value is > 0) as a 0/255 PNG.

    Native masks may hold a value per defect type (LOCO, VisA) or one file per region (LOCO);
    the MVTec AD layout wants one binary mask per image.
    """
    union: np.ndarray | None = None
    for mask in masks:
        values = read_mask(mask)
        if union is not None and values.shape != union.shape:
            raise DataError(
                [
                    f"{mask}: mask is {values.shape[0]}x{values.shape[1]} but the other masks of its image are "
                    f"{union.shape[0]}x{union.shape[1]}; the archive is damaged or not the expected one, "
                    "download it again"
                ]
            )
        union = values if union is None else union | values
    if union is None:
        raise ValueError(f"no masks to write to {target}")  # callers pass at least one
    target.parent.mkdir(parents=True, exist_ok=True)
    write_bytes(target, encode_png(union.astype(np.uint8) * 255))


def visible_files(folder: Path) -> list[Path]:
    """The files directly in ``folder`` (sorted; hidden files and OS clutter skipped), none when it is missing."""
    return sorted(p for p in folder.iterdir() if p.is_file() and not is_ignored(p)) if folder.is_dir() else []


def visible_folders(folder: Path) -> list[Path]:
    """The sub-folders of ``folder`` (sorted; hidden ones skipped), none when it is missing."""
    return sorted(p for p in folder.iterdir() if p.is_dir() and not is_ignored(p)) if folder.is_dir() else []


def move_files(source: Path, target: Path) -> list[Path]:
    """Move the files of ``source`` into ``target`` (created when there are any); returns where they went.

    Extracted files are moved, not copied: they lie on the same file system, and a copy of a
    multi-GB category would double the disk space the fetch needs.
    """
    moved = []
    for file in visible_files(source):
        target.mkdir(parents=True, exist_ok=True)
        os.replace(file, target / file.name)
        moved.append(target / file.name)
    return moved


def archive_source(dataset: Dataset) -> Source:
    """The :class:`~anomaly_spotter.sources.source.Source` of a dataset published as one archive."""

    def fetch(category: str, dest: Path, config: DataConfig) -> None:
        fetch_dataset_category(
            dataset,
            category,
            dest,
            archive=Path(config.archive) if config.archive else None,
            mirror=config.mirror or None,
            cache_dir=Path(config.cache_dir),
            min_train_images=config.min_train_images,
        )

    return Source(dataset.source, dataset.categories, fetch)
