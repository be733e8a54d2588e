"""Runtime helpers shared by training and inference: device choice, seeding, mixed precision.

Kept apart from :mod:`anomaly_spotter.training` so that scoring, export and ``predict`` import
them without loading the training stack (DVCLive, augmentations, the optimizers' set-up).

Example:
    >>> select_device("cpu")
    device(type='cpu')
"""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from anomaly_spotter.errors import UserError


def select_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available; asking for ``cuda`` without a GPU is an error."""
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("train.device is 'cuda' but no CUDA device is available; set train.device: auto or cpu")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int, num_threads: int = 0) -> None:
    """Seed Python, NumPy and torch; fix threads; make torch's kernels deterministic."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # needed by deterministic cuBLAS
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.benchmark = False
    # A fixed thread count: reductions split differently with another count, changing last bits.
    torch.set_num_threads(num_threads or os.cpu_count() or 1)


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The mixed-precision dtype ``train.amp`` uses on ``device``; None where it would not pay.

    CUDA: bfloat16 where supported, else float16 (with a gradient scaler). CPU: bfloat16 when
    oneDNN has a native bfloat16 path for this CPU (AVX-512 / AMX), which trains these
    convolutions about 1.8x faster on the 2-core reference machine (``bench/train_speed.py``);
    elsewhere bfloat16 is emulated, slower than float32, so training stays in float32.

    >>> autocast_dtype(torch.device("cpu")) in (torch.bfloat16, None)
    True
    """
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu":
        try:
            native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):  # a torch build without oneDNN
            native = False
        return torch.bfloat16 if native else None
    return None


def kernel_record(device: torch.device, precision: torch.dtype | None) -> dict[str, str | int]:
    """What, besides code, params and data, decides a fitted model's exact bits (kept in ``model.pt``).

    Two fits with the same record and the same software are byte-identical; another CPU
    capability, precision or thread count gives a model that differs in its last bits, and
    metrics that move a little (docs/reproducibility.md, "Reproducibility across machines").
    ``precision`` is the autocast dtype (None: float32).

    >>> sorted(kernel_record(torch.device("cpu"), None))
    ['cpu_capability', 'device', 'precision', 'threads', 'torch']
    """
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),  # ATen's vector kernels: DEFAULT, AVX2, AVX512
        "precision": str(precision or torch.float32).removeprefix("torch."),
        "threads": torch.get_num_threads(),
        "torch": str(torch.__version__),  # a plain str: TorchVersion would not load with weights_only
    }
