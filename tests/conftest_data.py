"""Test helpers for the data sources: tiny MVTec-layout categories, archives and a scripted HTTP server.

It is a plain module (tests/conftest.py belongs to the pipeline tests): import what a test
needs, e.g. ``from conftest_data import make_category, running_server``.

The server (:class:`ScriptedServer`) serves byte strings from 127.0.0.1 on a free port; each
path can be given a queue of actions that the next requests consume, so a test can script
"drop the connection after 1000 bytes, then behave" or "answer 500 once".
"""

from __future__ import annotations

import contextlib
import io
import tarfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import cv2
import numpy as np

SIZE = 32
DEFECTS = ("crack", "scratch")


# --------------------------------------------------------------------------------------------
# Images and categories
# --------------------------------------------------------------------------------------------


def write_image(path: Path, pixels: np.ndarray) -> Path:
    """Write an (H, W) or (H, W, 3) uint8 array; the format follows the suffix (PNG, JPEG, BMP, TIFF)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), pixels), path
    return path


def texture(seed: int, size: tuple[int, int] = (SIZE, SIZE), gray: bool = False) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = size if gray else (*size, 3)
    return rng.integers(60, 200, size=shape, dtype=np.uint8)


def square_mask(index: int, size: tuple[int, int] = (SIZE, SIZE), value: int = 255) -> np.ndarray:
    mask = np.zeros(size, np.uint8)
    top = 2 + 3 * index
    mask[top : top + 6, 4:12] = value
    return mask


def make_category(
    parent: Path,
    name: str = "bottle",
    *,
    train: int = 3,
    test_good: int = 2,
    defects: tuple[str, ...] = DEFECTS,
    per_defect: int = 2,
    ext: str = ".png",
    gray: bool = False,
) -> Path:
    """A valid category ``parent/name`` in MVTec AD layout with 32x32 images and 0/255 PNG masks."""
    root = parent / name
    seed = 0
    for i in range(train):
        write_image(root / "train" / "good" / f"{i:03d}{ext}", texture(seed := seed + 1, gray=gray))
    for i in range(test_good):
        write_image(root / "test" / "good" / f"{i:03d}{ext}", texture(seed := seed + 1, gray=gray))
    for defect in defects:
        for i in range(per_defect):
            write_image(root / "test" / defect / f"{i:03d}{ext}", texture(seed := seed + 1, gray=gray))
            write_image(root / "ground_truth" / defect / f"{i:03d}_mask.png", square_mask(i))
    return root


def tree_bytes(root: Path) -> dict[str, bytes]:
    """``{relative path: bytes}`` of every file under ``root``."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------------------------
# Archives
# --------------------------------------------------------------------------------------------


def make_tar(archive: Path, folders: dict[str, Path], mode: str = "w:xz") -> Path:
    """Pack each ``{name in archive: folder}`` into ``archive`` (xz-compressed by default)."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, mode) as tar:
        for arcname, folder in folders.items():
            tar.add(folder, arcname=arcname)
    return archive


def file_member(name: str, data: bytes = b"data") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def link_member(name: str, target: str, *, hard: bool = False) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.LNKTYPE if hard else tarfile.SYMTYPE
    info.linkname = target
    return info, None


def special_member(name: str, kind: bytes = tarfile.FIFOTYPE) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    return info, None


def make_raw_tar(archive: Path, members: list[tuple[tarfile.TarInfo, bytes | None]], mode: str = "w:gz") -> Path:
    """A tar built member by member, for archives no honest tool would write."""
    with tarfile.open(archive, mode) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return archive


# --------------------------------------------------------------------------------------------
# Scripted HTTP server
# --------------------------------------------------------------------------------------------

HTML_PAGE = b"<!DOCTYPE html>\n<html><body>Your session expired. Please log in.</body></html>\n"


@dataclass
class Request:
    path: str
    headers: dict[str, str]


@dataclass
class ScriptedServer:
    """A local HTTP server whose answers tests script per path.

    Actions (consumed one per request, then ``serve`` for ever):

    * ``serve``: the file, honouring ``Range: bytes=N-`` with a 206;
    * ``ignore-range``: the whole file with 200 even when a range was asked;
    * ``drop:N``: announce the full length but close the connection after N body bytes;
    * ``status:CODE``: an empty error answer with that status;
    * ``html``: an HTML page with ``Content-Type: text/html``;
    * ``html-bytes``: the same page labelled ``application/octet-stream``;
    * ``stall:S``: send the headers, then nothing for S seconds.
    """

    files: dict[str, bytes] = field(default_factory=dict)
    actions: dict[str, list[str]] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    httpd: ThreadingHTTPServer | None = None

    def add(self, path: str, data: bytes, *actions: str) -> str:
        """Serve ``data`` at ``path`` after the given actions; returns the full URL."""
        self.files[path] = data
        self.actions[path] = list(actions)
        return self.url(path)

    def url(self, path: str = "") -> str:
        assert self.httpd is not None
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}{path}"

    def start(self) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def stop(self) -> None:
        assert self.httpd is not None
        self.httpd.shutdown()
        self.httpd.server_close()


def _handler_for(server: ScriptedServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass  # keep test output clean

        def do_GET(self) -> None:
            server.requests.append(Request(self.path, dict(self.headers.items())))
            queue = server.actions.get(self.path) or []
            action = queue.pop(0) if queue else "serve"
            data = server.files.get(self.path)
            if data is None:
                self._answer(404, b"not found", "text/plain")
                return
            kind, _, arg = action.partition(":")
            try:
                if kind == "status":
                    self._answer(int(arg), b"", "text/plain")
                elif kind in ("html", "html-bytes"):
                    self._answer(
                        200, HTML_PAGE, "text/html; charset=utf-8" if kind == "html" else "application/octet-stream"
                    )
                elif kind == "stall":
                    self._headers(200, len(data))
                    time.sleep(float(arg))
                    self.close_connection = True
                else:
                    start = self._range_start() if kind in ("serve", "drop") else 0
                    body = data[start:]
                    if start:
                        self._headers(206, len(body), {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}"})
                    else:
                        self._headers(200, len(body))
                    if kind == "drop":
                        self.wfile.write(body[: int(arg)])
                        self.close_connection = True  # the client sees the connection end early
                    else:
                        self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True  # the client gave up first (a timeout test)

        def _range_start(self) -> int:
            value = self.headers.get("Range", "")
            return int(value[len("bytes=") : -1]) if value.startswith("bytes=") and value.endswith("-") else 0

        def _headers(self, status: int, length: int, extra: dict[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/x-xz")
            self.send_header("Content-Length", str(length))
            self.send_header("Accept-Ranges", "bytes")
            for key, value in (extra or {}).items():
                self.send_header(key, value)
            self.end_headers()

        def _answer(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


@contextlib.contextmanager
def running_server() -> Iterator[ScriptedServer]:
    """A started :class:`ScriptedServer` on 127.0.0.1 (free port), stopped on exit.

    Test modules wrap it in their own fixture (no import of a fixture, which linters flag)::

        @pytest.fixture
        def http_server():
            with running_server() as server:
                yield server
    """
    server = ScriptedServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()
