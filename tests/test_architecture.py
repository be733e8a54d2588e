"""The shape of the package: no import loops, inference without the training stack, DVC deps
equal to what each stage imports, one registry of detector kinds, and a new kind in one module."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from anomaly_spotter import config
from anomaly_spotter.detectors import DETECTORS, load_model
from anomaly_spotter.detectors.base import Detector, FitResult, FitRun, save_model_file
from import_graph import ROOT, SRC, closure, edges, find_cycle, module_file, package_modules

STAGES = ("fetch", "preprocess", "train", "thresholds", "evaluate", "export", "report")
INFERENCE = ("anomaly_spotter.scoring", "anomaly_spotter.thresholds", "anomaly_spotter.evaluation", "anomaly_spotter.export", "anomaly_spotter.predict")


def test_no_import_loops():
    assert find_cycle() is None


def test_the_graph_sees_deferred_imports_and_skips_type_checking_ones():
    """The walker itself: a function-level import is an edge, an ``if TYPE_CHECKING:`` one is not."""
    fetch = edges(module_file("anomaly_spotter.fetch"))
    assert module_file("anomaly_spotter.mvtec") in fetch  # imported inside fetch_category
    synthetic = edges(module_file("anomaly_spotter.synthetic_dataset"))
    assert module_file("anomaly_spotter.config") not in synthetic  # annotation-only import


@pytest.mark.parametrize("module", INFERENCE)
def test_inference_does_not_import_the_training_stack(module):
    training = SRC / "anomaly_spotter" / "training"
    reached = closure(module_file(module))
    assert not [p for p in reached if p.is_relative_to(training)], f"{module} reaches the training package"


def test_inference_runs_without_loading_training_in_a_fresh_process():
    """The same at run time: importing every inference module loads no training module, nor DVCLive."""
    code = "import sys; " + "; ".join(f"import {m}" for m in INFERENCE) + "; print(sorted(m for m in sys.modules if m.startswith(('anomaly_spotter.training', 'dvclive', 'albumentations'))))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, env={"PYTHONPATH": str(SRC), "PATH": ""}, check=True)
    assert out.stdout.strip() == "[]"


def _declared_code_deps(stage: str) -> set[str]:
    """The stage's code deps in dvc.yaml, folders expanded to the .py files under them."""
    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"][stage]
    deps = spec.get("do", spec)["deps"]
    files: set[str] = set()
    for dep in deps:
        path = ROOT / dep
        if dep.startswith(("src/", "stages/")):
            if path.is_dir():
                files.update(str(p.relative_to(ROOT)) for p in path.rglob("*.py"))
            else:
                files.add(dep)
    return files


@pytest.mark.parametrize("stage", STAGES)
def test_every_stage_depends_on_exactly_the_code_it_imports(stage):
    script = ROOT / "stages" / f"{stage}.py"
    imported = {str(p.relative_to(ROOT)) for p in closure(script)} | {"stages/_bootstrap.py"}
    declared = _declared_code_deps(stage)
    assert sorted(imported - declared) == [], "imported but not in dvc.yaml deps (edits would re-run nothing)"
    assert sorted(declared - imported) == [], "in dvc.yaml deps but never imported (edits re-run it for nothing)"


def test_every_stage_has_a_script_of_its_name():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert set(stages) == set(STAGES)
    for name, spec in stages.items():
        assert spec.get("do", spec)["cmd"].startswith(f"python stages/{name}.py "), name


def test_the_registry_and_config_list_the_same_kinds():
    assert tuple(DETECTORS) == config.MODEL_KINDS
    for kind, cls in DETECTORS.items():
        assert cls.kind == kind and config.MAP_KINDS[kind]


def test_each_module_is_imported_by_something_or_is_an_entry_point():
    """No orphans: every module is reachable from a stage, an entry point (predict, yardstick, plot template, README table) or a package __init__."""
    roots = [ROOT / "stages" / f"{s}.py" for s in STAGES] + [module_file(m) for m in ("anomaly_spotter.predict", "anomaly_spotter.yardstick", "anomaly_spotter.plots_template", "anomaly_spotter.readme_table")]
    reached = set().union(*(closure(r) for r in roots))
    assert [str(p.relative_to(SRC)) for p in package_modules() if p not in reached] == []


# -- a new kind is one module: a fixed-map detector through thresholds, evaluate and export ------


class MeanIntensityDetector(Detector):
    """A detector with no weights to learn: the anomaly map is the pixel's mean intensity in [0, 1].

    What the README's "Adding a detector" section walks through, minus the learning.
    """

    kind = "mean_intensity"

    def __init__(self, image_size: int) -> None:
        super().__init__()
        self.image_size = image_size
        self.register_buffer("scale", torch.tensor(0.5))  # something in the state dict, as a real kind has

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.mean(dim=1) + 1.0) * self.scale  # (N, S, S) in [0, 1]

    @classmethod
    def from_params(cls, params: Any) -> MeanIntensityDetector:
        return cls(params.preprocess.image_size)

    @classmethod
    def from_architecture(cls, arch: dict[str, Any]) -> MeanIntensityDetector:
        return cls(arch["image_size"])

    def architecture(self) -> dict[str, Any]:
        return {"kind": self.kind, "image_size": self.image_size}

    @classmethod
    def fit(cls, data: Any, params: Any, run: FitRun) -> FitResult:
        detector = cls.from_params(params)
        save_model_file(run.model_path, detector.state_dict(), detector.architecture())
        return FitResult(True, "nothing to learn")

    def anomaly_maps(self, images: torch.Tensor, output: torch.Tensor, score: config.ScoreConfig) -> torch.Tensor:
        return output.float()


@pytest.fixture
def mean_intensity_kind(monkeypatch):
    monkeypatch.setitem(DETECTORS, MeanIntensityDetector.kind, MeanIntensityDetector)
    monkeypatch.setitem(config.MAP_KINDS, MeanIntensityDetector.kind, ("intensity",))
    return MeanIntensityDetector


def test_a_new_kind_runs_through_fit_thresholds_evaluate_and_export(mean_intensity_kind, tmp_path):
    from anomaly_spotter.evaluation import evaluate_category
    from anomaly_spotter.export import export_category
    from anomaly_spotter.processed import load_processed
    from conftest import TINY_PARAMS, make_processed, validation_thresholds

    params = config.parse_params(TINY_PARAMS)
    root = make_processed(tmp_path, TINY_PARAMS)
    data = load_processed(root)
    model_path = tmp_path / "model.pt"
    assert mean_intensity_kind.fit(data, params, FitRun(model_path, tmp_path / "ck", tmp_path / "logs")).written
    model, _ = load_model(model_path)
    assert isinstance(model, MeanIntensityDetector)

    thresholds = validation_thresholds(model, data, params)
    results = evaluate_category(
        data, tmp_path / "raw", model, thresholds, params, category="weave",
        metrics_path=tmp_path / "metrics.json", plots_dir=tmp_path / "plots", results_dir=tmp_path / "results",
    )
    # The map is the mean intensity: the metrics computed by hand from the same numbers must agree.
    from anomaly_spotter import metrics as m

    intensity = (data.test.astype(np.float64).mean(axis=-1) / 255.0)  # (N, S, S), what the map is up to float32
    scores = np.array([np.sort(s.ravel())[-max(1, int(np.ceil(s.size * params.score.topk_percent / 100))):].mean() for s in intensity])
    assert results["image_auroc"] == pytest.approx(m.image_auroc(data.test_labels, scores), abs=1e-6)
    assert (tmp_path / "plots" / "heatmaps.png").is_file()

    metrics = export_category(model_path, root, tmp_path / "model.onnx", tmp_path / "export.json", params.score)
    assert metrics["outputs"] == ["anomaly_map", "score"] and metrics["onnx_max_abs_diff_reconstruction"] is None
    assert metrics["onnx_max_abs_diff_map_in_graph"] < 1e-5 and metrics["map_kind"] == "intensity"
    assert json.loads((tmp_path / "export.json").read_text())["images_checked"] == len(data.test)


def test_artifacts_name_every_category_of_params():
    # DVC has no foreach for `artifacts:`, so dvc.yaml spells them out: <category>-onnx and
    # <category>-pt for every category of params.yaml, pointing at that category's outputs.
    import yaml

    pipeline = yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))
    categories = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))["data"]["categories"]
    expected = {}
    for cat in categories:
        expected[f"{cat}-onnx"] = f"models/{cat}/model.onnx"
        expected[f"{cat}-pt"] = f"models/{cat}/model.pt"
    artifacts = pipeline["artifacts"]
    assert {name: spec["path"] for name, spec in artifacts.items()} == expected
    for name, spec in artifacts.items():
        assert spec["type"] == "model" and spec["desc"] and name.split("-")[0] in spec["labels"]
