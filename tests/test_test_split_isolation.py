"""The test split cannot reach training or thresholds; stale thresholds are refused downstream.

The real ``train`` and ``thresholds`` stage scripts run on tiny params; then every test array
and test entry of ``data/processed/<category>`` is replaced (other images, other masks, fewer
items, flipped labels) and both stages run again: ``model.pt`` and ``thresholds.json`` must
come out byte-identical. The same trained category then checks that the ``evaluate`` stage and
``bench/evaluate_speed.py`` read ``thresholds.json`` through the one reader and refuse a file
made with other score params.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import yaml

from anomaly_spotter.dataset.processed import save_npy
from conftest import REPO, TINY_PARAMS, make_processed, tool_env

CATEGORY = "weave"


def stage(root, name: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable,
        str(REPO / "stages" / f"{name}.py"),
        "--category",
        CATEGORY,
        "--params",
        str(root / "params.yaml"),
        *args,
    ]
    result = subprocess.run(cmd, cwd=root, env=tool_env(), capture_output=True, text=True, check=False, timeout=600)
    if check:
        assert result.returncode == 0, f"{name} exited {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


def train_and_threshold(root, data, out) -> None:
    stage(
        root,
        "train",
        "--data",
        str(data),
        "--model",
        str(out / "model.pt"),
        "--checkpoints",
        str(out / "ck"),
        "--logs",
        str(out / "logs"),
    )
    stage(
        root, "thresholds", "--data", str(data), "--model", str(out / "model.pt"), "--out", str(out / "thresholds.json")
    )


def scramble_test_split(processed) -> None:
    """Replace everything test: other pixels, other masks, one item fewer, labels flipped, other names."""
    rng = np.random.default_rng(123)
    test = np.load(processed / "test.npy")
    masks = np.load(processed / "test_masks.npy")
    save_npy(processed / "test.npy", rng.integers(0, 256, (len(test) - 1, *test.shape[1:]), dtype=np.uint8))
    save_npy(processed / "test_masks.npy", rng.integers(0, 2, (len(masks) - 1, *masks.shape[1:]), dtype=np.uint8))
    index = json.loads((processed / "index.json").read_text())
    index["test"] = [
        {
            **item,
            "file": f"test/other/{i:03d}.png",
            "label": 1 - item["label"],
            "defect_type": "other",
            "height": item["height"] + 1,
        }
        for i, item in enumerate(index["test"][:-1])
    ]
    (processed / "index.json").write_text(json.dumps(index))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("isolation")
    processed = make_processed(root, TINY_PARAMS, CATEGORY)
    (root / "params.yaml").write_text(yaml.safe_dump(TINY_PARAMS))
    train_and_threshold(root, processed, root / "original")
    return root, processed


def test_changing_the_test_split_changes_neither_model_nor_thresholds(trained, tmp_path):
    root, processed = trained
    changed = tmp_path / "processed"
    shutil.copytree(processed, changed)
    scramble_test_split(changed)
    for name in ("train.npy", "val.npy"):
        assert (changed / name).read_bytes() == (processed / name).read_bytes()
    assert (changed / "test.npy").read_bytes() != (processed / "test.npy").read_bytes()
    train_and_threshold(root, changed, tmp_path / "rerun")
    for name in ("model.pt", "thresholds.json"):
        assert (tmp_path / "rerun" / name).read_bytes() == (root / "original" / name).read_bytes(), name


def test_thresholds_json_records_the_stage_params(trained):
    from anomaly_spotter.config import parse_params
    from anomaly_spotter.dataset.processed import load_processed
    from anomaly_spotter.detectors import load_model
    from anomaly_spotter.evaluation.thresholds import VALIDATION_SOURCE, read_thresholds, score_record

    root, processed = trained
    written = read_thresholds(root / "original" / "thresholds.json")
    model, _ = load_model(root / "original" / "model.pt")
    assert written.score == score_record(parse_params(TINY_PARAMS).score, model)
    assert (
        written.score["map"] == "head" and written.score["smoothing_sigma"] == 1.0 and written.score["image_size"] == 32
    )
    assert written.validation_source == VALIDATION_SOURCE
    assert written.validation_images == len(load_processed(processed).val) > 0


def evaluate_args(root, processed, out):
    return (
        "--data",
        str(processed),
        "--raw",
        str(root / "raw"),
        "--model",
        str(root / "original" / "model.pt"),
        "--thresholds",
        str(root / "original" / "thresholds.json"),
        "--metrics",
        str(out / "metrics.json"),
        "--plots",
        str(out / "plots"),
        "--results",
        str(out / "results"),
    )


def test_evaluate_stage_refuses_thresholds_made_with_other_score_params(trained, tmp_path):
    root, processed = trained
    ok = stage(root, "evaluate", *evaluate_args(root, processed, tmp_path / "ok"))
    assert "image AUROC" in ok.stdout and (tmp_path / "ok" / "metrics.json").is_file()

    edited = yaml.safe_load((root / "params.yaml").read_text())
    edited["score"] = {**edited["score"], "smoothing_sigma": 2.0}  # params changed, thresholds not re-run
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(edited))
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "stages" / "evaluate.py"),
            "--category",
            CATEGORY,
            "--params",
            str(tmp_path / "params.yaml"),
            *evaluate_args(root, processed, tmp_path / "stale"),
        ],
        cwd=root,
        env=tool_env(),
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert result.returncode == 2, result.stderr
    thresholds_file = str(root / "original" / "thresholds.json")
    assert f"smoothing_sigma is 1.0 in {thresholds_file} but 2.0 now" in result.stderr
    assert "dvc repro thresholds@weave" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "stale" / "metrics.json").exists()


def test_bench_reads_thresholds_through_the_same_reader(trained, tmp_path):
    """bench/evaluate_speed.py --category: runs on a matching file, refuses a stale one."""
    root, processed = trained
    project = tmp_path / "project"
    (project / "bench").mkdir(parents=True)
    shutil.copy2(REPO / "bench" / "evaluate_speed.py", project / "bench")
    (project / "src").symlink_to(REPO / "src")
    (project / "data" / "processed").mkdir(parents=True)
    (project / "data" / "processed" / CATEGORY).symlink_to(processed)
    (project / "data" / "raw").mkdir(parents=True)
    (project / "data" / "raw" / CATEGORY).symlink_to(root / "raw")
    (project / "models").mkdir()
    (project / "models" / CATEGORY).symlink_to(root / "original")
    params = yaml.safe_load((root / "params.yaml").read_text())
    cmd = [sys.executable, str(project / "bench" / "evaluate_speed.py"), "--category", CATEGORY]

    (project / "params.yaml").write_text(yaml.safe_dump(params))
    ok = subprocess.run(cmd, cwd=project, env=tool_env(), capture_output=True, text=True, check=False, timeout=600)
    assert ok.returncode == 0, ok.stderr
    assert "all metrics" in ok.stdout

    params["score"] = {**params["score"], "image_score": "max"}
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    stale = subprocess.run(cmd, cwd=project, env=tool_env(), capture_output=True, text=True, check=False, timeout=600)
    assert stale.returncode != 0
    assert (
        "ThresholdsMismatchError" in stale.stderr
        and "image_score is 'topk_mean'" in stale.stderr
        and "than this benchmark uses now" in stale.stderr
    )
