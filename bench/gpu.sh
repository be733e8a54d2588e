#!/usr/bin/env bash
# fp32 vs AMP training throughput on a CUDA machine (see bench/gpu_speed.py).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
for batch in 32 128; do
  "$PYTHON" bench/gpu_speed.py --batch-size "$batch"
done
