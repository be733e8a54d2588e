"""ONNX export: onnxruntime agrees with PyTorch (batches of 1 and 3), bytes are deterministic,
the metrics file has its keys, a mismatch stops the stage, and dvc.yaml wires the stage."""

from __future__ import annotations

import dataclasses
import json
import sys

import numpy as np
import pytest
import torch
import yaml

from anomaly_spotter.config import parse_params
from anomaly_spotter.deploy import export
from anomaly_spotter.detectors import build_detector as build_model
from anomaly_spotter.detectors import load_model
from anomaly_spotter.errors import UserError
from anomaly_spotter.scoring import output_maps
from anomaly_spotter.tensors import to_tensor
from conftest import REPO, deep_update, make_processed, run
from conftest import TINY_RECONSTRUCTION as TINY_PARAMS
from test_predict import save_model

PARAMS = parse_params(TINY_PARAMS)
SCORE = PARAMS.score  # the tiny params: SSIM map, window 5, smoothing 1 px


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "model.pt"
    save_model(path, TINY_PARAMS, seed=0)
    return path


@pytest.fixture(scope="module")
def model(model_file):
    return load_model(model_file)[0]


def random_images(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)


@pytest.mark.parametrize("batch", [1, 3])
def test_onnxruntime_matches_pytorch(model, batch):
    session = export.onnx_session(export.onnx_bytes(model, SCORE))
    x = to_tensor(random_images(batch, seed=batch))
    recon, maps, scores = session.run(None, {"image": x.numpy()})
    with torch.inference_mode():
        torch_recon = model(x)
        torch_maps = output_maps(model, x, torch_recon, SCORE)
    assert recon.shape == (batch, 3, 32, 32) and maps.shape == (batch, 32, 32) and scores.shape == (batch,)
    assert np.abs(recon - torch_recon.numpy()).max() <= 1e-5
    # The same anomaly_map function and params, fed the ONNX and the PyTorch reconstruction.
    onnx_maps = output_maps(model, x, torch.from_numpy(recon), SCORE)
    assert np.abs(onnx_maps.numpy() - torch_maps.numpy()).max() <= export.MAX_MAP_DIFF
    assert np.abs(maps - torch_maps.numpy()).max() <= export.MAX_MAP_DIFF  # tiny model: in-graph map as close


@pytest.mark.parametrize(
    "changes",
    [
        {"map": "l2", "image_score": "max"},
        {"map": "combined", "smoothing_sigma": 0.0},
        {"map": "ssim", "topk_percent": 10.0},
    ],
)
def test_every_map_kind_and_reduction_exports(model, changes):
    config = dataclasses.replace(SCORE, batch_size=3, **changes)
    diffs = export.compare_with_torch(model, export.onnx_bytes(model, config), random_images(4), config)
    assert diffs["batch_sizes_checked"] == [1, 3]  # the dynamic batch axis in use
    assert diffs["onnx_max_abs_diff_map"] <= export.MAX_MAP_DIFF
    assert diffs["onnx_max_abs_diff_map_in_graph"] <= export.MAX_MAP_DIFF
    assert diffs["onnx_max_abs_diff_score"] <= export.MAX_MAP_DIFF


def test_discriminative_model_exports_its_head_map():
    """model.kind discriminative: the graph's map is the segmentation head's, within the same limit."""
    raw = deep_update(
        TINY_PARAMS,
        {"model": {"kind": "discriminative", "head_channels": 4, "head_depth": 2}, "anomalies": {"probability": 0.5}},
    )
    params = parse_params(raw)
    torch.manual_seed(0)
    model = build_model(params).eval()
    config = dataclasses.replace(params.score, batch_size=3)
    model_bytes, metrics = export.export_model(model, random_images(4), config)
    assert metrics["map_kind"] == "head"
    assert metrics["onnx_max_abs_diff_map_in_graph"] <= export.MAX_MAP_DIFF
    assert metrics["onnx_max_abs_diff_score"] <= export.MAX_MAP_DIFF
    with torch.inference_mode():
        maps = output_maps(model, to_tensor(random_images(2)), model(to_tensor(random_images(2))), config)
    assert float(maps.min()) >= 0.0 and float(maps.max()) <= 1.0  # sigmoid probabilities


def test_export_is_deterministic(model, model_file):
    first = export.onnx_bytes(model, SCORE)
    assert export.onnx_bytes(load_model(model_file)[0], SCORE) == first  # a fresh load, same bytes
    summary = export.graph_summary(first)
    assert summary == {
        "opset": 17,
        "inputs": ["image"],
        "outputs": ["reconstruction", "anomaly_map", "score"],
        "dynamic_batch": True,
    }


def test_export_stage_writes_model_and_metrics(tmp_path, model_file):
    """The stage script end to end (its own process), twice: same bytes, metrics with their keys."""
    raw = deep_update(yaml.safe_load((REPO / "params.yaml").read_text()), TINY_PARAMS)
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(raw))
    data = make_processed(tmp_path, raw)
    outputs = []
    for name in ("a", "b"):
        out, metrics_path = tmp_path / name / "model.onnx", tmp_path / name / "weave_export.json"
        result = run(
            [
                sys.executable,
                "stages/export.py",
                "--category",
                "weave",
                "--params",
                str(params_file),
                "--model",
                str(model_file),
                "--data",
                str(data),
                "--out",
                str(out),
                "--metrics",
                str(metrics_path),
            ],
            cwd=REPO,
        )
        assert "opset 17" in result.stdout
        outputs.append((out.read_bytes(), metrics_path.read_bytes()))
    assert outputs[0] == outputs[1]
    metrics = json.loads(outputs[0][1])
    assert metrics["opset"] == 17 and metrics["dynamic_batch"] is True and metrics["exporter"] == "torchscript"
    assert metrics["images_checked"] == 10 and metrics["batch_sizes_checked"] == [1, 9]
    assert metrics["onnx_max_abs_diff_map"] <= export.MAX_MAP_DIFF
    assert metrics["onnx_max_abs_diff_reconstruction"] <= 1e-5
    assert {"onnx_max_abs_diff_map_in_graph", "onnx_max_abs_diff_score", "map_kind", "tolerance_map"} <= set(metrics)


def test_export_is_checked_on_evenly_spread_test_images(tmp_path, model_file, monkeypatch):
    raw = deep_update(yaml.safe_load((REPO / "params.yaml").read_text()), TINY_PARAMS)
    data = make_processed(tmp_path, raw)
    monkeypatch.setattr(export, "CHECK_IMAGES", 4)
    out, metrics_path = tmp_path / "out" / "model.onnx", tmp_path / "out" / "export.json"
    metrics = export.export_category(model_file, data, out, metrics_path, parse_params(raw).score)
    assert metrics["test_images"] == 10 and metrics["images_checked"] == 4 and metrics["batch_sizes_checked"] == [1, 3]
    assert export.check_indices(10, 4).tolist() == [0, 3, 6, 9]  # the first and last type included


def test_mismatch_stops_the_export_and_writes_nothing(tmp_path, model_file, monkeypatch):
    """Force a mismatch: the exported graph holds other weights than the PyTorch model."""
    other = tmp_path / "other.pt"
    save_model(other, TINY_PARAMS, seed=1)
    real_onnx_bytes = export.onnx_bytes
    monkeypatch.setattr(export, "onnx_bytes", lambda model, config: real_onnx_bytes(load_model(other)[0], config))
    data = make_processed(tmp_path, TINY_PARAMS)
    out, metrics_path = tmp_path / "out" / "model.onnx", tmp_path / "out" / "weave_export.json"
    with pytest.raises(
        UserError,
        match=(
            r"ONNX export of .*model\.pt does not match PyTorch, so nothing was written: "
            r"anomaly maps from the ONNX reconstructions differ by up to"
        ),
    ):
        export.export_category(model_file, data, out, metrics_path, SCORE)
    assert not out.exists() and not metrics_path.exists()


def test_missing_model_names_the_file(tmp_path):
    with pytest.raises(UserError, match=r"missing\.pt is missing; run `dvc repro`"):
        export.export_category(tmp_path / "missing.pt", tmp_path, tmp_path / "m.onnx", tmp_path / "m.json", SCORE)


def test_dvc_yaml_declares_the_export_stage():
    stage = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["export"]
    assert stage["foreach"] == "${data.categories}"
    do = stage["do"]
    assert {
        "stages/export.py",
        "src/anomaly_spotter/deploy/export.py",
        "src/anomaly_spotter/detectors/anomaly_map.py",
        "models/${item}/model.pt",
        "data/processed/${item}",
    } <= set(do["deps"])
    assert set(do["params"]) == {"score", "presets"}
    assert do["outs"] == ["models/${item}/model.onnx"]
    assert do["metrics"] == [{"metrics/${item}_export.json": {"cache": False}}]
    for flag, path in (
        ("--model", "models/${item}/model.pt"),
        ("--out", "models/${item}/model.onnx"),
        ("--metrics", "metrics/${item}_export.json"),
    ):
        assert f"{flag} {path}" in do["cmd"]
