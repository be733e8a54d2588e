"""The shape of the package: one folder per concern with imports running one way (no loops, no
arrow back up), inference without the training stack, DVC deps equal to what each stage imports,
one registry of detector kinds whose classes declare their own facts, and a new kind in one module."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from anomaly_spotter import config
from anomaly_spotter.detectors import DETECTORS, check_params, load_model, param_problems
from anomaly_spotter.detectors.base import Detector
from anomaly_spotter.training import FitRun, fit_detector
from import_graph import ROOT, SRC, closure, edges, find_cycle, module_file, module_name, package_modules

STAGES = ("fetch", "preprocess", "train", "thresholds", "evaluate", "export", "report")
INFERENCE = (
    "anomaly_spotter.scoring",
    "anomaly_spotter.evaluation.thresholds",
    "anomaly_spotter.evaluation.evaluate",
    "anomaly_spotter.deploy.export",
    "anomaly_spotter.deploy.predict",
)


def test_no_import_loops():
    assert find_cycle() is None


def test_the_graph_sees_deferred_imports_and_skips_type_checking_ones(tmp_path):
    """The walker itself: a function-level import is an edge, an ``if TYPE_CHECKING:`` one is not."""
    module = tmp_path / "walked.py"
    module.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from anomaly_spotter.config import Params\n"
        "def later():\n    from anomaly_spotter.dataset import layout\n"
    )
    found = edges(module)
    assert module_file("anomaly_spotter.dataset.layout") in found  # deferred: an edge
    assert module_file("anomaly_spotter.config") not in found  # annotation-only: none


# Imports run one way: a module imports only from its own room or from rooms of a lower rank.
# The top-level shared modules come first; scoring sits above the detectors it runs.
LAYERS: dict[str, int] = {
    "__init__": 0,
    "errors": 0,
    "fileio": 0,
    "tensors": 0,
    "runtime": 0,
    "cli": 0,
    "config": 1,
    "dataset": 2,
    "sources": 3,
    "detectors": 4,
    "scoring": 5,
    "evaluation": 6,
    "training": 7,
    "deploy": 8,
}
TOP_LEVEL_LIMIT = 8  # modules directly in src/anomaly_spotter/


def _room(path):
    return path.relative_to(SRC / "anomaly_spotter").parts[0].removesuffix(".py")


def test_every_module_lives_in_a_known_room_and_the_top_level_stays_small():
    rooms = {_room(p) for p in package_modules()}
    assert rooms == set(LAYERS)
    top = [p.name for p in (SRC / "anomaly_spotter").glob("*.py")]
    assert len(top) <= TOP_LEVEL_LIMIT, sorted(top)


def test_no_import_arrow_runs_back_up():
    back_up = []
    for path in package_modules():
        for target in edges(path):
            source_rank, target_rank = LAYERS[_room(path)], LAYERS[_room(target)]
            # rank 0 is one room spread over several files (the shared modules import each other)
            if target_rank > source_rank or (target_rank == source_rank != 0 and _room(target) != _room(path)):
                back_up.append(f"{module_name(path)} -> {module_name(target)}")
    assert back_up == []


def test_each_room_says_what_lives_there_and_what_it_may_import():
    for room in ("sources", "dataset", "detectors", "training", "evaluation", "deploy"):
        doc = (SRC / "anomaly_spotter" / room / "__init__.py").read_text(encoding="utf-8")
        assert "What lives here" in doc and "may import" in doc, room


@pytest.mark.parametrize("module", INFERENCE)
def test_inference_does_not_import_the_training_stack(module):
    training = SRC / "anomaly_spotter" / "training"
    reached = closure(module_file(module))
    assert not [p for p in reached if p.is_relative_to(training)], f"{module} reaches the training package"


def test_inference_runs_without_loading_training_in_a_fresh_process():
    """The same at run time: importing every inference module loads no training module, nor DVCLive."""
    code = (
        "import sys; "
        + "; ".join(f"import {m}" for m in INFERENCE)
        + "; print(sorted(m for m in sys.modules if m.startswith("
        "('anomaly_spotter.training', 'dvclive', 'albumentations'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(SRC), "PATH": ""},
        check=True,
    )
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


def test_each_registered_class_declares_its_kind_and_map_kinds():
    for kind, cls in DETECTORS.items():
        assert cls.kind == kind and cls.map_kinds and cls.map_kind("auto") == cls.map_kinds[0]
    assert config.ModelConfig().kind in DETECTORS


def test_every_kind_has_its_own_input_side_and_its_rules_accept_it():
    assert set(config.KIND_IMAGE_SIZES) == set(DETECTORS)
    for kind, side in config.KIND_IMAGE_SIZES.items():
        params = config.parse_params({"model": {"kind": kind}})
        assert params.preprocess.image_size == side
        assert param_problems(params) == [], kind


def test_the_registry_checks_what_each_class_declares():
    assert param_problems(config.parse_params({})) == []
    # image_size given: with 0 (the kind's own side) parse_params itself refuses the unknown kind
    problems = param_problems(config.parse_params({"model": {"kind": "patchcor"}, "preprocess": {"image_size": 64}}))
    assert problems == [
        "model.kind: 'patchcor' is not one of reconstruction, discriminative, patchcore (did you mean 'patchcore'?)"
    ]
    problems = param_problems(
        config.parse_params(
            {"model": {"kind": "patchcore", "patch_window": 4, "layers": [5]}, "score": {"map": "ssim"}}
        )
    )
    assert [p.split(":")[0] for p in problems] == [
        "score.map is 'ssim' but model.kind patchcore scores with auto, distance",
        "model.patch_window",
        "model.layers",
    ]
    with pytest.raises(config.ConfigError, match="anomalies.probability"):
        check_params(config.parse_params({"anomalies": {"probability": 0.0}}))


def test_each_module_is_imported_by_something_or_is_an_entry_point():
    """No orphans: every module is reachable from a stage, a ``python -m`` entry point, a console script or
    a package __init__.
    """
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    entry_points = [target.split(":")[0] for target in scripts.values()]
    entry_points += [
        "anomaly_spotter.deploy.predict",
        "anomaly_spotter.training.yardstick",
        "anomaly_spotter.evaluation.plots_template",
        "anomaly_spotter.evaluation.readme_table",
    ]
    roots = [ROOT / "stages" / f"{s}.py" for s in STAGES] + [module_file(m) for m in entry_points]
    reached = set().union(*(closure(r) for r in roots))
    assert [str(p.relative_to(SRC)) for p in package_modules() if p not in reached] == []


# -- a new kind is one module: a fixed-map detector through thresholds, evaluate and export ------


class MeanIntensityDetector(Detector):
    """A detector with no weights to learn: the anomaly map is the pixel's mean intensity in [0, 1].

    What docs/detectors.md's "Adding a detector" section walks through, minus the learning.
    """

    kind = "mean_intensity"
    map_kinds = ("intensity",)

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

    def anomaly_maps(self, images: torch.Tensor, output: torch.Tensor, score: config.ScoreConfig) -> torch.Tensor:
        return output.float()


@pytest.fixture
def mean_intensity_kind(monkeypatch):
    monkeypatch.setitem(DETECTORS, MeanIntensityDetector.kind, MeanIntensityDetector)
    return MeanIntensityDetector


def test_a_new_kind_runs_through_fit_thresholds_evaluate_and_export(mean_intensity_kind, tmp_path):
    from anomaly_spotter.dataset.processed import load_processed
    from anomaly_spotter.deploy.export import export_category
    from anomaly_spotter.evaluation.evaluate import evaluate_category
    from conftest import TINY_PARAMS, make_processed, validation_thresholds

    params = config.parse_params(TINY_PARAMS)
    root = make_processed(tmp_path, TINY_PARAMS)
    data = load_processed(root)
    model_path = tmp_path / "model.pt"
    assert fit_detector(
        mean_intensity_kind, data, params, FitRun(model_path, tmp_path / "ck", tmp_path / "logs")
    ).written  # saved as built
    model, _ = load_model(model_path)
    assert isinstance(model, MeanIntensityDetector)

    thresholds = validation_thresholds(model, data, params)
    results = evaluate_category(
        data,
        tmp_path / "raw",
        model,
        thresholds,
        params,
        category="weave",
        metrics_path=tmp_path / "metrics.json",
        plots_dir=tmp_path / "plots",
        results_dir=tmp_path / "results",
    )
    # The map is the mean intensity: the metrics computed by hand from the same numbers must agree.
    from anomaly_spotter.evaluation import metrics as m

    intensity = data.test.astype(np.float64).mean(axis=-1) / 255.0  # (N, S, S), what the map is up to float32
    scores = np.array(
        [
            np.sort(s.ravel())[-max(1, int(np.ceil(s.size * params.score.topk_percent / 100))) :].mean()
            for s in intensity
        ]
    )
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


def test_no_module_over_600_lines_and_no_function_over_80():
    """The house issue's sizes: a module a reader holds in their head, a function seen whole."""
    import ast

    too_long = []
    for path in [*package_modules(), *sorted((ROOT / "stages").glob("*.py"))]:
        text = path.read_text()
        if text.count("\n") > 600:
            too_long.append(f"{path.relative_to(ROOT)}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 80:
                too_long.append(
                    f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {node.end_lineno - node.lineno + 1}"
                )
    assert too_long == []
