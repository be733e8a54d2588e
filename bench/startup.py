"""Start-up cost of each stage: wall time to import its modules, and whether torch is loaded.

Each stage script is imported in a fresh interpreter (``python -X importtime`` would also
work; this prints a short table). Stages that do not need torch must not import it.

Run: ``python bench/startup.py``
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("fetch", "preprocess", "train", "thresholds", "evaluate", "report")
PROBE = """
import sys, time, runpy
sys.path.insert(0, {stages!r})
start = time.perf_counter()
import importlib.util
spec = importlib.util.spec_from_file_location("stage", {path!r})
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)  # imports only: main() is guarded by __name__
print(f"{{time.perf_counter() - start:.3f}} {{'torch' in sys.modules}}")
"""


def main() -> None:
    print(f"{'stage':<12} {'import s':>9}  torch imported")
    for stage in STAGES:
        path = ROOT / "stages" / f"{stage}.py"
        best = None
        for _ in range(3):  # best of three: the first run also warms the file cache
            code = PROBE.format(stages=str(ROOT / "stages"), path=str(path))
            start = time.perf_counter()
            out = subprocess.run(
                [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
            ).stdout.split()
            total = time.perf_counter() - start
            seconds, torch_loaded = float(out[0]), out[1] == "True"
            best = min(best or (9e9, 0, False), (seconds, total, torch_loaded))
        print(f"{stage:<12} {best[0]:9.3f}  {best[2]}   (process {best[1]:.2f} s)")


if __name__ == "__main__":
    main()
