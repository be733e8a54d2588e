"""Robust HTTP downloads and safe archive extraction (standard library plus tqdm).

:func:`download` streams a URL to a file with a progress bar. It

* retries connection errors, timeouts, HTTP 5xx/408/429 with exponential backoff (a
  ``Retry-After`` header is honoured), and gives a retry budget back whenever an attempt made
  progress, so a flaky link can still finish a multi-GB file;
* resumes a dropped transfer with an HTTP ``Range`` request (``If-Range`` guards against the file
  changing on the server meanwhile), and starts over when the server answers 200 instead of 206;
* writes to ``<dest>.part`` beside the target and renames it to ``dest`` only when its length
  matches what the server announced and, when given, its checksum (SHA-256, or MD5 where that
  is all a dataset publishes) matches;
* refuses an HTML page served in place of the file (an expired link, a login or consent page).

A ``.part`` left by a network failure (or Ctrl-C) is kept so the next call resumes it; it is
deleted on a checksum mismatch, an HTML page or an HTTP error such as 404.

:func:`safe_extract` unpacks .tar, .tar.gz/.tgz, .tar.bz2, .tar.xz and .zip archives after
checking every member itself (not only through ``tarfile``'s ``filter=``): absolute paths,
``..`` components, links that lead out of the destination and device/FIFO members are refused
with a :class:`FetchError` naming the member. Files are written by this module (never by
``tarfile.extract``), so owners, permissions and timestamps from the archive are not applied.

Example:
    >>> path = download("https://example.org/bottle.tar.xz", Path(".cache/downloads/bottle.tar.xz"))  # doctest: +SKIP
    >>> safe_extract(path, Path("/tmp/bottle_extracted"))  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.client
import lzma
import os
import re
import shutil
import ssl
import stat
import sys
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from email.message import Message
from pathlib import Path, PurePosixPath
from typing import IO

from tqdm import tqdm

from anomaly_spotter import __version__
from anomaly_spotter.errors import FetchError
from anomaly_spotter.fileio import staging_dir

CHUNK_BYTES = 1 << 20
PART_SUFFIX = ".part"
MAX_BACKOFF_S = 60.0
USER_AGENT = f"anomaly-spotter/{__version__} (python-urllib)"
RETRY_STATUS = frozenset({408, 429})  # plus every 5xx
HTML_TYPES = ("text/html", "application/xhtml+xml")
HTML_STARTS = (b"<!doctype html", b"<html")


# --------------------------------------------------------------------------------------------
# Downloading
# --------------------------------------------------------------------------------------------


def partial_path(dest: str | os.PathLike[str]) -> Path:
    """Where :func:`download` keeps the incomplete file for ``dest`` (``<dest>.part``)."""
    dest = Path(dest)
    return dest.with_name(dest.name + PART_SUFFIX)


# The checksum algorithms datasets publish (MVTec 3D-AD only an MD5), by name.
CHECKSUM_ALGORITHMS = ("sha256", "md5")


def sha256_file(path: str | os.PathLike[str], *, progress: bool = False) -> str:
    """Hex SHA-256 of a file, read in chunks (optionally with a progress bar for big archives).

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "x"
    >>> _ = p.write_bytes(b"abc")
    >>> sha256_file(p)[:16]
    'ba7816bf8f01cfea'
    """
    return file_digest(path, "sha256", progress=progress)


def file_digest(path: str | os.PathLike[str], algorithm: str, *, progress: bool = False) -> str:
    """Hex digest of a file with ``algorithm`` (one of :data:`CHECKSUM_ALGORITHMS`), read in chunks.

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "x"
    >>> _ = p.write_bytes(b"abc")
    >>> file_digest(p, "md5")
    '900150983cd24fb0d6963f7d28e17f72'
    """
    if algorithm not in CHECKSUM_ALGORITHMS:
        raise ValueError(f"unknown checksum algorithm {algorithm!r}; use one of {', '.join(CHECKSUM_ALGORITHMS)}")
    path = Path(path)
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle, _bar(path.stat().st_size, 0, f"checking {path.name}", progress) as bar:
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()


def _bar(total: int | None, initial: int, desc: str, enabled: bool) -> tqdm:
    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        disable=not enabled,
        leave=False,
    )


def _connection_class(base: type[http.client.HTTPConnection], read_timeout: float) -> type[http.client.HTTPConnection]:
    """``base`` whose socket switches from the connect timeout to ``read_timeout`` once connected.

    urllib has one timeout for everything; a short connect timeout finds a dead host quickly,
    while a slow mirror may legitimately pause longer between chunks.
    """

    class Connection(base):  # type: ignore[valid-type, misc]
        def connect(self) -> None:
            super().connect()  # TCP connect (and TLS handshake) under the connect timeout
            self.sock.settimeout(read_timeout)

    return Connection


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, read_timeout: float) -> None:
        super().__init__()
        self._connection = _connection_class(http.client.HTTPConnection, read_timeout)

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(self._connection, req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, read_timeout: float) -> None:
        super().__init__()
        self._connection = _connection_class(http.client.HTTPSConnection, read_timeout)

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(self._connection, req, context=self._context)  # type: ignore[attr-defined]


class _TransientError(Exception):
    """A transient failure: try again (after ``retry_after`` seconds when the server said so)."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


def _retry_after(headers: Message | None) -> float | None:
    """Seconds a 429/503 answer asked us to wait (only the delay-seconds form; capped)."""
    value = headers.get("Retry-After") if headers is not None else None
    return min(float(value), MAX_BACKOFF_S) if value and value.strip().isdigit() else None


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """(first byte, total size) from ``Content-Range: bytes 100-199/200`` or ``bytes */200``."""
    match = re.fullmatch(r"\s*bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)\s*", value or "")
    if not match:
        return None, None
    start, total = match.groups()
    return (int(start) if start else None), (int(total) if total and total != "*" else None)


def _html_error(url: str, detail: str) -> FetchError:
    return FetchError(
        f"{url}: the server sent a web page ({detail}) instead of the file; the link may have moved, expired "
        f"or need a login. Open the URL in a browser to see the page, download the file by hand and use the local copy"
    )


@dataclass
class _Transfer:
    """State of one :func:`download` call shared by its attempts."""

    url: str
    part: Path
    opener: urllib.request.OpenerDirector
    connect_timeout: float
    progress: bool
    validator: str | None = None  # ETag or Last-Modified of the first response, for If-Range

    def size(self) -> int:
        return self.part.stat().st_size if self.part.exists() else 0

    def attempt(self) -> None:
        """One request; returns when ``part`` is complete, raises :class:`_TransientError` or :class:`FetchError`."""
        offset = self.size()
        headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}  # identity: bytes as stored
        if offset:
            headers["Range"] = f"bytes={offset}-"
            if self.validator:
                headers["If-Range"] = self.validator
        try:
            response = self.opener.open(urllib.request.Request(self.url, headers=headers), timeout=self.connect_timeout)
        except urllib.error.HTTPError as exc:
            with exc:
                self._http_error(exc, offset)
            return  # a 416 for a file that is already complete
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, ssl.SSLCertVerificationError):
                raise FetchError(
                    f"{self.url}: the server's TLS certificate is not trusted ({exc.reason}); check the URL"
                ) from exc
            raise _TransientError(f"cannot connect ({exc.reason})") from exc
        except (http.client.HTTPException, OSError) as exc:  # timeouts, resets before the headers
            raise _TransientError(f"connection failed ({exc!r})") from exc
        with response:
            self._receive(response, offset)

    def _http_error(self, exc: urllib.error.HTTPError, offset: int) -> None:
        if exc.code == 416 and offset:
            _, total = _content_range(exc.headers.get("Content-Range"))
            if total == offset:
                return  # the previous attempt had in fact received everything
            self.part.unlink(missing_ok=True)
            raise _TransientError("the server cannot resume the partial file; starting over")
        if exc.code >= 500 or exc.code in RETRY_STATUS:
            raise _TransientError(f"HTTP {exc.code} {exc.reason}", _retry_after(exc.headers))
        self.part.unlink(missing_ok=True)
        raise FetchError(
            f"{self.url}: the server answered HTTP {exc.code} {exc.reason}; check the URL (or mirror) and try again"
        )

    def _receive(self, response: http.client.HTTPResponse, offset: int) -> None:
        content_type = (response.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if content_type in HTML_TYPES:
            self.part.unlink(missing_ok=True)
            raise _html_error(self.url, f"Content-Type: {content_type}")
        if self.validator is None:
            etag = response.headers.get("ETag")
            # A weak ETag is not allowed in If-Range; Last-Modified is.
            self.validator = etag if etag and not etag.startswith("W/") else response.headers.get("Last-Modified")
        if response.status == 206:
            start, total = _content_range(response.headers.get("Content-Range"))
            if start != offset:
                self.part.unlink(missing_ok=True)
                raise _TransientError(f"the server resumed at byte {start} instead of {offset}; starting over")
            mode = "ab"
        else:  # 200: the whole file (a server that ignores Range answers this too), so start over
            offset = 0
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            mode = "wb"
        with (
            open(self.part, mode) as out,
            _bar(total, offset, self.part.name[: -len(PART_SUFFIX)], self.progress) as bar,
        ):
            first = mode == "wb"
            while True:
                try:
                    chunk = response.read(CHUNK_BYTES)
                except (http.client.HTTPException, OSError) as exc:
                    raise _TransientError(f"connection dropped ({exc!r})") from exc
                if not chunk:
                    break
                if first and chunk.lstrip().removeprefix(b"\xef\xbb\xbf")[:16].lower().startswith(HTML_STARTS):
                    out.close()
                    self.part.unlink(missing_ok=True)
                    raise _html_error(self.url, "it starts with an HTML tag")
                first = False
                out.write(chunk)
                bar.update(len(chunk))
            out.flush()
            os.fsync(out.fileno())
        size = self.size()
        # http.client returns a short body without an error when the peer closes early, so the
        # length check is what detects a dropped connection.
        if total is not None and size < total:
            raise _TransientError(f"connection closed after {size} of {total} bytes")
        if total is not None and size > total:
            self.part.unlink(missing_ok=True)
            raise _TransientError(f"received {size} bytes but the server announced {total}; starting over")


def download(
    url: str,
    dest: str | os.PathLike[str],
    *,
    expected_sha256: str | None = None,
    expected_md5: str | None = None,
    connect_timeout: float = 10.0,
    read_timeout: float = 60.0,
    retries: int = 5,
    backoff_s: float = 1.0,
    progress: bool = True,
) -> Path:
    """Download ``url`` to ``dest`` (all or nothing) and return ``dest``.

    An existing ``dest`` is a finished earlier download (only complete files get that name):
    it is returned without network access, after checking ``expected_sha256`` (or
    ``expected_md5``; at most one of them) when given (on a mismatch it is downloaded again).

    Raises :class:`FetchError` when the server refuses (HTTP 4xx), sends a web page, the
    checksum differs, or ``retries`` retries in a row made no progress.

    >>> download("https://example.org/a.tar.xz", Path("cache/a.tar.xz"), expected_sha256="ab12...")  # doctest: +SKIP
    PosixPath('cache/a.tar.xz')
    """
    dest = Path(dest)
    if expected_sha256 and expected_md5:
        raise ValueError("give expected_sha256 or expected_md5, not both")
    algorithm, label = ("md5", "MD5") if expected_md5 else ("sha256", "SHA-256")
    expected_hex = expected_md5 or expected_sha256
    expected = expected_hex.strip().lower() if expected_hex else None
    if dest.is_file():
        if expected is None or file_digest(dest, algorithm, progress=progress) == expected:
            return dest
        dest.unlink()  # a stale or damaged earlier download
    dest.parent.mkdir(parents=True, exist_ok=True)
    opener = urllib.request.build_opener(_HTTPHandler(read_timeout), _HTTPSHandler(read_timeout))
    transfer = _Transfer(url, partial_path(dest), opener, connect_timeout, progress)
    failures, furthest = 0, transfer.size()
    while True:
        try:
            transfer.attempt()
            break
        except _TransientError as exc:
            if transfer.size() > furthest:  # progress earns a fresh retry budget
                furthest, failures = transfer.size(), 0
            failures += 1
            if failures > retries:
                kept = (
                    f"; the {transfer.size()} bytes received so far are kept in {transfer.part} "
                    "and the next run resumes from there"
                    if transfer.size()
                    else ""
                )
                raise FetchError(
                    f"could not download {url}: {exc} (gave up after {failures} failed attempts in a row){kept}. "
                    f"Check the network connection and run again"
                ) from exc
            wait = (
                exc.retry_after if exc.retry_after is not None else min(backoff_s * 2 ** (failures - 1), MAX_BACKOFF_S)
            )
            if progress:
                tqdm.write(
                    f"download of {url}: {exc}; retrying in {wait:.1f} s ({failures}/{retries})", file=sys.stderr
                )
            time.sleep(wait)
    if expected is not None:
        actual = file_digest(transfer.part, algorithm, progress=progress)
        if actual != expected:
            transfer.part.unlink()
            raise FetchError(
                f"{url}: the downloaded file has {label} {actual} but {expected} was expected, so it is damaged or not "
                f"the expected file; it was deleted. Run again to download it afresh, or check the URL (or mirror)"
            )
    os.replace(transfer.part, dest)
    return dest


# --------------------------------------------------------------------------------------------
# Extracting
# --------------------------------------------------------------------------------------------

# Errors raised while *reading* an archive: a truncated or corrupt file (never a write error,
# which the code below keeps apart so a full disk is not reported as a bad archive).
_READ_ERRORS = (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, lzma.LZMAError, OSError)


@dataclass(frozen=True)
class _Member:
    """An archive entry, whichever the archive format."""

    name: str
    kind: str  # "file", "dir", "symlink", "hardlink" or "special"
    link: str = ""
    open: Callable[[], IO[bytes]] | None = None


def _tar_members(archive: Path) -> Generator[_Member, None, None]:
    # Stream mode ("r|*") reads the archive once, front to back: extracting one category from
    # the 5 GB MVTec archive never seeks back through the xz stream.
    with tarfile.open(archive, mode="r|*") as tar:
        for info in tar:
            if info.isdir():
                kind = "dir"
            elif info.isreg():
                kind = "file"
            elif info.issym():
                kind = "symlink"
            elif info.islnk():
                kind = "hardlink"
            else:
                kind = "special"
            # extractfile() returns None only for non-files, which never get an opener.
            opener = functools.partial(tar.extractfile, info) if kind == "file" else None
            yield _Member(info.name, kind, info.linkname, opener)  # type: ignore[arg-type]


def _zip_members(archive: Path) -> Generator[_Member, None, None]:
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            mode = info.external_attr >> 16  # Unix mode bits, when the zip was made on Unix
            if stat.S_ISLNK(mode):
                yield _Member(info.filename, "symlink", zf.read(info).decode("utf-8", "replace"))
            elif info.is_dir():
                yield _Member(info.filename, "dir")
            elif stat.S_IFMT(mode) not in (0, stat.S_IFREG):
                yield _Member(info.filename, "special")
            else:
                yield _Member(info.filename, "file", open=functools.partial(zf.open, info))


def _guarded(members: Iterator[_Member], archive: Path) -> Iterator[_Member]:
    while True:
        try:
            member = next(members)
        except StopIteration:
            return
        except _READ_ERRORS as exc:
            raise _damaged(archive, exc) from exc
        yield member


def _damaged(archive: Path, exc: BaseException) -> FetchError:
    return FetchError(
        f"{archive}: cannot read the archive ({exc}); it is damaged, truncated or not a tar/zip file. "
        "Delete it and download it again"
    )


def _unsafe(archive: Path, name: str, why: str) -> FetchError:
    return FetchError(
        f"{archive}: refusing to extract member {name!r}: {why}. "
        "The archive is unsafe or not the expected one; nothing was extracted"
    )


def _safe_relpath(archive: Path, name: str) -> PurePosixPath | None:
    """The member's path inside the destination, or None for the archive root (``./``)."""
    if "\x00" in name:
        raise _unsafe(archive, name, "its name holds a NUL byte")
    # Backslashes count as separators too: a zip made on Windows may use them.
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        raise _unsafe(archive, name, "it has an absolute path")
    parts = [part for part in re.split(r"[/\\]", name) if part not in ("", ".")]
    if ".." in parts:
        raise _unsafe(archive, name, "its path has a '..' component that leads out of the destination")
    return PurePosixPath(*parts) if parts else None


def _is_inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root + os.sep)


def _copy_member(archive: Path, member: _Member, target: Path) -> None:
    assert member.open is not None
    try:
        source = member.open()
    except _READ_ERRORS as exc:
        raise _damaged(archive, exc) from exc
    with source, open(target, "xb") as out:
        while True:
            try:
                chunk = source.read(CHUNK_BYTES)
            except _READ_ERRORS as exc:
                raise _damaged(archive, exc) from exc
            if not chunk:
                break
            out.write(chunk)


def _extract_member(archive: Path, member: _Member, rel: PurePosixPath, root: Path, links: list[Path]) -> None:
    real_root = os.path.realpath(root)
    target = root / rel
    # A symlink extracted earlier could turn a harmless-looking path into one outside the
    # destination, so where the member really lands is checked on the file system, not only
    # by its name.
    if not _is_inside(os.path.realpath(target.parent), real_root):
        raise _unsafe(archive, member.name, "it would be written through a link that leads out of the destination")
    if member.kind == "special":
        raise _unsafe(archive, member.name, "it is a device, FIFO or other special file")
    target.parent.mkdir(parents=True, exist_ok=True)
    if member.kind == "dir":
        if os.path.lexists(target) and not target.is_dir():
            raise _unsafe(archive, member.name, "a file of the same name is already in the archive")
        target.mkdir(exist_ok=True)
        return
    if os.path.lexists(target):
        if target.is_dir() and not target.is_symlink():
            raise _unsafe(archive, member.name, "a folder of the same name is already in the archive")
        target.unlink()  # a later entry of the same name wins, as with tar; never write through a link
    if member.kind == "file":
        _copy_member(archive, member, target)
    elif member.kind == "symlink":
        if os.path.isabs(member.link) or not _is_inside(
            os.path.realpath(os.path.join(os.path.realpath(target.parent), member.link)), real_root
        ):
            raise _unsafe(archive, member.name, f"it is a symbolic link to {member.link!r}, outside the destination")
        os.symlink(member.link, target)
        links.append(target)
    else:  # hardlink: its target is another member, named from the archive root
        outside = _unsafe(archive, member.name, f"it is a hard link to {member.link!r}, outside the destination")
        try:
            source_rel = _safe_relpath(archive, member.link)
        except FetchError:
            raise outside from None
        source = root / source_rel if source_rel is not None else root
        if not _is_inside(os.path.realpath(source), real_root):
            raise outside
        if not source.is_file():
            raise _unsafe(archive, member.name, f"it is a hard link to {member.link!r}, which is not an extracted file")
        shutil.copyfile(source, target)  # a copy: extracted files never share storage with anything


def safe_extract(
    archive: str | os.PathLike[str],
    dest_dir: str | os.PathLike[str],
    *,
    select: Callable[[str], bool] | None = None,
    stop: Callable[[str], bool] | None = None,
) -> None:
    """Extract ``archive`` into ``dest_dir`` (replaced as a whole, only if everything succeeds).

    ``select`` receives each member's normalised relative path (``bottle/train/good/000.png``)
    and returns whether to extract it; unselected members are skipped unread. ``stop``, asked
    first, ends reading at the first member it returns True for (that one is not extracted):
    a tar made from a folder stores each sub-folder contiguously, so once past a category's
    folder one category of a multi-GB archive is extracted without decompressing the rest.

    Raises :class:`FetchError` naming the member for an unsafe member, or the archive when it
    is damaged; ``dest_dir`` is then left as it was.

    >>> safe_extract("bottle.tar.xz", "extracted", select=lambda name: name.startswith("bottle/"))  # doctest: +SKIP
    """
    archive, dest_dir = Path(archive), Path(dest_dir)
    if not archive.is_file():
        raise FetchError(f"{archive}: archive not found; check the path")
    members = _zip_members(archive) if zipfile.is_zipfile(archive) else _tar_members(archive)
    # closing(): stopping early must close the archive now, not whenever the generator is collected.
    with contextlib.closing(members), staging_dir(dest_dir) as root:
        links: list[Path] = []
        for member in _guarded(members, archive):
            rel = _safe_relpath(archive, member.name)
            if rel is None:
                continue
            if stop is not None and stop(rel.as_posix()):
                break
            if select is not None and not select(rel.as_posix()):
                continue
            _extract_member(archive, member, rel, root, links)
        # A link checked when it was created can be redirected by a link extracted after it;
        # check all of them again now that the tree is final.
        real_root = os.path.realpath(root)
        for link in links:
            if not _is_inside(os.path.realpath(link), real_root):
                raise _unsafe(
                    archive,
                    link.relative_to(root).as_posix(),
                    f"its link target {os.readlink(link)!r} leads out of the destination",
                )
