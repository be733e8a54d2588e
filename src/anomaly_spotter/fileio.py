"""Atomic, deterministic file writing.

Every output a DVC stage produces goes through these helpers, so that

* a crash or Ctrl-C never leaves a truncated file behind (write to a temporary file in the
  same folder, ``fsync``, then ``os.replace``), and
* the same content always gives the same bytes (sorted JSON keys, fixed float formatting),
  which keeps the md5 sums in ``dvc.lock`` stable between identical runs.

Example:
    >>> from pathlib import Path
    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> write_json(d / "m.json", {"b": 1.0, "a": 0.123456789})
    >>> (d / "m.json").read_text()
    '{\\n  "a": 0.123456789,\\n  "b": 1.0\\n}\\n'
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

# Floats are rounded to this many significant digits before they are written: enough for any
# metric, and it hides last-bit noise that would otherwise change a file's md5.
FLOAT_DIGITS = 10


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """Open ``path`` for binary writing; the file appears only if the block succeeds.

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "x.bin"
    >>> with atomic_open(p) as f:
    ...     _ = f.write(b"ok")
    >>> p.read_bytes()
    b'ok'
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_open(path) as handle:
        handle.write(data)


def _normalise(value: Any) -> Any:
    """Make ``value`` JSON-ready and deterministic: numpy scalars/arrays to Python, floats rounded."""
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        value = value.tolist()
    if isinstance(value, float):
        if not math.isfinite(value):
            return None  # JSON has no NaN/inf; null is what DVC and browsers understand
        return float(f"{value:.{FLOAT_DIGITS}g}")
    if isinstance(value, dict):
        return {str(k): _normalise(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_normalise(v) for v in value]
    if isinstance(value, Path):
        return value.as_posix()
    return value


def dumps_json(data: Any) -> str:
    """Serialise ``data`` deterministically (sorted keys, rounded floats, trailing newline)."""
    return json.dumps(_normalise(data), indent=2, sort_keys=True, allow_nan=False) + "\n"


def write_json(path: str | os.PathLike[str], data: Any) -> None:
    """Write ``data`` as deterministic JSON, atomically."""
    write_bytes(path, dumps_json(data).encode("utf-8"))


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write UTF-8 ``text`` atomically."""
    write_bytes(path, text.encode("utf-8"))


def replace_dir(staging: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """Move a fully written ``staging`` folder to ``target``, replacing what was there.

    Used for whole-folder outputs (a fetched category, a processed dataset): the folder is
    built under a temporary name beside the target and swapped in only when complete.
    """
    staging, target = Path(staging), Path(target)
    if target.exists() or target.is_symlink():
        old = target.with_name(f".{target.name}.old")
        if old.exists():
            shutil.rmtree(old)
        os.replace(target, old)
        os.replace(staging, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging, target)


@contextlib.contextmanager
def staging_dir(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``target``; on success it replaces ``target``.

    On any error (Ctrl-C included) the temporary folder is removed and ``target`` is untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp makes 0700
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_dir(tmp, target)
