"""Byte-identical reruns and the collaboration round trip, through the real dvc CLI."""

import json
import shutil
import sys

import pytest
import yaml

from conftest import dvc, git, make_project, run

pytestmark = pytest.mark.integration


def lock_hashes(root):
    """{(stage, path): md5} for every output in dvc.lock."""
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    return {(stage, out["path"]): out["md5"] for stage, body in lock["stages"].items() for out in body.get("outs", [])}


@pytest.fixture(scope="module")
def reproduced(tmp_path_factory):
    root = make_project(tmp_path_factory.mktemp("repro") / "repo", {"data": {"categories": ["marble"]}})
    dvc("repro", cwd=root)
    return root


def test_forced_repro_twice_gives_identical_outputs(reproduced):
    root = reproduced
    first = lock_hashes(root)
    assert any(path.endswith("model.pt") for _, path in first)
    dvc("repro", "--force", cwd=root)
    second = lock_hashes(root)
    changed = sorted(key for key in first if first[key] != second.get(key))
    assert not changed, f"outputs differ between identical runs: {changed}"


def test_push_clone_pull_round_trip(reproduced, tmp_path):
    root = reproduced
    remote = tmp_path / "remote"
    dvc("remote", "add", "-d", "shared", str(remote), cwd=root)
    git("add", "-A", cwd=root)
    git("commit", "-q", "-m", "results and remote", cwd=root)
    dvc("push", cwd=root)

    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(root), str(clone)], cwd=tmp_path)
    dvc("pull", cwd=clone)
    status = dvc("status", cwd=clone).stdout
    assert "up to date" in status, status
    again = dvc("repro", cwd=clone)
    assert "Running stage" not in again.stdout
    assert (clone / "models" / "marble" / "model.pt").read_bytes() == (
        root / "models" / "marble" / "model.pt"
    ).read_bytes()
    # The pulled model judges new images in the clone (predict reads model, threshold, params).
    judged = run(
        [sys.executable, "-m", "anomaly_spotter.deploy.predict", "--category", "marble", "data/raw/marble/test"],
        cwd=clone,
    )
    results = [
        json.loads(line) for line in (clone / "predictions" / "marble" / "predictions.jsonl").read_text().splitlines()
    ]
    assert (
        len(results) == len(list((clone / "data" / "raw" / "marble" / "test").rglob("*.png")))
        and "anomalous" in judged.stdout
    )
    assert {"score", "threshold", "anomalous", "heatmap"} <= set(results[0])
    shutil.rmtree(clone)
