"""Fetching MVTec AD categories: catalogue, mirror download, local archives, whole-dataset archive."""

from __future__ import annotations

import hashlib
import re
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from anomaly_spotter.errors import DataError, FetchError, UserError
from anomaly_spotter.sources import archives, mvtec
from anomaly_spotter.sources.mvtec import (
    BASE_URL,
    CATEGORY_PATHS,
    PILL_BASE_URL,
    WHOLE_ARCHIVE_NAME,
    category_url,
    check_category_names,
    fetch_mvtec_category,
)
from anomaly_spotter.sources.mvtec import (
    CATEGORIES as MVTEC_CATEGORIES,
)
from conftest_data import make_category, make_tar, running_server, tree_bytes


@pytest.fixture
def http_server(monkeypatch):
    monkeypatch.setenv("no_proxy", "*")  # a proxy set in the environment must not intercept 127.0.0.1
    with running_server() as server:
        yield server


@pytest.fixture
def bottle(tmp_path: Path) -> Path:
    """A tiny valid ``bottle`` category (source files, for comparing bytes)."""
    return make_category(tmp_path / "src", "bottle")


@pytest.fixture
def bottle_archive(tmp_path: Path, bottle: Path) -> Path:
    """``bottle.tar.xz`` laid out like MVTec's (a ``bottle/`` folder plus a licence file at the root)."""
    (tmp_path / "license.txt").write_text("CC BY-NC-SA 4.0\n")
    return make_tar(
        tmp_path / "archives" / "bottle.tar.xz", {"license.txt": tmp_path / "license.txt", "bottle": bottle}
    )


@pytest.fixture
def no_network(monkeypatch):
    """Fail the test if anything tries to download."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"unexpected download {args}")

    monkeypatch.setattr(archives, "download", refuse)


def assert_clean(folder: Path, *expected: str) -> None:
    """Only ``expected`` names in ``folder``: no staging, extraction or .part leftovers."""
    assert sorted(p.name for p in folder.iterdir()) == sorted(expected)


def test_catalogue_matches_the_reference():
    assert len(MVTEC_CATEGORIES) == 15 == len(set(MVTEC_CATEGORIES))
    assert set(CATEGORY_PATHS) == set(MVTEC_CATEGORIES)
    assert all(CATEGORY_PATHS[c].endswith(f"/{c}.tar.xz") for c in MVTEC_CATEGORIES)
    assert category_url("bottle") == BASE_URL + "420937370-1629951468/bottle.tar.xz"
    assert category_url("pill") == PILL_BASE_URL + "420938129-1629953099/pill.tar.xz"
    assert PILL_BASE_URL != BASE_URL
    # A mirror replaces the base of both shares.
    assert (
        category_url("pill", mirror="http://m.example/mvtec/")
        == "http://m.example/mvtec/420938129-1629953099/pill.tar.xz"
    )
    assert category_url("zipper", mirror="http://m.example") == "http://m.example/420938385-1629953449/zipper.tar.xz"


def test_category_typo_lists_valid_names():
    check_category_names(["bottle", "metal_nut"])
    with pytest.raises(UserError) as info:
        check_category_names(["bottle", "botle", "Zipper", "xyz"])
    message = str(info.value)
    assert "'botle' (did you mean 'bottle'?)" in message
    assert "'Zipper' (did you mean 'zipper'?)" in message
    assert "'xyz';" in message or "'xyz' " in message
    assert "valid names: " + ", ".join(MVTEC_CATEGORIES) in message
    with pytest.raises(UserError, match="did you mean 'carpet'"):
        fetch_mvtec_category("carpt", Path("unused"), cache_dir=Path("unused"))


def test_download_through_a_mirror_and_reuse_the_cache(http_server, tmp_path, bottle, bottle_archive):
    http_server.add("/mvtec/" + CATEGORY_PATHS["bottle"], bottle_archive.read_bytes(), "drop:3000")
    dest, cache = tmp_path / "data" / "raw" / "bottle", tmp_path / "cache"
    fetch_mvtec_category(
        "bottle", dest, mirror=http_server.url("/mvtec/"), cache_dir=cache, min_train_images=3, progress=False
    )
    assert tree_bytes(dest) == tree_bytes(bottle)  # license.txt outside bottle/ is not taken
    assert_clean(dest.parent, "bottle")
    assert_clean(cache, "bottle.tar.xz")
    assert [r.headers.get("Range") for r in http_server.requests] == [None, "bytes=3000-"]
    # A second fetch (e.g. after `dvc repro -f`) reuses the complete download.
    shutil.rmtree(dest)
    fetch_mvtec_category(
        "bottle", dest, mirror=http_server.url("/mvtec/"), cache_dir=cache, min_train_images=3, progress=False
    )
    assert tree_bytes(dest) == tree_bytes(bottle)
    assert len(http_server.requests) == 2


def test_download_failure_says_how_to_work_offline(http_server, tmp_path):
    with pytest.raises(FetchError, match="HTTP 404") as info:
        fetch_mvtec_category(
            "bottle", tmp_path / "bottle", mirror=http_server.url(), cache_dir=tmp_path / "cache", progress=False
        )
    assert "data.archive" in str(info.value) and "data.mirror" in str(info.value)
    assert not (tmp_path / "bottle").exists()


def test_local_category_archive_needs_no_network(tmp_path, bottle, bottle_archive, no_network):
    dest = tmp_path / "raw" / "bottle"
    fetch_mvtec_category("bottle", dest, archive=bottle_archive, cache_dir=tmp_path / "cache", progress=False)
    assert tree_bytes(dest) == tree_bytes(bottle)
    assert_clean(dest.parent, "bottle")


def test_archive_of_another_category(tmp_path, bottle_archive, no_network):
    dest = tmp_path / "raw" / "cable"
    with pytest.raises(FetchError, match=r"bottle\.tar\.xz: holds no 'cable/' folder"):
        fetch_mvtec_category("cable", dest, archive=bottle_archive, cache_dir=tmp_path / "cache", progress=False)
    assert_clean(tmp_path / "raw")


def test_missing_local_archive(tmp_path, no_network):
    with pytest.raises(FetchError, match=r"nope\.tar\.xz: archive not found \(data\.archive\)"):
        fetch_mvtec_category("bottle", tmp_path / "b", archive=tmp_path / "nope.tar.xz", cache_dir=tmp_path / "cache")


def test_invalid_category_in_archive_leaves_previous_data(tmp_path, bottle, no_network):
    (bottle / "ground_truth" / "crack" / "001_mask.png").unlink()
    archive = make_tar(tmp_path / "bottle.tar.xz", {"bottle": bottle})
    dest = make_category(tmp_path / "raw", "bottle", train=5)
    before = tree_bytes(dest)
    with pytest.raises(DataError) as info:
        fetch_mvtec_category("bottle", dest, archive=archive, cache_dir=tmp_path / "cache", progress=False)
    assert f"in bottle from {archive}" in str(info.value)
    assert "test/crack/001.png: defective test image has no mask" in str(info.value)
    assert tree_bytes(dest) == before
    assert_clean(tmp_path / "raw", "bottle")


def test_unsafe_archive_is_refused(tmp_path, bottle, no_network):
    archive = make_tar(
        tmp_path / "bottle.tar.xz", {"bottle": bottle, "bottle/../../evil.png": bottle / "train" / "good" / "000.png"}
    )
    with pytest.raises(FetchError, match=re.escape("refusing to extract member 'bottle/../../evil.png'")):
        fetch_mvtec_category("bottle", tmp_path / "raw" / "bottle", archive=archive, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "raw").exists() or not any((tmp_path / "raw").iterdir())
    assert not (tmp_path.parent / "evil.png").exists()


@pytest.fixture
def whole_archive(tmp_path: Path, bottle: Path, monkeypatch) -> Path:
    """A miniature whole-dataset archive (three categories under one top folder), declared genuine."""
    cable = make_category(tmp_path / "src", "cable", train=2)
    carpet = make_category(tmp_path / "src", "carpet", train=2)
    path = make_tar(
        tmp_path / "downloads" / WHOLE_ARCHIVE_NAME,
        {
            "mvtec_anomaly_detection/cable": cable,
            "mvtec_anomaly_detection/bottle": bottle,
            "mvtec_anomaly_detection/carpet": carpet,
        },
    )
    monkeypatch.setattr(
        mvtec, "WHOLE_ARCHIVE", replace(mvtec.WHOLE_ARCHIVE, checksum=hashlib.sha256(path.read_bytes()).hexdigest())
    )
    return path


def test_whole_archive_extracts_only_the_category(tmp_path, bottle, whole_archive, no_network, monkeypatch):
    dest, cache = tmp_path / "raw" / "bottle", tmp_path / "cache"
    fetch_mvtec_category("bottle", dest, archive=whole_archive, cache_dir=cache, progress=False)
    assert tree_bytes(dest) == tree_bytes(bottle)
    assert_clean(tmp_path / "raw", "bottle")
    # The checksum is remembered: the next category does not hash 5 GB again.
    monkeypatch.setattr(archives, "file_digest", lambda *a, **k: pytest.fail("hashed twice"))
    fetch_mvtec_category("cable", tmp_path / "raw" / "cable", archive=whole_archive, cache_dir=cache, progress=False)
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == ["bottle", "cable"]


def test_whole_archive_with_wrong_checksum_is_refused(tmp_path, whole_archive, no_network, monkeypatch):
    monkeypatch.setattr(mvtec, "WHOLE_ARCHIVE", replace(mvtec.WHOLE_ARCHIVE, checksum="f" * 64))
    with pytest.raises(FetchError) as info:
        fetch_mvtec_category(
            "bottle", tmp_path / "raw" / "bottle", archive=whole_archive, cache_dir=tmp_path / "cache", progress=False
        )
    message = str(info.value)
    assert (
        str(whole_archive) in message
        and "f" * 64 in message
        and hashlib.sha256(whole_archive.read_bytes()).hexdigest() in message
    )
    assert not (tmp_path / "raw").exists()
    assert whole_archive.exists()  # the user's own file is never deleted


def test_whole_archive_download_is_checked(http_server, tmp_path, bottle, whole_archive):
    http_server.add("/m/" + mvtec.WHOLE_ARCHIVE_PATH, whole_archive.read_bytes())
    dest, cache = tmp_path / "raw" / "bottle", tmp_path / "cache"
    fetch_mvtec_category(
        "bottle", dest, mirror=http_server.url("/m"), cache_dir=cache, whole_archive=True, progress=False
    )
    assert tree_bytes(dest) == tree_bytes(bottle)
    # A corrupted copy on the server is refused and nothing is kept.
    shutil.rmtree(cache)
    http_server.add("/m/" + mvtec.WHOLE_ARCHIVE_PATH, whole_archive.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(FetchError, match="SHA-256"):
        fetch_mvtec_category(
            "carpet",
            tmp_path / "raw" / "carpet",
            mirror=http_server.url("/m"),
            cache_dir=cache,
            whole_archive=True,
            progress=False,
        )
    assert_clean(cache)
    assert_clean(tmp_path / "raw", "bottle")
