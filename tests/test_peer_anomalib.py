"""bench/peer_anomalib.py without anomalib: the wheel -> timm key mapping, set choice, JSON, metrics."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from anomaly_spotter.detectors.backbones import weight_file
from conftest import REPO
from conftest_data import write_image

MANIFEST = REPO / "bench" / "results" / "timm_tf_efficientnet_lite2_keys.json"


def _load(name: str):
    sys.path.insert(0, str(REPO / "bench"))
    spec = importlib.util.spec_from_file_location(name, REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


keymap = _load("peer_keymap")
peer = _load("peer_anomalib")


@pytest.fixture(scope="module")
def wheel_state():
    return torch.load(weight_file("efficientnet_lite2").path, map_location="cpu", weights_only=True)


def test_mapping_gives_timm_keys_and_shapes_exactly(wheel_state):
    timm_keys = json.loads(MANIFEST.read_text())["keys"]
    mapped = keymap.wheel_to_timm(wheel_state)
    assert sorted(mapped) == sorted(timm_keys)
    assert {k: list(v.shape) for k, v in mapped.items()} == timm_keys
    # Renaming only: every tensor is one of the wheel's, each used once.
    assert len({id(v) for v in mapped.values()}) == len(wheel_state) == len(mapped)


def test_mapping_places_blocks_by_stage(wheel_state):
    mapped = keymap.wheel_to_timm(wheel_state, with_head=False)
    assert mapped["blocks.2.2.conv_pwl.weight"] is wheel_state["_blocks.6._project_conv.weight"]  # our level 2 end
    assert mapped["blocks.4.3.conv_pwl.weight"] is wheel_state["_blocks.14._project_conv.weight"]  # our level 3 end
    assert mapped["blocks.0.0.conv_pw.weight"] is wheel_state["_blocks.0._project_conv.weight"]  # separable block
    assert mapped["bn1.running_var"] is wheel_state["_bn0.running_var"]
    assert not any(k.startswith(("conv_head", "bn2", "classifier")) for k in mapped)
    stages = keymap.block_stages(wheel_state)
    assert [sum(1 for s, _ in stages if s == i) for i in range(7)] == [1, 3, 3, 4, 4, 5, 1]


def test_mapping_refuses_unknown_keys():
    state = {"_blocks.0._project_conv.weight": torch.zeros(16, 32, 1, 1), "_blocks.0._se_reduce.weight": torch.zeros(1)}
    with pytest.raises(ValueError, match="unknown block module"):
        keymap.wheel_to_timm(state)
    with pytest.raises(ValueError, match="unknown key"):
        keymap.wheel_to_timm({"_blocks.0._project_conv.weight": torch.zeros(16, 32, 1, 1), "stem.weight": 0})
    with pytest.raises(ValueError, match="not an efficientnet-lite"):
        keymap.block_stages({"conv.weight": torch.zeros(1)})


def test_set_choice_skips_absent_and_refuses_none(tmp_path):
    present = {"tire": tmp_path}
    assert peer.choose_sets(None, present) == (["tire"], [])
    assert peer.choose_sets(["tire", "nosuch"], present) == (["tire"], ["nosuch"])
    with pytest.raises(SystemExit, match="no dataset to run"):
        peer.choose_sets(["nosuch"], present)


def _side(**extra):
    figures = {"fit_seconds": 2.0, "test_seconds": 1.0, "peak_rss_mb": 900.0, "image_auroc": 0.9}
    return {**figures, "pixel_auroc": 0.95, "au_pro": 0.8, **extra}


def test_results_json_merges_sets_and_needs_every_figure(tmp_path):
    out = tmp_path / "peer.json"
    entry = {"ours": _side(whole_run_seconds=20.0), "anomalib": _side(fit_seconds=100.0)}
    peer.write_results(out, {"a": entry}, {"cpu": "x"})
    peer.write_results(out, {"b": entry}, {"cpu": "y"})
    written = json.loads(out.read_text())
    assert sorted(written["datasets"]) == ["a", "b"] and written["conditions"] == {"cpu": "y"}
    assert set(written["datasets"]["a"]) == {"ours", "anomalib"}
    with pytest.raises(ValueError, match="ours lacks whole_run_seconds"):
        peer.write_results(out, {"c": {"ours": _side(), "anomalib": _side()}}, {})
    with pytest.raises(ValueError, match=r"anomalib lacks \['au_pro'\]"):
        bad = _side()
        del bad["au_pro"]
        peer.write_results(out, {"c": {"ours": _side(whole_run_seconds=1.0), "anomalib": bad}}, {})


def test_targets_compare_speed_and_metrics():
    result = peer.targets(_side(whole_run_seconds=20.0, pixel_auroc=0.94), _side(fit_seconds=100.0, test_seconds=10.0))
    assert result["fit_speedup"] == 50.0 and result["whole_run_speedup"] == 5.5
    assert result["metrics_lower_than_anomalib"] == ["pixel_auroc"]
    assert result["met"] == {"no_metric_lower": False, "fit_20x": True, "whole_run_4x": True}


def test_metrics_at_original_resolution_from_raw_maps(tmp_path):
    # Two 16x24 originals, one with a 4x4 defect; maps at 8x8 "model" resolution.
    mask = np.zeros((16, 24), np.uint8)
    mask[4:8, 12:16] = 255
    write_image(tmp_path / "gt.png", mask)
    items = (
        SimpleNamespace(label=0, mask=None, height=16, width=24, defect_type="good"),
        SimpleNamespace(label=1, mask="gt.png", height=16, width=24, defect_type="cut"),
    )
    data = SimpleNamespace(test_items=items, test_labels=np.array([0, 1]))
    good = np.zeros((2, 8, 8), np.float32)
    good[1, 2:4, 4:6] = 1.0  # the defect's place after resizing 8x8 -> 16x24
    found = peer.side_metrics(data, tmp_path, good, np.array([0.1, 0.9]))
    assert found["image_auroc"] == 1.0 and found["pixel_auroc"] > 0.95 and found["au_pro"] > 0.9
    wrong = peer.side_metrics(data, tmp_path, np.roll(good, 4, axis=2), np.array([0.9, 0.1]))
    assert wrong["image_auroc"] == 0.0 and wrong["pixel_auroc"] < 0.7 and wrong["au_pro"] < 0.2
    with pytest.raises(ValueError, match="1 maps / 2 scores for 2 test images"):
        peer.side_metrics(data, tmp_path, good[:1], np.array([0.1, 0.9]))


def test_worker_runs_without_project_imports():
    imports = re.compile(r"^\s*(?:from|import) anomaly_spotter", re.MULTILINE)
    source = (REPO / "bench" / "peer_anomalib_worker.py").read_text()
    assert not imports.search(source) and "from peer_keymap import wheel_to_timm" in source
    assert not imports.search((REPO / "bench" / "peer_keymap.py").read_text())
    assert Path(REPO / "bench" / "peer_requirements.txt").read_text().count("anomalib==") == 1


def test_localisation_variants_swap_one_choice_each():
    loc = _load("peer_localisation")
    assert loc.kernel_size(4.0, "ours") == 25 and loc.kernel_size(4.0, "anomalib") == 33
    distances = torch.zeros(1, 4, 4)
    distances[0, 1, 1] = 1.0
    near = loc.make_maps(distances, 16, 0.5, "nearest", "ours", "replicate")
    smooth = loc.make_maps(distances, 16, 0.5, "bilinear", "ours", "replicate")
    assert near.shape == smooth.shape == (1, 16, 16)
    # Nearest keeps the cell a flat 4x4 block; bilinear spreads it past the block's edge.
    assert near[0, 5:7, 5:7].min() > 0.9 and near[0, 0, 0] == 0 and smooth[0, 3, 5] > near[0, 3, 5]
    assert all(set(swap) <= set(loc.OURS) for swap in loc.VARIANTS.values())
