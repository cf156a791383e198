"""mmsegmentation's PointRend checkpoints (``CascadeEncoderDecoder``: ResNetV1c, FPN,
``FPNHead``, ``PointHead``) -> this project's keys, one tensor to one tensor."""

import re
from collections import OrderedDict
from typing import Dict, Optional

import torch

from .rules import Rules, rename_with_rules

COARSE = "sem_seg_head.coarse_sem_seg_head."
POINT = "sem_seg_head.point_head."


def _fpn(match) -> str:
    kind, level, param = match.groups()
    name = "fpn_lateral" if kind == "lateral_convs" else "fpn_output"
    return f"backbone.{name}{int(level) + 2}.{param}"


def _scale_head(match) -> str:
    level, index, part, param = match.groups()
    suffix = f"norm.{param}" if part == "bn" else param
    return f"{COARSE}p{int(level) + 2}.{index}.{suffix}"


def _point_fc(match) -> str:
    index, param = match.groups()
    return f"{POINT}fc{int(index) + 1}.{param}"


# (pattern, target builder) for everything but the backbone
_RULES: Rules = [
    (re.compile(r"^neck\.(lateral_convs|fpn_convs)\.(\d)\.conv\.(weight|bias)$"), _fpn),
    (
        re.compile(r"^decode_head\.0\.scale_heads\.(\d)\.(\d+)\.(conv|bn)\.(.+)$"),
        _scale_head,
    ),
    (
        re.compile(r"^decode_head\.0\.conv_seg\.(weight|bias)$"),
        lambda m: f"{COARSE}predictor.{m[1]}",
    ),
    (re.compile(r"^decode_head\.1\.fcs\.(\d+)\.conv\.(weight|bias)$"), _point_fc),
    (re.compile(r"^decode_head\.1\.fc_seg\.(weight|bias)$"), lambda m: f"{POINT}predictor.{m[1]}"),
]


def rename_mmseg_key(key: str) -> Optional[str]:
    """One mmsegmentation PointRend key in this project's naming, or None."""
    return rename_with_rules(key, "backbone.", _RULES)


def convert_mmseg_pointrend(state_dict: Dict[str, torch.Tensor]):
    """Rename every tensor of an mmsegmentation PointRend state dict.

    BN's ``num_batches_tracked`` and the data preprocessor's mean/std buffers are dropped
    (the config's PIXEL_MEAN/PIXEL_STD hold them).

    Returns:
        OrderedDict in this project's keys.

    Raises:
        KeyError: naming every key that could not be placed.
    """
    converted, unplaced = OrderedDict(), []
    for key, value in state_dict.items():
        if key.endswith("num_batches_tracked") or key.startswith("data_preprocessor."):
            continue
        new_key = rename_mmseg_key(key)
        if new_key is None:
            unplaced.append(key)
        else:
            converted[new_key] = value
    if unplaced:
        raise KeyError(f"cannot place {len(unplaced)} mmsegmentation key(s): {unplaced}")
    return converted
