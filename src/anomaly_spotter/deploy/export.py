"""Stage ``export``: the trained model as an ONNX graph, checked against PyTorch before it is kept.

``models/<category>/model.onnx`` takes one input and gives the detector's ``onnx_outputs``, all
with a dynamic batch axis named ``batch`` (``reconstruction`` only for the autoencoder kinds;
patchcore's graph holds the backbone, its memory bank as a constant and the nearest-neighbour
search):

=================  ===========================  =============================================
name               shape, dtype                 meaning
=================  ===========================  =============================================
``image``          (batch, 3, S, S) float32     RGB in [-1, 1] (``uint8 / 127.5 - 1``), S = the
                                                model's ``preprocess.image_size``
``reconstruction`` (batch, 3, S, S) float32     the autoencoder's output, in [-1, 1]
``anomaly_map``    (batch, S, S) float32        :func:`anomaly_spotter.scoring.output_maps`
                                                with the category's ``score`` params: the
                                                segmentation head's map for a discriminative
                                                model, the reconstruction error for an
                                                autoencoder, the patch distance for patchcore
``score``          (batch,) float32             the detector's ``image_scores``;
                                                compare with ``thresholds.json`` ``threshold``
=================  ===========================  =============================================

So a consumer needs only onnxruntime: the map and the score are computed inside the graph, by
tracing the very functions the ``thresholds`` and ``evaluate`` stages call (every map kind
exports; the score params are also stored in the model's ``metadata_props``).

Before anything is written, the graph is run with onnxruntime over the category's test images
(at most :data:`CHECK_IMAGES` of them, evenly spaced over the split so every defect type is in;
a batch of one, then ``score.batch_size`` chunks, so the dynamic batch axis is exercised) and
compared with PyTorch: the reconstructions, maps computed by the same :func:`output_maps` from
the ONNX reconstructions (for a head or distance map, which has no SSIM amplification, the
in-graph map itself), and the in-graph maps and scores. The differences are written to
``metrics/<category>_export.json``; it is an error (and nothing is written) when the maps from
the ONNX reconstructions differ by more than :data:`MAX_MAP_DIFF` or the in-graph maps by more
than :data:`MAX_GRAPH_MAP_DIFF`, both times ``map_scale``: 1 for maps within [-1, 1] (SSIM,
MSE and head maps), else the largest absolute map value. A distance map (patchcore) is not
bounded, and float32 rounding in its squared-distance arithmetic grows with its values: on an
AVX2-only CPU a patchcore map peaking well above 1 differed by 1.01e-4 while its scores agreed.

Why two tolerances: the SSIM map divides local variances by ``C2 = 0.03**2``, so a change in
float32 summation order (onnxruntime's convolutions vs PyTorch's) is amplified about 1000x.
Measured on the three built-in categories, the in-graph SSIM maps differ from PyTorch's by
2e-5 to 5e-5, while maps computed in PyTorch from the ONNX reconstructions differ by 1e-5 or
less. A wrongly exported graph (e.g. BatchNorm left in training mode) differs by 1e-2 or more,
so both limits still catch it.

Exporter: the TorchScript-based one (``dynamo=False``). Measured on this model (torch 2.14,
onnxscript 0.7): it exports in 0.2-0.5 s and gives identical bytes on every export, while the
``torch.export`` (dynamo) exporter took 4-6 s and, with the SSIM map inside the graph, gave
different bytes on each export, which would change ``dvc.lock`` on every ``repro``. (The
TorchScript exporter also needs only ``onnx``; the dynamo one needs ``onnxscript`` as well.)

Example:
    >>> metrics = export_category("models/weave/model.pt", "data/processed/weave",
    ...                           "models/weave/model.onnx", "metrics/weave_export.json",
    ...                           params.score)  # doctest: +SKIP
    >>> metrics["onnx_max_abs_diff_map"] < 1e-4  # doctest: +SKIP
    True
"""

from __future__ import annotations

import io
import json
import os
import warnings
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from anomaly_spotter.config import ScoreConfig
from anomaly_spotter.dataset.processed import load_processed
from anomaly_spotter.detectors import load_model
from anomaly_spotter.detectors.autoencoder import AutoencoderUNetLite  # noqa: F401  (docstring examples)
from anomaly_spotter.detectors.base import Detector
from anomaly_spotter.errors import UserError
from anomaly_spotter.fileio import write_bytes, write_json
from anomaly_spotter.scoring import output_maps, score_images
from anomaly_spotter.tensors import to_tensor

OPSET = 17
INPUT_NAME = "image"  # the outputs are the detector's ``onnx_outputs`` (reconstruction, if any; anomaly_map; score)
BATCH_AXIS = "batch"
EXPORTER = "torchscript"
# Test images the export is checked on: a batch of one and two default score batches. The check is of
# the graph, not of the data, and scoring every image twice (PyTorch and onnxruntime) was the slowest
# stage on a large test split (magnetic_tile, 685 images: 163 s of a 428 s pipeline; bench/real_data.py).
CHECK_IMAGES = 65
# The largest map differences accepted (see the module docstring for the measured values and
# why the map computed inside the graph gets more room). Both are far below any threshold margin.
MAX_MAP_DIFF = 1e-4  # PyTorch anomaly_map of the ONNX vs the PyTorch reconstruction
MAX_GRAPH_MAP_DIFF = 1e-3  # anomaly map computed by onnxruntime vs by PyTorch
# Batch size of the example input the graph is traced with: not 1, so that nothing in the
# trace can silently specialise to a batch of one.
TRACE_BATCH = 2


class ScoringGraph(nn.Module):
    """Model + anomaly map + image score in one module: what is traced into the ONNX graph.

    >>> graph = ScoringGraph(
    ...     AutoencoderUNetLite(base_channels=4, bottleneck_channels=8, skips=(), image_size=32),
    ...     ScoreConfig(ssim_window=5),
    ... )
    >>> [tuple(t.shape) for t in graph(torch.zeros(2, 3, 32, 32))]
    [(2, 3, 32, 32), (2, 32, 32), (2,)]
    """

    def __init__(self, model: Detector, config: ScoreConfig) -> None:
        super().__init__()
        self.model = model
        self.config = config

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.model.onnx_forward(x, self.config)  # in self.model.onnx_outputs order


def onnx_bytes(model: Detector, config: ScoreConfig) -> bytes:
    """Serialised ONNX graph of ``model`` plus map and score; identical bytes for identical inputs.

    >>> model = AutoencoderUNetLite(base_channels=4, bottleneck_channels=8, skips=(), image_size=32)
    >>> config = ScoreConfig(ssim_window=5)
    >>> onnx_bytes(model, config) == onnx_bytes(model, config)
    True
    """
    import onnx  # deferred: only this stage needs it

    # eval() on the wrapper, not just the model: the exporter restores the wrapper's mode after
    # tracing, recursively, and a fresh nn.Module is in training mode (BatchNorm batch stats).
    graph = ScoringGraph(model, config).eval()
    size = model.image_size
    example = torch.zeros(TRACE_BATCH, 3, size, size)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # Expected and harmless here: the tracer notes that Python-level shape checks become
        # constants (they are: the side S is fixed), the legacy exporter announces its
        # deprecation, and constant folding skips strided slices.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message="The feature will be removed", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message="Constant folding", category=UserWarning)
        torch.onnx.export(
            graph,
            (example,),
            buffer,  # type: ignore[arg-type]  # a binary file object works; the stub names only paths
            dynamo=False,
            opset_version=OPSET,
            input_names=[INPUT_NAME],
            output_names=list(model.onnx_outputs),
            dynamic_axes={name: {0: BATCH_AXIS} for name in (INPUT_NAME, *model.onnx_outputs)},
            do_constant_folding=True,
        )
    proto = onnx.load_from_string(buffer.getvalue())
    metadata = {
        "anomaly_spotter.image_size": str(size),
        "anomaly_spotter.input": (
            "RGB float32 (batch, 3, S, S) in [-1, 1]: uint8 / 127.5 - 1, resized as preprocessing does"
        ),
        "anomaly_spotter.score": json.dumps(asdict(config), sort_keys=True),
    }
    for key, value in metadata.items():  # a list, not a map: the serialised order stays fixed
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto, full_check=True)
    return proto.SerializeToString(deterministic=True)


def onnx_session(model_bytes: bytes, threads: int | None = None):
    """An onnxruntime CPU session; ``threads`` defaults to torch's thread count (the cores we may use)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: ORT warns about unused initializers otherwise
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def _chunks(count: int, batch_size: int) -> Iterator[slice]:
    """A batch of one first (a different size from the traced one), then ``batch_size`` chunks."""
    if count:
        yield slice(0, 1)
    for start in range(1, count, batch_size):
        yield slice(start, min(count, start + batch_size))


def check_indices(count: int, limit: int | None = None) -> np.ndarray:
    """Up to ``limit`` (default :data:`CHECK_IMAGES`) indices spread evenly over ``range(count)``, ends included.

    >>> check_indices(5).tolist(), check_indices(9, 3).tolist()
    ([0, 1, 2, 3, 4], [0, 4, 8])
    """
    limit = CHECK_IMAGES if limit is None else limit
    if count <= limit:
        return np.arange(count)
    return np.unique(np.linspace(0, count - 1, limit).round().astype(np.int64))


def _max_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))


def map_scale(maps: np.ndarray) -> float:
    """What the export tolerances are multiplied by: 1 for maps within [-1, 1], else their largest absolute value.

    >>> map_scale(np.array([0.2, -0.5])), map_scale(np.array([3.0, 0.1]))
    (1.0, 3.0)
    """
    return max(1.0, float(np.abs(maps).max()))


@torch.inference_mode()
def compare_with_torch(model: Detector, model_bytes: bytes, images: np.ndarray, config: ScoreConfig) -> dict[str, Any]:
    """Run ``model_bytes`` with onnxruntime and ``model`` with PyTorch over uint8 (N, S, S, 3) images.

    Returns the largest absolute differences (JSON-ready; the reconstruction entries are None for
    detectors without one). The PyTorch maps and scores come from :func:`scoring.score_images`,
    exactly as the ``thresholds`` and ``evaluate`` stages compute them.

    >>> model = AutoencoderUNetLite(base_channels=4, bottleneck_channels=8, skips=(), image_size=32).eval()
    >>> config = ScoreConfig(ssim_window=5, smoothing_sigma=1.0)
    >>> diffs = compare_with_torch(model, onnx_bytes(model, config), np.zeros((3, 32, 32, 3), np.uint8), config)
    >>> diffs["onnx_max_abs_diff_map"] < 1e-4, diffs["batch_sizes_checked"]
    (True, [1, 2])
    """
    images = np.asarray(images)
    if len(images) == 0:
        raise UserError("no test images to check the ONNX export with; run `dvc repro preprocess` first")
    model.eval()
    session = onnx_session(model_bytes)
    reference = score_images(model, images, config)
    reconstructs = "reconstruction" in model.onnx_outputs
    diff = {"reconstruction": 0.0, "map": 0.0, "map_in_graph": 0.0, "score": 0.0}
    batch_sizes = []
    for part in _chunks(len(images), config.batch_size):
        x = to_tensor(images[part])
        outputs = dict(
            zip(model.onnx_outputs, session.run(list(model.onnx_outputs), {INPUT_NAME: x.numpy()}), strict=False)
        )
        onnx_map, onnx_score = outputs["anomaly_map"], outputs["score"]
        map_from_onnx_recon = onnx_map  # a head or distance map has no SSIM amplification: the graph's own
        if reconstructs:
            torch_output = model(x)
            torch_recon = model.reconstruction(torch_output)
            assert torch_recon is not None  # its onnx_outputs name a reconstruction
            onnx_recon = outputs["reconstruction"]
            diff["reconstruction"] = max(diff["reconstruction"], _max_abs(onnx_recon, torch_recon.numpy()))
            if model.map_kind(config.map) != "head":
                # The same map call fed the ONNX reconstruction: isolates the exported network.
                onnx_output = (
                    (torch.from_numpy(onnx_recon), *torch_output[1:])
                    if isinstance(torch_output, tuple)
                    else torch.from_numpy(onnx_recon)
                )
                map_from_onnx_recon = output_maps(model, x, onnx_output, config).numpy()
        diff["map"] = max(diff["map"], _max_abs(map_from_onnx_recon, reference.maps[part]))
        diff["map_in_graph"] = max(diff["map_in_graph"], _max_abs(onnx_map, reference.maps[part]))
        diff["score"] = max(diff["score"], _max_abs(onnx_score, reference.scores[part]))
        batch_sizes.append(part.stop - part.start)
    return {
        "onnx_max_abs_diff_reconstruction": diff["reconstruction"] if reconstructs else None,
        "onnx_max_abs_diff_map": diff["map"],
        "onnx_max_abs_diff_map_in_graph": diff["map_in_graph"],
        "onnx_max_abs_diff_score": diff["score"],
        "map_scale": map_scale(reference.maps),
        "images_checked": int(len(images)),
        "batch_sizes_checked": sorted(set(batch_sizes)),
    }


def graph_summary(model_bytes: bytes) -> dict[str, Any]:
    """Opset, input/output names and whether the batch axis is dynamic, read back from the graph."""
    import onnx

    proto = onnx.load_from_string(model_bytes)
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    values = list(proto.graph.input) + list(proto.graph.output)
    return {
        "opset": int(opset),
        "inputs": [v.name for v in proto.graph.input],
        "outputs": [v.name for v in proto.graph.output],
        "dynamic_batch": all(v.type.tensor_type.shape.dim[0].dim_param == BATCH_AXIS for v in values),
    }


def export_model(
    model: Detector, images: np.ndarray, config: ScoreConfig, *, source: str = "the model"
) -> tuple[bytes, dict[str, Any]]:
    """Export ``model`` and check it on ``images``; return the ONNX bytes and the metrics.

    Raises :class:`UserError` when the maps differ by more than :data:`MAX_MAP_DIFF` (maps from
    the ONNX reconstructions) or :data:`MAX_GRAPH_MAP_DIFF` (maps computed in the graph).
    """
    model_bytes = onnx_bytes(model, config)
    metrics = {
        **graph_summary(model_bytes),
        **compare_with_torch(model, model_bytes, images, config),
        "exporter": EXPORTER,
        "map_kind": model.map_kind(config.map),
        "tolerance_map": MAX_MAP_DIFF,
        "tolerance_map_in_graph": MAX_GRAPH_MAP_DIFF,
        "onnx_bytes": len(model_bytes),
    }
    # Comparisons with NaN are False, so a NaN difference fails too.
    allowed_map, allowed_graph = MAX_MAP_DIFF * metrics["map_scale"], MAX_GRAPH_MAP_DIFF * metrics["map_scale"]
    recon_ok = metrics["onnx_max_abs_diff_map"] <= allowed_map
    graph_ok = metrics["onnx_max_abs_diff_map_in_graph"] <= allowed_graph
    if not (recon_ok and graph_ok):
        raise UserError(
            f"the ONNX export of {source} does not match PyTorch, so nothing was written: anomaly maps "
            f"from the ONNX reconstructions differ by up to {metrics['onnx_max_abs_diff_map']:.3g} "
            f"(allowed {allowed_map:g}), maps computed in the graph by up to "
            f"{metrics['onnx_max_abs_diff_map_in_graph']:.3g} (allowed {allowed_graph:g}); "
            f"reconstructions by up to {metrics['onnx_max_abs_diff_reconstruction'] or 0:.3g}. "
            "Check that torch, onnx and onnxruntime are the versions pinned in requirements.txt; "
            "otherwise a layer or map kind is translated differently by the exporter"
        )
    if not metrics["dynamic_batch"]:  # pragma: no cover - guards against an exporter change
        raise UserError(f"the ONNX export of {source} has a fixed batch size; expected a dynamic '{BATCH_AXIS}' axis")
    return model_bytes, metrics


def export_category(
    model_path: str | os.PathLike[str],
    data_dir: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    metrics_path: str | os.PathLike[str],
    config: ScoreConfig,
) -> dict[str, Any]:
    """Export ``model_path`` to ``out_path`` after checking it on ``data_dir``'s test images.

    Writes nothing unless the check passes; then the ONNX file and the metrics JSON, atomically.
    """
    model, _ = load_model(Path(model_path))  # names the file and says `dvc repro`/`dvc pull` when missing
    data = load_processed(Path(data_dir))
    if data.image_size != model.image_size:
        raise UserError(
            f"{data_dir} holds {data.image_size}px images but {model_path} expects {model.image_size}px; "
            "run `dvc repro` so preprocess and train agree"
        )
    model_bytes, metrics = export_model(model, data.test[check_indices(len(data.test))], config, source=str(model_path))
    metrics["test_images"] = len(data.test)
    write_bytes(out_path, model_bytes)
    write_json(metrics_path, metrics)
    return metrics


__all__ = [
    "MAX_GRAPH_MAP_DIFF",
    "MAX_MAP_DIFF",
    "OPSET",
    "ScoringGraph",
    "check_indices",
    "compare_with_torch",
    "export_category",
    "export_model",
    "graph_summary",
    "onnx_bytes",
    "onnx_session",
]
