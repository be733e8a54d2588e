"""Pipeline wall times: the default `dvc repro`, a no-op `dvc repro`, and what an experiment re-runs.

Clones this repository (its committed state) into a temporary folder and, with this
virtualenv's `dvc` on PATH, prints:

* the wall time of the default `dvc repro` from scratch (built-in synthetic data);
* the wall time of a second, no-op `dvc repro` (target: <= 2 s);
* the stages `dvc exp run -S loss.ssim=0.7` re-runs (expected: train, thresholds, evaluate,
  report; never fetch or preprocess) and its wall time;
* the image AUROC per category from `metrics/summary.json`.

Run: ``python bench/pipeline.py``  (takes about as long as two `dvc repro`s)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def timed(cmd: list[str], cwd: Path) -> tuple[float, str]:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{result.stdout}\n{result.stderr}")
    return seconds, result.stdout


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        clone = Path(tmp) / "clone"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        subprocess.run(["git", "-C", str(clone), "config", "user.email", "bench@example.com"], check=True)
        subprocess.run(["git", "-C", str(clone), "config", "user.name", "bench"], check=True)
        full, _ = timed([str(BIN / "dvc"), "repro", "--force"], clone)
        noop, _ = timed([str(BIN / "dvc"), "repro"], clone)
        summary = json.loads((clone / "metrics" / "summary.json").read_text())
        subprocess.run(["git", "-C", str(clone), "commit", "-qam", "bench baseline"], check=False)
        exp, out = timed([str(BIN / "dvc"), "exp", "run", "-S", "loss.ssim=0.7"], clone)
        rerun = [line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")]
    print(f"machine: {os.cpu_count()} cores")
    print(f"default `dvc repro` (from scratch): {full:7.1f} s")
    print(f"no-op `dvc repro`:                  {noop:7.2f} s")
    print(f"`dvc exp run -S loss.ssim=0.7`:     {exp:7.1f} s, re-ran: {', '.join(rerun)}")
    print("image AUROC: " + ", ".join(f"{k} {v:.3f}" for k, v in summary["image_auroc"].items()))


if __name__ == "__main__":
    main()
