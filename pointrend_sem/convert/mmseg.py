"""mmsegmentation's PointRend checkpoints (``CascadeEncoderDecoder``: ResNetV1c, FPN,
``FPNHead``, ``PointHead``) -> this project's keys, one tensor to one tensor."""

import re
from typing import Dict

import torch

from .placement import (
    COARSE,
    POINT,
    Rules,
    StateDict,
    fpn_conv_key,
    place_state_dict,
    scale_head_key,
    under,
)
from .resnet import RESNET_RULES


def _point_fc(match: re.Match) -> str:
    index, param = match.groups()
    return f"{POINT}fc{int(index) + 1}.{param}"


_RULES: Rules = [
    under("backbone.", RESNET_RULES["mmcv"]),
    (
        re.compile(
            r"^neck\.(?:(?P<lateral>lateral)|fpn)_convs\.(?P<level>\d)\.conv\."
            r"(?P<param>weight|bias)$"
        ),
        fpn_conv_key,
    ),
    (
        re.compile(
            r"^decode_head\.0\.scale_heads\.(?P<level>\d)\.(?P<index>\d+)\."
            r"(?:conv|(?P<norm>bn))\.(?P<param>.+)$"
        ),
        scale_head_key,
    ),
    (
        re.compile(r"^decode_head\.0\.conv_seg\.(weight|bias)$"),
        lambda m: f"{COARSE}predictor.{m[1]}",
    ),
    (re.compile(r"^decode_head\.1\.fcs\.(\d+)\.conv\.(weight|bias)$"), _point_fc),
    (re.compile(r"^decode_head\.1\.fc_seg\.(weight|bias)$"), lambda m: f"{POINT}predictor.{m[1]}"),
]
# BN's counters, and the data preprocessor's mean/std (the config's PIXEL_MEAN/PIXEL_STD)
_DROPPED = re.compile(r"num_batches_tracked$|^data_preprocessor\.")


def convert_mmseg_pointrend(state_dict: StateDict) -> Dict[str, torch.Tensor]:
    """Rename every tensor of an mmsegmentation PointRend state dict.

    BN's ``num_batches_tracked`` and the data preprocessor's mean/std buffers are dropped
    (the config's PIXEL_MEAN/PIXEL_STD hold them); a ``module.`` before every key is removed.

    Returns:
        OrderedDict in this project's keys.

    Raises:
        ConversionError (a KeyError): naming every key that could not be placed.
    """
    return place_state_dict(state_dict, _RULES, source="mmsegmentation", drop=_DROPPED)
