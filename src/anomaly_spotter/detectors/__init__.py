"""Every ``model.kind``, and ``model.pt`` in and out.

The registry below is the one list of detector classes; each class declares its map kinds and
its own param rules, which :func:`check_params` reads. Stages build and load detectors only
through it; :mod:`anomaly_spotter.training` fits them.

What lives here: the models (networks, feature extractors, memory bank, coreset, anomaly maps,
losses). It may import the top-level shared modules (``config`` for types, ``errors``,
``fileio``, ``runtime``, ``tensors``) and nothing from ``training``, ``evaluation``, ``deploy``
or ``sources``.

Example:
    >>> from anomaly_spotter.config import parse_params
    >>> detector = build_detector(parse_params({"preprocess": {"image_size": 64}}))
    >>> detector.kind, detector.image_size
    ('discriminative', 64)
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from anomaly_spotter.detectors.autoencoder import AutoencoderUNetLite
from anomaly_spotter.detectors.base import Detector
from anomaly_spotter.detectors.discriminative import DiscriminativeDetector
from anomaly_spotter.detectors.patchcore import PatchCore
from anomaly_spotter.errors import ConfigError, UserError, did_you_mean

if TYPE_CHECKING:
    from anomaly_spotter.config import Params

DETECTORS: dict[str, type[Detector]] = {
    cls.kind: cls
    for cls in (
        AutoencoderUNetLite,
        DiscriminativeDetector,
        PatchCore,
    )
}


def detector_class(kind: str) -> type[Detector]:
    """The class registered for ``model.kind``; a clear error for a kind this version does not know."""
    try:
        return DETECTORS[kind]
    except KeyError:
        raise UserError(
            f"unknown model kind {kind!r}; this version knows {', '.join(DETECTORS)}. "
            "A model file of another version: retrain it with `dvc repro`"
        ) from None


def param_problems(params: Params) -> list[str]:
    """What ``params`` breaks of the registry's rules: an unknown ``model.kind``, a ``score.map``
    the kind does not score with, and the kind's own :meth:`~Detector.param_problems`.

    >>> from anomaly_spotter.config import parse_params
    >>> param_problems(parse_params({"model": {"kind": "patchcore"}, "score": {"map": "head"}}))
    ["score.map is 'head' but model.kind patchcore scores with auto, distance"]
    """
    cls = DETECTORS.get(params.model.kind)
    if cls is None:
        kind = params.model.kind
        return [f"model.kind: {kind!r} is not one of {', '.join(DETECTORS)}{did_you_mean(kind, tuple(DETECTORS))}"]
    problems = []
    try:
        cls.map_kind(params.score.map)
    except ValueError as exc:
        problems.append(str(exc))
    return problems + cls.param_problems(params)


def check_params(params: Params, where: str = "params.yaml") -> Params:
    """``params`` when it keeps every rule of :func:`param_problems`; else a ConfigError listing them all."""
    problems = param_problems(params)
    if problems:
        raise ConfigError(problems, where)
    return params


def build_detector(params: Params) -> Detector:
    """The untrained detector ``params.model`` describes at ``params.preprocess.image_size``."""
    return detector_class(params.model.kind).from_params(params)


def load_model(path: str | Path, device: torch.device | str = "cpu") -> tuple[Detector, dict[str, Any]]:
    """Rebuild a fitted detector from ``models/<category>/model.pt`` (``weights_only=True``); also the payload."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} is missing; run `dvc repro` (or `dvc pull`) to create it")
    payload = torch.load(path, map_location=device, weights_only=True)
    detector = detector_class(payload["architecture"].get("kind")).from_architecture(payload["architecture"])
    detector.load_state_dict(payload["state_dict"])
    return detector.to(device).eval(), payload


__all__ = ["DETECTORS", "Detector", "build_detector", "check_params", "detector_class", "load_model", "param_problems"]
