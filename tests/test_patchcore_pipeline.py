"""model.kind patchcore through the real `dvc` CLI: the same stages as the other kinds, byte-identical
outputs on `repro --force`, the ONNX export checked, and `predict` (workspace and `--rev`) on it."""

import json
import sys

import pytest
import yaml

from anomaly_spotter.detectors.backbones import weight_file
from anomaly_spotter.errors import UserError
from conftest import dvc, git, make_project, run

pytestmark = pytest.mark.integration
CATEGORIES = ("weave", "washer")
PATCHCORE = {
    "model": {"kind": "patchcore", "coreset_ratio": 0.1},
    "preprocess": {"image_size": 64},
    "score": {"smoothing_sigma": 2.0},
}
# Outputs whose bytes must not change on a forced re-run (DVCLive's metrics.json holds wall-clock fit times).
STABLE = (
    "models/{cat}/model.pt",
    "models/{cat}/thresholds.json",
    "models/{cat}/model.onnx",
    "metrics/{cat}.json",
    "metrics/{cat}_export.json",
)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = make_project(tmp_path_factory.mktemp("patchcore") / "repo", PATCHCORE)
    dvc("repro", cwd=root)
    git("add", "-A", cwd=root)
    git("commit", "-q", "-m", "patchcore baseline", cwd=root)
    return root


def test_every_stage_runs_for_patchcore(project):
    for cat in CATEGORIES:
        train_log = json.loads((project / "dvclive" / "train" / cat / "metrics.json").read_text())
        assert train_log["bank_size"] >= 1 and train_log["coverage_radius"] >= 0 and train_log["fit_seconds"] > 0
        params = yaml.safe_load((project / "dvclive" / "train" / cat / "params.yaml").read_text())
        backbone = weight_file(yaml.safe_load((project / "params.yaml").read_text())["model"]["backbone"])
        assert (params["backbone_file"], params["backbone_sha256"]) == (backbone.name, backbone.sha256)
        metrics = json.loads((project / "metrics" / f"{cat}.json").read_text())
        assert metrics["image_auroc"] > 0.7, metrics  # pretrained features find the synthetic defects
        exported = json.loads((project / "metrics" / f"{cat}_export.json").read_text())
        assert exported["outputs"] == ["anomaly_map", "score"] and exported["map_kind"] == "distance"
        assert exported["onnx_max_abs_diff_map_in_graph"] <= 1e-3 and exported["onnx_max_abs_diff_score"] <= 1e-3
        thresholds = json.loads((project / "models" / cat / "thresholds.json").read_text())
        assert thresholds["threshold"] == thresholds["thresholds"][thresholds["strategy"]]


def test_forced_repro_gives_the_same_bytes(project):
    before = {p.format(cat=c): (project / p.format(cat=c)).read_bytes() for c in CATEGORIES for p in STABLE}
    dvc("repro", "--force", "train@weave", "train@washer", cwd=project)
    dvc("repro", cwd=project)
    after = {name: (project / name).read_bytes() for name in before}
    assert [name for name in before if before[name] != after[name]] == []


def test_predict_with_a_patchcore_model_in_the_workspace_and_at_a_revision(project):
    images = project / "data" / "raw" / "weave" / "test"
    result = run(
        [sys.executable, "-m", "anomaly_spotter.deploy.predict", "--category", "weave", str(images), "--out", "pred"],
        cwd=project,
    )
    rows = [json.loads(line) for line in (project / "pred" / "predictions.jsonl").read_text().splitlines()]
    assert len(rows) == len(list(images.rglob("*.png"))) and all("score" in r for r in rows)
    assert "weave" in result.stdout
    # The committed revision, through DVC's API, gives the same scores.
    run(
        [
            sys.executable,
            "-m",
            "anomaly_spotter.deploy.predict",
            "--category",
            "weave",
            "--rev",
            "HEAD",
            str(images),
            "--out",
            "pred_head",
        ],
        cwd=project,
    )
    at_head = [json.loads(line) for line in (project / "pred_head" / "predictions.jsonl").read_text().splitlines()]
    assert [r["score"] for r in at_head] == pytest.approx([r["score"] for r in rows], rel=1e-6)
    scores_by_label = {"good": [], "defect": []}
    for r in rows:
        scores_by_label["good" if "/good/" in r["file"] else "defect"].append(r["score"])
    assert max(scores_by_label["defect"]) > max(scores_by_label["good"])  # something is found


def test_a_wrong_score_map_for_patchcore_is_refused_before_any_work(project):
    from anomaly_spotter.config import parse_params
    from anomaly_spotter.detectors import check_params

    raw = yaml.safe_load((project / "params.yaml").read_text())
    raw["score"]["map"] = "head"
    with pytest.raises(UserError, match=r"score.map is 'head' but model.kind patchcore scores with auto, distance"):
        check_params(parse_params(raw))
