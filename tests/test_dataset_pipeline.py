"""Each downloaded benchmark through the real `dvc` CLI: fetch from a loopback server -> ... -> report.

A tiny archive in the dataset's native layout (tests/native_datasets.py) is served from
127.0.0.1 as ``data.mirror``; the project copy's module carries this archive's checksum in place
of the published one (the only edit), so the download, the checksum, the extraction and the
reader all run as they would for a user.
"""

from __future__ import annotations

import json

import pytest

from anomaly_spotter.evaluation.thresholds import OFFICIAL_VALIDATION_SOURCE, VALIDATION_SOURCE
from anomaly_spotter.sources.fetch import ARCHIVE_DATASETS
from conftest import dvc, make_project
from conftest_data import running_server
from native_datasets import CATEGORY, build_archive

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("source", ["visa", "mvtec_3d", "mvtec_loco", "mvtec_ad2"])
def test_source_runs_through_the_whole_pipeline(source, tmp_path, monkeypatch):
    import hashlib

    monkeypatch.setenv("no_proxy", "*")  # a proxy set in the environment must not intercept 127.0.0.1
    spec = ARCHIVE_DATASETS[source].archive
    archive = build_archive(source, tmp_path, spec.name)
    category = CATEGORY[source][0]
    with running_server() as server:
        server.add("/share/" + spec.path, archive.read_bytes())
        root = make_project(
            tmp_path / "repo",
            {
                "data": {"source": source, "categories": [category], "mirror": server.url("/share/")},
                "evaluate": {"pro_fpr_limit": 0.05},
            },
        )
        module = root / "src" / "anomaly_spotter" / "sources" / f"{source}.py"
        module.write_text(
            module.read_text().replace(spec.checksum, hashlib.new(spec.algorithm, archive.read_bytes()).hexdigest())
        )
        dvc("repro", "report", cwd=root)  # export is not about the data: left out to save time
        assert len(server.requests) == 1  # one download for the dataset

    assert (root / ".cache" / "downloads" / spec.name).is_file()
    thresholds = json.loads((root / "models" / category / "thresholds.json").read_text())
    official = source != "visa"
    assert thresholds["validation"]["source"] == (OFFICIAL_VALIDATION_SOURCE if official else VALIDATION_SOURCE)
    assert thresholds["validation"]["images"] == 2
    metrics = json.loads((root / "metrics" / f"{category}.json").read_text())
    for key in ("image_auroc", "pixel_auroc", "au_pro"):
        assert 0.0 <= metrics[key] <= 1.0
    # LOCO's own localisation metric, at evaluate.pro_fpr_limit; no other source has its regions.
    assert (0.0 <= metrics["au_spro"] <= 1.0) if source == "mvtec_loco" else "au_spro" not in metrics
    families = {"mvtec_loco": ["logical_anomalies", "structural_anomalies"], "mvtec_3d": ["crack"]}.get(source, ["bad"])
    assert sorted(metrics["per_defect_image_auroc"]) == families
    summary = json.loads((root / "metrics" / "summary.json").read_text())
    assert set(summary["image_auroc"]) == {category, "mean"}
