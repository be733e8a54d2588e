"""Shared fixtures: small synthetic data, tiny params, and a temporary copy of the project."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# What a fresh clone of the project holds that the pipeline needs.
PROJECT_FILES = (
    "stages",
    "src",
    "dvc.yaml",
    "params.yaml",
    "pyproject.toml",
    ".dvc/config",
    ".dvc/plots",
    ".dvcignore",
    ".gitignore",
)
SHARED_DATASETS = REPO.parent / "shared" / "datasets"

# Small enough that a whole `dvc repro` of two categories takes well under a minute.
TINY_PARAMS = {
    "data": {
        "categories": ["weave", "washer"],
        "synthetic": {"side": 48, "train_good": 10, "test_good": 4, "test_defect_per_type": 2},
    },
    "preprocess": {"image_size": 32, "val_fraction": 0.2},
    "model": {"base_channels": 4, "bottleneck_channels": 16},
    "train": {"epochs": 2, "batch_size": 4, "sample_every": 1},
    "score": {"smoothing_sigma": 1.0, "ssim_window": 5},
    "evaluate": {"heatmap_examples": 1},
}
# The same, as a plain autoencoder (params.yaml's default is the discriminative kind): for unit
# tests of the reconstruction path, which parse these params without params.yaml underneath.
TINY_RECONSTRUCTION = {
    **TINY_PARAMS,
    "model": {**TINY_PARAMS["model"], "kind": "reconstruction"},
    "anomalies": {"probability": 0.0},
}


def deep_update(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        out[key] = deep_update(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def tool_env() -> dict[str, str]:
    """Environment in which `dvc` and the stages' `python` are this virtualenv's."""
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["NO_ALBUMENTATIONS_UPDATE"] = "1"
    env["DVC_NO_ANALYTICS"] = "1"
    env.pop("PYTHONPATH", None)  # stages find src/ themselves
    return env


def run(cmd: list[str], cwd: Path, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess:
    """Run a command, returning its output; on failure show all of it."""
    result = subprocess.run(cmd, cwd=cwd, env=tool_env(), capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        )
    return result


def dvc(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    return run([str(BIN / "dvc"), *args], cwd=cwd, check=check)


def git(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return run(["git", "-c", "user.name=test", "-c", "user.email=test@example.com", *args], cwd=cwd)


def make_project(dest: Path, params_override: dict | None = None) -> Path:
    """A git repository holding the project's pipeline files and tiny params, committed."""
    import yaml

    dest.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        elif src.exists():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params = deep_update(deep_update(params, TINY_PARAMS), params_override or {})
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (dest / ".dvc" / ".gitignore").write_text("/config.local\n/tmp\n/cache\n")
    git("init", "-q", "-b", "main", cwd=dest)
    git("add", "-A", cwd=dest)
    git("commit", "-q", "-m", "project", cwd=dest)
    return dest


def make_processed(root: Path, raw_params: dict, category: str = "weave") -> Path:
    """Generate a synthetic category under ``root/raw`` and preprocess it into ``root/processed``."""
    from anomaly_spotter.config import parse_params
    from anomaly_spotter.dataset.preprocessing import preprocess_category
    from anomaly_spotter.sources.synthetic import generate_category

    params = parse_params(raw_params)
    generate_category(category, root / "raw", params.data.synthetic)
    preprocess_category(root / "raw", root / "processed", params.preprocess)
    return root / "processed"


def validation_thresholds(model, data, params):
    """What the thresholds stage computes (its report parsed back into a ``Thresholds``), in memory."""
    from anomaly_spotter.evaluation.thresholds import parse_thresholds, score_record, threshold_report
    from anomaly_spotter.scoring import score_images

    report = threshold_report(
        score_images(model, data.val, params.score).scores, params.thresholds, score_record(params.score, model)
    )
    return parse_thresholds(report, "thresholds (in memory)")


@pytest.fixture
def tiny_params():
    from anomaly_spotter.config import parse_params

    return parse_params(TINY_PARAMS)
