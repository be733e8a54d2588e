"""The detector interface: what every ``model.kind`` implements, and ``model.pt`` I/O.

Stages, thresholds, evaluate, export and predict talk only to :class:`Detector`; they never ask
which kind they hold. A detector is an ``nn.Module`` whose ``forward`` returns its raw output
(a reconstruction, a (reconstruction, logits) pair, patch distances, ...); the methods below
turn that output into anomaly maps and image scores, so the one seam
:func:`anomaly_spotter.scoring.output_maps` works for every kind.

Fitting is a classmethod: it builds the detector from params *after* seeding (so the initial
weights are a function of ``train.seed``), fits it on the processed train/val split and writes
``model.pt``. Gradient-trained kinds hand themselves to the trainer that :class:`FitRun`
carries (injected by the ``train`` stage), so no detector module imports the training stack
and inference never loads it.

``model.pt`` is ``torch.save`` of a plain dict, loadable with ``weights_only=True``::

    {"state_dict": {...tensors...}, "architecture": {"kind": ..., ...}, ...kind-specific scalars}

Example (a new kind; see README "Adding a detector")::

    class MyDetector(Detector):
        kind = "mine"
        ...
    # in anomaly_spotter/detectors/__init__.py, one registry line:   MyDetector,
    # in anomaly_spotter/config.py MAP_KINDS, the maps it scores with: "mine": ("my_map",),
"""

from __future__ import annotations

import io
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from anomaly_spotter.anomaly_map import image_scores
from anomaly_spotter.config import ScoreConfig, resolve_map_kind
from anomaly_spotter.fileio import atomic_open

if TYPE_CHECKING:
    from anomaly_spotter.config import Params
    from anomaly_spotter.processed import ProcessedCategory

# What the ONNX graph returns after its one input ``image`` (see anomaly_spotter.export).
RECONSTRUCTING_OUTPUTS = ("reconstruction", "anomaly_map", "score")
MAP_OUTPUTS = ("anomaly_map", "score")


@dataclass(frozen=True)
class FitResult:
    """What a fit reports back to the ``train`` stage."""

    written: bool  # False on DDP ranks other than 0, which write nothing
    summary: str  # one line for the stage's output
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class FitRun:
    """Where a fit writes, and the gradient trainer (injected so detectors never import it).

    ``train_by_gradient(detector_class, data, params, run)`` is
    :func:`anomaly_spotter.training.loop.train_by_gradient` in the ``train`` stage.
    """

    model_path: Path
    checkpoint_dir: Path
    log_dir: Path
    progress: bool = True
    train_by_gradient: Callable[..., FitResult] | None = None


class Detector(nn.Module, ABC):
    """One ``model.kind``: build from params, fit, produce anomaly maps, save/load, export.

    Subclasses set :attr:`kind` and :attr:`onnx_outputs` and implement the abstract methods.
    ``image_size`` is the side S of the square (N, 3, S, S) input in [-1, 1].
    """

    kind: ClassVar[str]
    onnx_outputs: ClassVar[tuple[str, ...]] = MAP_OUTPUTS
    image_size: int

    # -- building and fitting -----------------------------------------------------------------
    @classmethod
    @abstractmethod
    def from_params(cls, params: Params) -> Detector:
        """The untrained detector ``params.model`` describes at ``params.preprocess.image_size``."""

    @classmethod
    @abstractmethod
    def from_architecture(cls, arch: dict[str, Any]) -> Detector:
        """The (unfitted) detector an :meth:`architecture` dict describes; weights come from the state dict."""

    @abstractmethod
    def architecture(self) -> dict[str, Any]:
        """What :meth:`from_architecture` needs; stored in ``model.pt``. Has ``"kind"``."""

    @classmethod
    @abstractmethod
    def fit(cls, data: ProcessedCategory, params: Params, run: FitRun) -> FitResult:
        """Build, fit on ``data.train`` (``data.val`` for model selection) and write ``run.model_path``."""

    # -- scoring --------------------------------------------------------------------------------
    def map_kind(self, requested: str) -> str:
        """``score.map`` with ``auto`` resolved for this kind (``config.MAP_KINDS``); ``ValueError`` if unsupported."""
        return resolve_map_kind(self.kind, requested)

    @abstractmethod
    def anomaly_maps(self, images: torch.Tensor, output: Any, config: ScoreConfig) -> torch.Tensor:
        """Anomaly maps (N, S, S) float32 from images (N, 3, S, S) and ``self(images)``; higher = more anomalous."""

    def image_scores(self, maps: torch.Tensor, output: Any, config: ScoreConfig) -> torch.Tensor:
        """One score per image (N,) from its maps; by default ``score.image_score`` of the map."""
        return image_scores(maps, reduction=config.image_score, topk_percent=config.topk_percent)

    def reconstruction(self, output: Any) -> torch.Tensor | None:
        """The (N, 3, S, S) reconstruction in [-1, 1] inside ``output``, or None for kinds without one."""
        return None

    def onnx_forward(self, images: torch.Tensor, config: ScoreConfig) -> tuple[torch.Tensor, ...]:
        """What the exported graph computes, in :attr:`onnx_outputs` order (traced by the exporter)."""
        output = self(images)
        maps = self.anomaly_maps(images, output, config)
        scores = self.image_scores(maps, output, config)
        recon = self.reconstruction(output)
        return (maps, scores) if recon is None else (recon, maps, scores)


class GradientDetector(Detector):
    """A detector fitted by gradient descent: the one trainer runs it with :meth:`training_loss`.

    The trainer (:mod:`anomaly_spotter.training`) owns epochs, checkpoints, resume, DDP and
    logging; the detector owns its networks and its loss.
    """

    @classmethod
    @abstractmethod
    def training_loss(cls, params: Params) -> nn.Module:
        """The objective: ``loss(output, target, mask, sum_over_batch=None) -> (loss, {term: value})``.

        ``output`` is ``forward``'s (autocast dtype), ``target`` the clean images (N, 3, S, S)
        and ``mask`` the pasted anomalies (N, 1, S, S); ``sum_over_batch`` all-reduces
        batch-level sums under DDP (None in one process). The loss is computed in float32.
        """

    @classmethod
    def fit(cls, data: ProcessedCategory, params: Params, run: FitRun) -> FitResult:
        if run.train_by_gradient is None:
            raise TypeError(f"model.kind {cls.kind} is trained by gradient: FitRun.train_by_gradient is required")
        return run.train_by_gradient(cls, data, params, run)


def save_model_file(path: Path, state_dict: dict[str, torch.Tensor], architecture: dict[str, Any], **extra: Any) -> None:
    """Write ``model.pt`` atomically: ``{"state_dict", "architecture", **extra}`` (``weights_only``-loadable)."""
    buffer = io.BytesIO()
    torch.save({"state_dict": state_dict, "architecture": architecture, **extra}, buffer)
    with atomic_open(path) as handle:
        handle.write(buffer.getvalue())
