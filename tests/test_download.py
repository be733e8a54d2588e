"""HTTP download (retries, resume, checks) and safe extraction, against a local scripted server."""

from __future__ import annotations

import hashlib
import os
import tarfile
import zipfile
from pathlib import Path

import pytest

from anomaly_spotter.errors import FetchError
from anomaly_spotter.sources.download import download, partial_path, safe_extract
from conftest_data import (
    file_member,
    link_member,
    make_category,
    make_raw_tar,
    make_tar,
    running_server,
    special_member,
    tree_bytes,
)

# A payload of a few chunks' worth would make the tests slow; a few hundred kB still
# exercises partial reads, and it is not text so an HTML sniff cannot match by accident.
PAYLOAD = bytes(range(256)) * 1200
FAST = {"retries": 3, "backoff_s": 0.01, "progress": False}


@pytest.fixture
def http_server(monkeypatch):
    monkeypatch.setenv("no_proxy", "*")  # a proxy set in the environment must not intercept 127.0.0.1
    with running_server() as server:
        yield server


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_clean_download(http_server, tmp_path):
    url = http_server.add("/a/bottle.tar.xz", PAYLOAD)
    dest = tmp_path / "cache" / "bottle.tar.xz"
    assert download(url, dest, expected_sha256=hashlib.sha256(PAYLOAD).hexdigest(), **FAST) == dest
    assert dest.read_bytes() == PAYLOAD
    assert leftovers(dest.parent) == ["bottle.tar.xz"]
    assert "Range" not in http_server.requests[0].headers


def test_dropped_connection_resumes_with_range(http_server, tmp_path):
    url = http_server.add("/f.bin", PAYLOAD, "drop:100000")
    dest = tmp_path / "f.bin"
    download(url, dest, **FAST)
    assert dest.read_bytes() == PAYLOAD
    assert [r.headers.get("Range") for r in http_server.requests] == [None, "bytes=100000-"]
    assert not partial_path(dest).exists()


def test_server_ignoring_range_restarts_from_zero(http_server, tmp_path):
    url = http_server.add("/f.bin", PAYLOAD, "drop:5000", "ignore-range")
    dest = tmp_path / "f.bin"
    download(url, dest, **FAST)
    assert dest.read_bytes() == PAYLOAD
    assert http_server.requests[1].headers.get("Range") == "bytes=5000-"


def test_partial_file_of_an_earlier_run_is_resumed(http_server, tmp_path):
    url = http_server.add("/f.bin", PAYLOAD)
    dest = tmp_path / "f.bin"
    partial_path(dest).write_bytes(PAYLOAD[:1234])
    download(url, dest, **FAST)
    assert dest.read_bytes() == PAYLOAD
    assert http_server.requests[0].headers.get("Range") == "bytes=1234-"


def test_server_error_then_success(http_server, tmp_path):
    url = http_server.add("/f.bin", PAYLOAD, "status:500", "status:503")
    download(url, tmp_path / "f.bin", **FAST)
    assert (tmp_path / "f.bin").read_bytes() == PAYLOAD
    assert len(http_server.requests) == 3


def test_read_timeout_is_retried(http_server, tmp_path):
    url = http_server.add("/f.bin", PAYLOAD, "stall:1.5")
    download(url, tmp_path / "f.bin", read_timeout=0.3, **FAST)
    assert (tmp_path / "f.bin").read_bytes() == PAYLOAD


def test_gives_up_after_the_retries(http_server, tmp_path):
    url = http_server.add("/f.bin", PAYLOAD, *["status:500"] * 10)
    with pytest.raises(FetchError, match=r"could not download .*/f\.bin: HTTP 500 .*gave up after 4 failed attempts"):
        download(url, tmp_path / "f.bin", **FAST)
    assert len(http_server.requests) == 4
    assert leftovers(tmp_path) == []


def test_connection_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("no_proxy", "*")
    with pytest.raises(FetchError, match=r"could not download http://127\.0\.0\.1:9/x: cannot connect"):
        download("http://127.0.0.1:9/x", tmp_path / "x", retries=1, backoff_s=0.01, progress=False)


def test_not_found_is_not_retried(http_server, tmp_path):
    with pytest.raises(FetchError, match=r"/missing\.tar\.xz: the server answered HTTP 404"):
        download(http_server.url("/missing.tar.xz"), tmp_path / "m", **FAST)
    assert len(http_server.requests) == 1


def test_checksum_mismatch(http_server, tmp_path):
    url = http_server.add("/f.bin", PAYLOAD)
    expected = "0" * 64
    with pytest.raises(FetchError) as info:
        download(url, tmp_path / "f.bin", expected_sha256=expected, **FAST)
    message = str(info.value)
    assert url in message and expected in message and hashlib.sha256(PAYLOAD).hexdigest() in message
    assert leftovers(tmp_path) == []  # neither the file nor its .part


@pytest.mark.parametrize(
    "action, detail", [("html", "Content-Type: text/html"), ("html-bytes", "starts with an HTML tag")]
)
def test_html_page_instead_of_the_archive(http_server, tmp_path, action, detail):
    url = http_server.add("/bottle.tar.xz", PAYLOAD, action)
    with pytest.raises(FetchError, match="sent a web page") as info:
        download(url, tmp_path / "bottle.tar.xz", **FAST)
    assert url in str(info.value) and detail in str(info.value)
    assert leftovers(tmp_path) == []


def test_existing_download_is_reused_without_network(tmp_path):
    dest = tmp_path / "f.bin"
    dest.write_bytes(PAYLOAD)
    # No server exists at this address: any request would fail.
    assert (
        download("http://127.0.0.1:9/f.bin", dest, expected_sha256=hashlib.sha256(PAYLOAD).hexdigest(), **FAST) == dest
    )


# ---------------------------------------------------------------------------------------------
# safe_extract
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["w:xz", "w:gz", "w:bz2", "w"])
def test_extracts_tar_archives(tmp_path, mode):
    category = make_category(tmp_path / "src")
    archive = make_tar(tmp_path / "a.tar", {"bottle": category}, mode=mode)
    safe_extract(archive, tmp_path / "out")
    assert tree_bytes(tmp_path / "out" / "bottle") == tree_bytes(category)
    assert leftovers(tmp_path) == ["a.tar", "out", "src"]


def test_extracts_zip_archives(tmp_path):
    category = make_category(tmp_path / "src")
    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(category.rglob("*")):
            zf.write(path, "bottle/" + path.relative_to(category).as_posix())
    safe_extract(archive, tmp_path / "out")
    assert tree_bytes(tmp_path / "out" / "bottle") == tree_bytes(category)


def test_select_and_stop(tmp_path):
    archive = make_raw_tar(
        tmp_path / "a.tar.gz",
        [
            file_member("top/a/1"),
            file_member("top/b/1"),
            file_member("top/b/2"),
            file_member("top/c/1"),
            (tarfile.TarInfo("junk"), None),
        ],
    )
    seen: list[str] = []

    def select(name: str) -> bool:
        seen.append(name)
        return name.startswith("top/b/")

    safe_extract(archive, tmp_path / "out", select=select, stop=lambda name: name.startswith("top/c/"))
    assert sorted(tree_bytes(tmp_path / "out")) == ["top/b/1", "top/b/2"]
    assert seen == ["top/a/1", "top/b/1", "top/b/2"]  # stopped at top/c/1


UNSAFE = [
    ("dot-dot", [file_member("ok.txt"), file_member("bottle/../../evil.txt")], "bottle/../../evil.txt", "'..'"),
    ("absolute", [file_member("/tmp/evil.txt")], "/tmp/evil.txt", "absolute path"),
    (
        "symlink outside",
        [link_member("bottle/link", "../../outside"), file_member("bottle/link/evil.txt")],
        "bottle/link",
        "symbolic link",
    ),
    ("absolute symlink", [link_member("link", "/etc")], "link", "symbolic link to '/etc'"),
    # Each link looks harmless when written; together L points out of the destination.
    ("symlink chain", [link_member("L", "d/../x"), link_member("d", ".")], "L", "leads out of the destination"),
    ("hard link outside", [link_member("h", "../outside", hard=True)], "h", "hard link"),
    ("fifo", [special_member("bottle/pipe")], "bottle/pipe", "device, FIFO"),
    ("char device", [special_member("dev/null", tarfile.CHRTYPE)], "dev/null", "device, FIFO"),
]


@pytest.mark.parametrize("members, name, why", [u[1:] for u in UNSAFE], ids=[u[0] for u in UNSAFE])
def test_unsafe_tar_members_are_refused(tmp_path, members, name, why):
    work = tmp_path / "work"
    work.mkdir()
    archive = make_raw_tar(tmp_path / "evil.tar.gz", members)
    dest = work / "sub" / "out"
    with pytest.raises(FetchError, match="refusing to extract member") as info:
        safe_extract(archive, dest)
    assert repr(name) in str(info.value) and why in str(info.value)
    assert not dest.exists()
    assert leftovers(work / "sub") == []  # no staging folder either
    assert leftovers(tmp_path) == ["evil.tar.gz", "work"]  # nothing written outside
    assert not Path("/tmp/evil.txt").exists()


@pytest.mark.parametrize("name", ["../evil.txt", "/abs/evil.txt", "a\\..\\..\\evil.txt"])
def test_unsafe_zip_members_are_refused(tmp_path, name):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ok.txt", b"fine")
        zf.writestr(name, b"evil")
    with pytest.raises(FetchError, match="refusing to extract member") as info:
        safe_extract(archive, tmp_path / "out")
    assert repr(name) in str(info.value)
    assert leftovers(tmp_path) == ["evil.zip"]


def test_links_inside_the_destination_are_kept(tmp_path):
    archive = make_raw_tar(
        tmp_path / "a.tar.gz",
        [
            file_member("a/data.bin", b"xyz"),
            link_member("a/soft", "data.bin"),
            link_member("a/hard", "a/data.bin", hard=True),
        ],
    )
    safe_extract(archive, tmp_path / "out")
    out = tmp_path / "out" / "a"
    assert os.readlink(out / "soft") == "data.bin"
    assert (out / "hard").read_bytes() == b"xyz" and not (out / "hard").is_symlink()


def test_damaged_archive(tmp_path):
    archive = make_tar(tmp_path / "a.tar.xz", {"bottle": make_category(tmp_path / "src")})
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(FetchError, match=r"a\.tar\.xz: cannot read the archive .*damaged"):
        safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_not_an_archive(tmp_path):
    page = tmp_path / "page.tar.xz"
    page.write_bytes(b"<html>nope</html>")
    with pytest.raises(FetchError, match="not a tar/zip file"):
        safe_extract(page, tmp_path / "out")
