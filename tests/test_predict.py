"""``python -m anomaly_spotter.deploy.predict``: inputs, scoring, heatmaps, JSONL, exit codes and ``--rev``.

Everything runs on a tiny untrained model (32 px, 4 base channels) saved in the format
``Trainer.fit`` writes; the ``--rev`` test builds a small git + DVC repository around it.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

from anomaly_spotter.cli import run as run_cli
from anomaly_spotter.config import parse_params
from anomaly_spotter.dataset.images import read_image, resize
from anomaly_spotter.deploy.predict import RESULTS_NAME, collect_images, load_detector, main, predict_images
from anomaly_spotter.detectors import build_detector
from anomaly_spotter.detectors.base import save_model_file
from anomaly_spotter.errors import UserError
from anomaly_spotter.evaluation.thresholds import ThresholdsMismatchError, score_record
from anomaly_spotter.scoring import score_images
from conftest import REPO, TINY_PARAMS, deep_update, dvc, git, run

CATEGORY = "weave"
THRESHOLD = 0.5


def save_model(path: Path, raw_params: dict, seed: int) -> None:
    """A tiny untrained model in the format the trainer writes."""
    params = parse_params(raw_params)
    torch.manual_seed(seed)
    model = build_detector(params)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_model_file(path, model.state_dict(), model.architecture(), best_epoch=1, best_val_loss=0.0)


def save_thresholds(path: Path, threshold: float, raw_params: dict | None = None) -> None:
    """A thresholds.json with ``threshold``, recording the score params of ``raw_params``
    (default: the params.yaml of the workspace holding ``path``), as the thresholds stage would."""
    if raw_params is None:
        raw_params = yaml.safe_load((path.parents[2] / "params.yaml").read_text())
    params = parse_params(raw_params)
    path.write_text(
        json.dumps(
            {
                "format": 2,
                "strategy": "percentile_99",
                "threshold": threshold,
                "thresholds": {"percentile_95": threshold * 0.9, "percentile_99": threshold},
                "score": score_record(params.score, build_detector(params)),
                "validation": {"source": "train/good hold-out", "images": 4},
                "validation_scores": {
                    "count": 4,
                    "min": threshold * 0.5,
                    "max": threshold,
                    "mean": threshold * 0.8,
                    "std": 0.01,
                },
            }
        )
    )


def write_image(path: Path, shape: tuple[int, ...], seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    assert cv2.imwrite(str(path), pixels)
    return path


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """A folder laid out like the repository root: params.yaml, a model, thresholds and images."""
    raw = deep_update(yaml.safe_load((REPO / "params.yaml").read_text()), TINY_PARAMS)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    save_model(tmp_path / "models" / CATEGORY / "model.pt", raw, seed=0)
    save_thresholds(tmp_path / "models" / CATEGORY / "thresholds.json", THRESHOLD)
    images = tmp_path / "images"
    write_image(images / "single.png", (40, 56, 3), seed=1)  # not square, not 32 px
    write_image(images / "batch" / "a.png", (32, 32), seed=2)  # grayscale
    write_image(images / "batch" / "sub" / "a.jpg", (64, 48, 3), seed=3)  # same stem, deeper
    write_image(images / "batch" / ".hidden.png", (32, 32, 3), seed=4)  # hidden: skipped
    (images / "batch" / "notes.txt").write_text("not an image")  # wrong suffix: skipped
    monkeypatch.chdir(tmp_path)
    return tmp_path


def make_unreadable(folder: Path) -> list[Path]:
    """An empty, a truncated and a not-an-image file, all with image suffixes."""
    folder.mkdir(parents=True, exist_ok=True)
    empty = folder / "empty.png"
    empty.write_bytes(b"")
    truncated = folder / "truncated.png"
    ok, png = cv2.imencode(".png", np.full((32, 32, 3), 128, np.uint8))
    truncated.write_bytes(png.tobytes()[:60])
    text = folder / "text.jpg"
    text.write_text("hello")
    return [empty, truncated, text]


def exit_code(argv: list[str]) -> int:
    """Run the CLI in-process through ``cli.run``, as ``python -m`` does; return its exit status."""
    try:
        run_cli(main, argv)
    except SystemExit as exc:
        return int(exc.code)
    return 0


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_collect_images_files_and_folders(workspace):
    found = collect_images(["images/batch", "images/single.png", "images/batch/a.png"])  # a.png twice: listed once
    assert [i.path.as_posix() for i in found] == ["images/batch/a.png", "images/batch/sub/a.jpg", "images/single.png"]
    assert [i.name for i in found] == ["batch/a", "batch/sub/a", "single"]
    with pytest.raises(UserError, match="do not exist: nope.png"):
        collect_images(["nope.png", "images"])
    # Earlier heatmaps in the output folder are not inputs, even when it lies inside an input folder.
    assert [i.name for i in collect_images(["images"], exclude="images/batch")] == ["images/single"]


def test_predict_scores_like_the_pipeline_and_writes_heatmaps(workspace, capsys):
    assert exit_code(["--category", CATEGORY, "images/single.png", "images/batch", "--batch-size", "2"]) == 0
    out_dir = workspace / "predictions" / CATEGORY
    rows = read_jsonl(out_dir / RESULTS_NAME)
    assert [r["file"] for r in rows] == ["images/single.png", "images/batch/a.png", "images/batch/sub/a.jpg"]
    detector = load_detector(CATEGORY)
    for row in rows:
        assert set(row) == {"file", "score", "threshold", "anomalous", "heatmap"}
        assert row["threshold"] == THRESHOLD and row["anomalous"] == (row["score"] >= THRESHOLD)
        # The same resize as preprocessing and the same scoring as the thresholds/evaluate stages.
        image = read_image(row["file"])
        expected = score_images(detector.model, resize(image, 32)[None], detector.score).scores[0]
        assert row["score"] == pytest.approx(float(expected), rel=1e-6, abs=1e-9)
        heatmap = cv2.imread(row["heatmap"])
        assert heatmap.shape == image.shape  # overlay at the original size
    assert rows[1]["heatmap"] != rows[2]["heatmap"]  # a.png and sub/a.jpg do not collide
    table = capsys.readouterr().out
    assert "file" in table and "verdict" in table and "images/batch/sub/a.jpg" in table
    assert "3 image(s) scored" in table


def test_threshold_decides_the_verdict(workspace):
    inputs = collect_images(["images"])
    for threshold, expected in ((0.0, True), (1e9, False)):
        save_thresholds(workspace / "models" / CATEGORY / "thresholds.json", threshold)
        results = predict_images(load_detector(CATEGORY), inputs, workspace / "out", progress=False)
        assert {r.anomalous for r in results} == {expected}


def test_heatmaps_and_jsonl_are_deterministic(workspace):
    argv = ["--category", CATEGORY, "images"]
    assert exit_code([*argv, "--out", "one"]) == 0
    assert exit_code([*argv, "--out", "two"]) == 0
    one = sorted(p.relative_to(workspace / "one") for p in (workspace / "one").rglob("*.png"))
    assert len(one) == 3
    for rel in one:
        assert (workspace / "one" / rel).read_bytes() == (workspace / "two" / rel).read_bytes()
    assert read_jsonl(workspace / "one" / RESULTS_NAME) == [
        {**r, "heatmap": r["heatmap"].replace("two/", "one/", 1)} for r in read_jsonl(workspace / "two" / RESULTS_NAME)
    ]


def test_unreadable_files_are_reported_and_skipped(workspace, capsys):
    bad = make_unreadable(workspace / "images" / "bad")
    assert exit_code(["--category", CATEGORY, "images", "--batch-size", "2"]) == 0
    err = capsys.readouterr().err
    for path in bad:
        assert f"skipped {path.relative_to(workspace).as_posix()}" in err
    rows = read_jsonl(workspace / "predictions" / CATEGORY / RESULTS_NAME)
    errors = {r["file"]: r["error"] for r in rows if "error" in r}
    assert set(errors) == {p.relative_to(workspace).as_posix() for p in bad}
    assert "empty (0 bytes)" in errors["images/bad/empty.png"]
    assert "not a decodable image" in errors["images/bad/truncated.png"]
    assert sum("score" in r for r in rows) == 3  # the readable ones were all scored


def test_exit_status_2_when_nothing_was_scored(workspace, capsys):
    make_unreadable(workspace / "bad")
    assert exit_code(["--category", CATEGORY, "bad"]) == 2
    err = capsys.readouterr().err
    assert "none of the 3 file(s) could be read" in err
    assert len(read_jsonl(workspace / "predictions" / CATEGORY / RESULTS_NAME)) == 3  # errors still recorded


@pytest.mark.parametrize(
    ("remove", "expected"),
    [
        ("model.pt", r"models/weave/model\.pt is missing; run `dvc repro` \(or `dvc pull`\)"),
        (
            "thresholds.json",
            r"models/weave/thresholds\.json is missing; run `dvc repro thresholds@weave` \(or `dvc pull`\)",
        ),
    ],
)
def test_missing_model_files_exit_2_and_say_what_to_run(workspace, capsys, remove, expected):
    (workspace / "models" / CATEGORY / remove).unlink()
    assert exit_code(["--category", CATEGORY, "images"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and re.search(expected, err), err
    assert not (workspace / "predictions").exists()


def test_usage_errors_exit_2(workspace, capsys):
    assert exit_code(["--category", CATEGORY, "missing_folder"]) == 2
    assert "missing_folder" in capsys.readouterr().err
    assert exit_code(["--category", "nonexistent", "images"]) == 2  # not in data.categories
    assert "nonexistent" in capsys.readouterr().err
    assert exit_code(["--category", CATEGORY]) == 2  # no PATH (argparse)


def test_rev_reads_model_thresholds_and_params_of_that_revision(workspace):
    """Commit a model (DVC-tracked), then change everything in the workspace: ``--rev`` still
    uses the committed model, threshold and score params, and an experiment name works too."""
    repo = workspace
    git("init", "-q", "-b", "main", cwd=repo)
    dvc("init", "-q", cwd=repo)
    dvc("add", "-q", f"models/{CATEGORY}/model.pt", cwd=repo)
    git("add", "-A", cwd=repo)
    git("commit", "-q", "-m", "v1", cwd=repo)
    v1 = predict_images(load_detector(CATEGORY), collect_images(["images"]), repo / "v1", progress=False)

    # New weights, threshold and score params in the workspace, saved as a DVC experiment.
    raw = yaml.safe_load((repo / "params.yaml").read_text())
    raw["score"]["map"] = "l2"
    (repo / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    save_model(repo / "models" / CATEGORY / "model.pt", raw, seed=1)
    save_thresholds(repo / "models" / CATEGORY / "thresholds.json", 0.25)
    dvc("add", "-q", f"models/{CATEGORY}/model.pt", cwd=repo)
    dvc("exp", "save", "-q", "-n", "new-weights", cwd=repo)
    workspace_now = load_detector(CATEGORY)
    assert (workspace_now.threshold, workspace_now.score.map) == (0.25, "l2")
    now = predict_images(workspace_now, collect_images(["images"]), repo / "now", progress=False)
    assert all(
        a.score != pytest.approx(b.score, rel=1e-3) for a, b in zip(now, v1, strict=False)
    )  # the check below can fail

    # The real command line, in a fresh process, against the committed revision.
    result = run(
        [
            sys.executable,
            "-m",
            "anomaly_spotter.deploy.predict",
            "--category",
            CATEGORY,
            "--rev",
            "HEAD",
            "images",
            "--out",
            "at_head",
        ],
        cwd=repo,
    )
    assert "revision HEAD model" in result.stdout
    rows = read_jsonl(repo / "at_head" / RESULTS_NAME)
    assert [r["threshold"] for r in rows] == [THRESHOLD] * 3
    assert [r["score"] for r in rows] == pytest.approx([r.score for r in v1], rel=1e-6)

    experiment = load_detector(CATEGORY, rev="new-weights")
    assert (experiment.threshold, experiment.score.map) == (0.25, "l2")
    for name, tensor in experiment.model.state_dict().items():
        assert torch.equal(tensor, workspace_now.model.state_dict()[name]), name

    with pytest.raises(UserError, match="cannot read params.yaml at revision 'no-such-rev'"):
        load_detector(CATEGORY, rev="no-such-rev")


def test_thresholds_made_with_other_score_params_are_refused(workspace, capsys):
    """predict checks thresholds.json's record against params.yaml's score, like evaluate."""
    raw = yaml.safe_load((workspace / "params.yaml").read_text())
    raw["score"]["smoothing_sigma"] = 2.0  # params.yaml edited, thresholds not re-run
    (workspace / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    with pytest.raises(
        ThresholdsMismatchError, match=r"smoothing_sigma is 1\.0 in models/weave/thresholds\.json but 2\.0 now"
    ):
        load_detector(CATEGORY)
    assert exit_code(["--category", CATEGORY, "images"]) == 2
    err = capsys.readouterr().err
    assert "than predict uses now" in err and "dvc repro thresholds@weave" in err and "Traceback" not in err
    assert not (workspace / "predictions").exists()
    save_thresholds(workspace / "models" / CATEGORY / "thresholds.json", THRESHOLD)  # re-run: accepted
    assert load_detector(CATEGORY).score.smoothing_sigma == 2.0


def test_thresholds_without_a_score_record_are_refused(workspace, capsys):
    path = workspace / "models" / CATEGORY / "thresholds.json"
    old = {k: v for k, v in json.loads(path.read_text()).items() if k not in ("format", "score", "validation")}
    path.write_text(json.dumps(old))
    assert exit_code(["--category", CATEGORY, "images"]) == 2
    err = capsys.readouterr().err
    assert (
        "models/weave/thresholds.json does not record the score params" in err and "dvc repro thresholds@weave" in err
    )


def test_maps_are_exported_at_the_original_size_for_a_benchmark_server(workspace):
    """MVTec AD 2's private splits have no ground truth: scored here, judged by the server."""
    import tifffile

    from anomaly_spotter.detectors.anomaly_map import resize_to

    assert exit_code(["--category", CATEGORY, "images/single.png", "--maps", "--out", "server"]) == 0
    (row,) = read_jsonl(workspace / "server" / RESULTS_NAME)
    assert row["map"] == "server/single.tiff"
    exported = tifffile.imread(row["map"])
    detector = load_detector(CATEGORY)
    expected = score_images(detector.model, resize(read_image("images/single.png"), 32)[None], detector.score).maps[0]
    assert exported.dtype == np.float32 and exported.shape == (40, 56)
    np.testing.assert_allclose(exported, resize_to(expected, (40, 56)), rtol=1e-6, atol=1e-7)
