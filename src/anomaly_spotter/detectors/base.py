"""The detector interface: what every ``model.kind`` implements, and ``model.pt`` I/O.

Stages, thresholds, evaluate, export and predict talk only to :class:`Detector`; they never ask
which kind they hold. A detector is an ``nn.Module`` whose ``forward`` returns its raw output
(a reconstruction, a (reconstruction, logits) pair, patch distances, ...); the methods below
turn that output into anomaly maps and image scores, so the one seam
:func:`anomaly_spotter.scoring.output_maps` works for every kind.

A detector does not fit itself: :mod:`anomaly_spotter.training` does, chosen by the family a
class belongs to: a :class:`GradientDetector` is trained by the one gradient loop, a
:class:`MemoryBankDetector` gets a memory bank of its training patches, and a plain
:class:`Detector` has nothing to learn and is saved as built. So no detector module imports the
training stack, and inference never loads it.

Each class declares the facts about itself once: :attr:`Detector.kind`, :attr:`Detector.map_kinds`
(the ``score.map`` values it scores with; the first is what ``auto`` picks) and
:meth:`Detector.param_problems` (its own rules on ``params.yaml``), which
:func:`anomaly_spotter.detectors.check_params` reads through the registry.

``model.pt`` is ``torch.save`` of a plain dict, loadable with ``weights_only=True``::

    {"state_dict": {...tensors...}, "architecture": {"kind": ..., ...}, ...kind-specific scalars}

Example (a new kind; see docs/detectors.md, "Adding a detector")::

    class MyDetector(Detector):
        kind = "mine"
        map_kinds = ("my_map",)
        ...
    # in anomaly_spotter/detectors/__init__.py, one registry line:   MyDetector,
"""

from __future__ import annotations

import io
from abc import ABC, abstractmethod
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from anomaly_spotter.detectors.anomaly_map import image_scores
from anomaly_spotter.fileio import atomic_open

if TYPE_CHECKING:
    import numpy as np

    from anomaly_spotter.config import Params, ScoreConfig

# What the ONNX graph returns after its one input ``image`` (see anomaly_spotter.deploy.export).
RECONSTRUCTING_OUTPUTS = ("reconstruction", "anomaly_map", "score")
MAP_OUTPUTS = ("anomaly_map", "score")


class Detector(nn.Module, ABC):
    """One ``model.kind``: build from params, produce anomaly maps, save/load, export.

    Subclasses set :attr:`kind`, :attr:`map_kinds` and :attr:`onnx_outputs` and implement the
    abstract methods. ``image_size`` is the side S of the square (N, 3, S, S) input in [-1, 1].
    """

    kind: ClassVar[str]
    map_kinds: ClassVar[tuple[str, ...]]  # the score.map values it scores with; the first is what auto picks
    onnx_outputs: ClassVar[tuple[str, ...]] = MAP_OUTPUTS
    image_size: int

    # -- its params -------------------------------------------------------------------------------
    @classmethod
    def param_problems(cls, params: Params) -> list[str]:
        """This kind's own rules on ``params.yaml``, as messages naming the key (empty: none broken)."""
        return []

    @classmethod
    def map_kind(cls, requested: str) -> str:
        """``score.map`` with ``auto`` resolved for this kind; ``ValueError`` if it does not score with it.

        >>> from anomaly_spotter.detectors import DETECTORS
        >>> DETECTORS["patchcore"].map_kind("auto"), DETECTORS["reconstruction"].map_kind("l2")
        ('distance', 'l2')
        """
        if requested == "auto":
            return cls.map_kinds[0]
        if requested not in cls.map_kinds:
            raise ValueError(
                f"score.map is {requested!r} but model.kind {cls.kind} scores with "
                f"{', '.join(('auto', *cls.map_kinds))}"
            )
        return requested

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

    # -- scoring --------------------------------------------------------------------------------
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

    The trainer (:mod:`anomaly_spotter.training.loop`) owns epochs, checkpoints, resume, DDP and
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


class MemoryBankDetector(Detector):
    """A detector that keeps a memory bank of its training patches' features (PatchCore).

    :mod:`anomaly_spotter.training.memory_bank` extracts every training patch with
    :meth:`extract`, keeps a coreset of ``model.coreset_ratio`` of them and hands it to
    :meth:`set_memory_bank`.
    """

    memory_bank: torch.Tensor  # (K, D) float32 buffer
    weights_file: str  # the pretrained network's file name and SHA-256, recorded in model.pt
    weights_sha256: str

    @abstractmethod
    def extract(self, images: np.ndarray, batch_size: int, device: torch.device | None = None) -> torch.Tensor:
        """Patch features (M, D) float32 of uint8 images (N, S, S, 3), one row per patch."""

    @abstractmethod
    def set_memory_bank(self, bank: torch.Tensor) -> None:
        """Keep ``bank`` (K, D) as the memory bank."""

    @abstractmethod
    def describe(self) -> str:
        """A few words for the train stage's summary line, e.g. ``"efficientnet_lite2 [2, 3]"``."""


def save_model_file(
    path: Path, state_dict: dict[str, torch.Tensor], architecture: dict[str, Any], **extra: Any
) -> None:
    """Write ``model.pt`` atomically: ``{"state_dict", "architecture", **extra}`` (``weights_only``-loadable)."""
    buffer = io.BytesIO()
    torch.save({"state_dict": state_dict, "architecture": architecture, **extra}, buffer)
    with atomic_open(path) as handle:
        handle.write(buffer.getvalue())
