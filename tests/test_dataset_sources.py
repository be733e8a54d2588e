"""The downloaded benchmarks (VisA, MVTec 3D-AD, MVTec LOCO AD, MVTec AD 2): native layout in, MVTec AD layout out.

Each test builds a tiny archive in the dataset's own layout (tests/native_datasets.py), serves
it from 127.0.0.1 or reads it as ``data.archive``, and checks what lands in ``data/raw/<cat>``;
then the bad cases: wrong checksum, truncated archive, split-CSV rows naming a missing file or
a path outside the dataset, unknown categories. The pipeline through the real ``dvc`` CLI is
tests/test_dataset_pipeline.py.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from anomaly_spotter.config import parse_params
from anomaly_spotter.dataset.images import read_mask_values
from anomaly_spotter.dataset.layout import list_category
from anomaly_spotter.errors import ConfigError, DataError, FetchError, UserError
from anomaly_spotter.sources import archives
from anomaly_spotter.sources.archives import fetch_dataset_category
from anomaly_spotter.sources.fetch import ARCHIVE_DATASETS, check_data
from conftest_data import make_tar, running_server, tree_bytes
from native_datasets import CATEGORY, TEST_BAD, TEST_GOOD, TRAIN, VALIDATION, build_archive, build_tree, write_visa_csv

SOURCES = ("visa", "mvtec_3d", "mvtec_loco", "mvtec_ad2")


def digest(path: Path, algorithm: str) -> str:
    return hashlib.new(algorithm, path.read_bytes()).hexdigest()


def genuine(source: str, archive: Path, checksum: str | None = None):
    """The source's Dataset, with its published checksum replaced by this test archive's."""
    dataset = ARCHIVE_DATASETS[source]
    spec = dataset.archive
    return replace(dataset, archive=replace(spec, checksum=checksum or digest(archive, spec.algorithm)))


@pytest.fixture
def http_server(monkeypatch):
    monkeypatch.setenv("no_proxy", "*")  # a proxy set in the environment must not intercept 127.0.0.1
    with running_server() as server:
        yield server


def assert_nothing_written(dest: Path) -> None:
    """No category and no staging leftovers beside where it would have gone."""
    assert not dest.parent.exists() or list(dest.parent.iterdir()) == []


def fetch(dataset, dest: Path, cache: Path, **where) -> None:
    fetch_dataset_category(
        dataset,
        CATEGORY[dataset.source][0],
        dest,
        cache_dir=cache,
        min_train_images=4,
        progress=False,
        **{"archive": None, "mirror": None, **where},
    )


@pytest.mark.parametrize("source", SOURCES)
def test_served_archive_becomes_an_mvtec_layout_category(source, tmp_path, http_server):
    dataset = ARCHIVE_DATASETS[source]
    archive = build_archive(source, tmp_path, dataset.archive.name)
    http_server.add("/share/" + dataset.archive.path, archive.read_bytes(), "drop:2000")
    dest, cache = tmp_path / "raw" / CATEGORY[source][0], tmp_path / "cache"
    fetch(genuine(source, archive), dest, cache, mirror=http_server.url("/share/"))

    # Downloaded once (resumed after the dropped connection), nothing half-written anywhere.
    assert [r.headers.get("Range") for r in http_server.requests] == [None, "bytes=2000-"]
    assert sorted(p.name for p in cache.iterdir() if not p.name.startswith(".")) == [dataset.archive.name]
    assert sorted(p.name for p in dest.parent.iterdir()) == [dest.name]

    listing = list_category(dest)
    assert len(listing.train) == TRAIN
    assert len(listing.validation) == (0 if source == "visa" else VALIDATION)
    defective = [item for item in listing.test if item.label]
    good = [item for item in listing.test if not item.label]
    families = 2 if source == "mvtec_loco" else 1
    assert len(good) == TEST_GOOD and len(defective) == TEST_BAD * families
    for item in defective:  # every mask binary 0/255 (VisA's 1/2, LOCO's 254 included)
        assert item.mask is not None and set(np.unique(read_mask_values(item.mask))) == {0, 255}
    files = {p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()}
    assert not any("xyz" in f or "private" in f or f.endswith(".tiff") for f in files)  # never extracted
    assert not any(CATEGORY[source][1] in f for f in files)  # the other category is not read
    if source == "visa":
        assert all(p.suffix == ".JPG" for p in listing.train) and listing.defect_types == ("bad",)
    if source == "mvtec_loco":
        assert listing.defect_types == ("logical_anomalies", "structural_anomalies")
        # The union of both regions of a structural image, and the regions kept for sPRO.
        union = read_mask_values(dest / "ground_truth" / "structural_anomalies" / "000_mask.png") > 0
        assert union[2:8, 4:12].all() and union[24:28, 24:30].all()
        assert sorted(p.name for p in (dest / "regions" / "structural_anomalies" / "000").iterdir()) == [
            "000.png",
            "001.png",
        ]
        assert json.loads((dest / "regions" / "defects_config.json").read_text())[0]["defect_name"] == "missing_pushpin"


def test_second_category_reuses_the_downloaded_archive(tmp_path, http_server, monkeypatch):
    dataset = ARCHIVE_DATASETS["mvtec_3d"]
    archive = build_archive("mvtec_3d", tmp_path, dataset.archive.name)
    http_server.add("/s/" + dataset.archive.path, archive.read_bytes())
    checked = genuine("mvtec_3d", archive)
    cache = tmp_path / "cache"
    fetch(checked, tmp_path / "raw" / "bagel", cache, mirror=http_server.url("/s/"))
    monkeypatch.setattr(archives, "file_digest", lambda *a, **k: pytest.fail("hashed twice"))
    fetch_dataset_category(
        checked,
        "tire",
        tmp_path / "raw" / "tire",
        archive=None,
        mirror=http_server.url("/s/"),
        cache_dir=cache,
        min_train_images=4,
        progress=False,
    )
    assert len(http_server.requests) == 1
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == ["bagel", "tire"]


@pytest.mark.parametrize("source, label", [("visa", "SHA-256"), ("mvtec_3d", "MD5")])
def test_wrong_checksum_of_a_download_keeps_nothing(source, label, tmp_path, http_server):
    dataset = ARCHIVE_DATASETS[source]
    archive = build_archive(source, tmp_path, dataset.archive.name)
    url = http_server.add("/s/" + dataset.archive.path, archive.read_bytes())
    dest, cache = tmp_path / "raw" / "x", tmp_path / "cache"
    wrong = "0" * len(dataset.archive.checksum)
    with pytest.raises(FetchError) as info:
        fetch(genuine(source, archive, checksum=wrong), dest, cache, mirror=http_server.url("/s/"))
    message = str(info.value)
    assert url in message and f"{label} {digest(archive, dataset.archive.algorithm)}" in message and wrong in message
    assert "data.archive" in message and "data.mirror" in message
    assert_nothing_written(dest)
    assert list(cache.iterdir()) == []


def test_wrong_checksum_of_a_local_archive_names_it_and_keeps_it(tmp_path):
    archive = build_archive("mvtec_ad2", tmp_path, "mvtec_ad_2.tar.gz")
    with pytest.raises(FetchError) as info:
        fetch(ARCHIVE_DATASETS["mvtec_ad2"], tmp_path / "raw" / "can", tmp_path / "cache", archive=archive)
    message = str(info.value)
    assert f"{archive}: SHA-256 is {digest(archive, 'sha256')}" in message and "MVTec AD 2" in message
    assert archive.is_file()
    assert_nothing_written(tmp_path / "raw" / "can")


def test_truncated_archive_is_an_error_and_leaves_the_previous_category(tmp_path):
    archive = build_archive("mvtec_loco", tmp_path, "mvtec_loco_anomaly_detection.tar.xz")
    truncated = tmp_path / "truncated.tar.xz"
    truncated.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    dest = tmp_path / "raw" / "pushpins"
    fetch(genuine("mvtec_loco", archive), dest, tmp_path / "cache", archive=archive)
    before = tree_bytes(dest)
    with pytest.raises(FetchError, match="damaged, truncated") as info:
        fetch(genuine("mvtec_loco", truncated), dest, tmp_path / "cache", archive=truncated)
    assert str(truncated) in str(info.value)
    assert tree_bytes(dest) == before and sorted(p.name for p in dest.parent.iterdir()) == ["pushpins"]


@pytest.mark.parametrize(
    "row, problem",
    [
        (
            "candle,train,normal,candle/Data/Images/Normal/9999.JPG,",
            "'candle/Data/Images/Normal/9999.JPG' is not in the archive",
        ),
        (
            "candle,train,normal,candle/../../etc/passwd,",
            "'candle/../../etc/passwd' is outside the dataset's candle/ folder",
        ),
        ("candle,train,normal,/etc/passwd,", "'/etc/passwd' is outside the dataset's candle/ folder"),
        (
            "candle,train,normal,pcb1/Data/Images/Normal/0000.JPG,",
            "'pcb1/Data/Images/Normal/0000.JPG' is outside the dataset's candle/ folder",
        ),
        (
            "candle,test,anomaly,candle/Data/Images/Anomaly/000.JPG,candle/Data/Masks/Anomaly/404.png",
            "'candle/Data/Masks/Anomaly/404.png' is not in",
        ),
        (
            "candle,val,normal,candle/Data/Images/Normal/0000.JPG,",
            "split 'val' with label 'normal' is not part of the one-class split",
        ),
    ],
)
def test_visa_split_rows_that_name_no_usable_file(row, problem, tmp_path):
    tree = build_tree("visa", tmp_path / "tree")
    rows = (tree / "split_csv" / "1cls.csv").read_text().splitlines()[1:]
    candle_rows = [r for r in rows if r.startswith("candle,")]
    write_visa_csv(tree, [*candle_rows, row, *[r for r in rows if not r.startswith("candle,")]])
    archive = make_tar(tmp_path / "VisA_20220922.tar", {p.name: p for p in tree.iterdir()}, mode="w")
    dest = tmp_path / "raw" / "candle"
    with pytest.raises(DataError) as info:
        fetch(genuine("visa", archive), dest, tmp_path / "cache", archive=archive)
    line = len(candle_rows) + 2  # after the header and the category's good rows
    assert f"split_csv/1cls.csv line {line}: {problem}" in str(info.value)
    assert "in candle of VisA" in str(info.value)
    assert_nothing_written(dest)


def test_misspelt_source_suggests_the_closest():
    with pytest.raises(
        ConfigError, match=r"data.source: 'mvtec_lcoo' is not one of .*mvtec_loco.* \(did you mean 'mvtec_loco'\?\)"
    ):
        check_data(parse_params({"data": {"source": "mvtec_lcoo"}}).data)


@pytest.mark.parametrize("source", tuple(ARCHIVE_DATASETS))
def test_unknown_category_suggests_the_closest(source):
    good, _ = CATEGORY[source]
    typo = good[:-1]
    with pytest.raises(ConfigError) as info:
        check_data(parse_params({"data": {"source": source, "categories": [typo]}}).data)
    assert f"data.categories: {typo!r} is not a {source} category (did you mean {good!r}?)" in str(info.value)
    with pytest.raises(UserError, match=f"did you mean {good!r}"):
        fetch_dataset_category(
            ARCHIVE_DATASETS[source],
            typo,
            Path("unused"),
            archive=None,
            mirror=None,
            cache_dir=Path("unused"),
            min_train_images=1,
        )


def test_archive_of_another_dataset_says_which_to_use(tmp_path):
    archive = build_archive("mvtec_ad2", tmp_path, "mvtec_ad_2.tar.gz")
    with pytest.raises(
        FetchError, match=r"holds no 'bagel/' folder; data.archive must be the whole MVTec 3D-AD archive"
    ):
        fetch_dataset_category(
            genuine("mvtec_3d", archive, digest(archive, "md5")),
            "bagel",
            tmp_path / "raw" / "bagel",
            archive=archive,
            mirror=None,
            cache_dir=tmp_path / "cache",
            min_train_images=1,
            progress=False,
        )
    assert_nothing_written(tmp_path / "raw" / "bagel")


def test_official_validation_split_replaces_the_holdout(tmp_path):
    """3D-AD, LOCO and AD 2 publish validation/good: preprocess uses it, thresholds.json says so."""
    from anomaly_spotter.config import PreprocessConfig, ThresholdsConfig
    from anomaly_spotter.dataset.preprocessing import preprocess_category
    from anomaly_spotter.dataset.processed import load_processed
    from anomaly_spotter.evaluation.thresholds import OFFICIAL_VALIDATION_SOURCE, parse_thresholds, threshold_report

    archive = build_archive("mvtec_ad2", tmp_path, "mvtec_ad_2.tar.gz")
    raw = tmp_path / "raw" / "can"
    fetch(genuine("mvtec_ad2", archive), raw, tmp_path / "cache", archive=archive)
    preprocess_category(raw, tmp_path / "processed", PreprocessConfig(image_size=32, val_fraction=0.5))
    data = load_processed(tmp_path / "processed")
    assert data.val_source == "official"
    assert len(data.train) == TRAIN and data.val_files == tuple(
        f"validation/good/{i:03d}_regular.png" for i in range(VALIDATION)
    )
    report = threshold_report([0.1, 0.2], ThresholdsConfig(), {"map": "l2"}, val_source=data.val_source)
    assert parse_thresholds(report, "t.json").validation_source == OFFICIAL_VALIDATION_SOURCE
    assert "never test images" in OFFICIAL_VALIDATION_SOURCE
