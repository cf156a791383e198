"""sssegmentation's PointRend checkpoints -> this project's keys.

sssegmentation's ``PointRend`` segmentor (``pointrend_resnet{50,101}os8_{voc,ade20k,cityscapes}``;
"os8" in those names is a misnomer, the models are undilated, output stride 32) holds:

* ``backbone_net.*``: a ResNet with the deep stem (``stem.0``-``stem.7``) and the stride in the
  3x3 conv, keyed like mmcv's ResNetV1c;
* ``fpn_neck.{lateral,fpn}_convs.<i>.{0,1}.*``: FPN convs without bias, each followed by a BN
  and a ReLU (no tensors, but the model must apply it to predict as sssegmentation does);
* ``scale_heads.<i>.<j>.{0,1}.*`` and ``auxiliary_decoder.1.*``: the Semantic-FPN coarse head
  and its 1x1 classifier;
* ``fcs.<k>.{0,1}.*`` and ``decoder.1.*``: the point head, Conv1d without bias + SyncBN (applied
  to the (N, C, P) point features, so per channel over all points) + ReLU per layer, then a
  Conv1d classifier.

Everything is renamed one tensor to one tensor: the point head's BNs become the norms of
``MLPPointHead``'s fc layers (``MODEL.POINTREND_SEM.FC_NORM "SyncBN"``), so fine-tuning trains
sssegmentation's model. On request (``fold_point_head_norms``) each BN is folded into the Conv1d
before it instead, for a point head without norms (``FC_NORM ""``): exact in inference (see
torch's ``fuse_conv_bn_weights``), but fine-tuning from those
weights trains another model.
"""

import re
from collections import OrderedDict
from typing import Dict, List, Mapping

import torch
from torch.nn.utils.fusion import fuse_conv_bn_weights

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

_BN_PARAMS = ("weight", "bias", "running_mean", "running_var")
_BN_EPS = 1e-5  # torch's default, which sssegmentation's SyncBatchNorm keeps
_BN = "(weight|bias|running_mean|running_var|num_batches_tracked)"
# an FPN conv + BN, a scale head's conv + BN ("0": the conv, "1": the BN)
_FPN = r"fpn_neck\.(?:(?P<lateral>lateral)|fpn)_convs\.(?P<level>\d)"
_SCALE_HEAD = r"scale_heads\.(?P<level>\d)\.(?P<index>\d+)"
# a point-head layer's conv weight ("0.weight") or BN tensor ("1.<param>")
_POINT_FC = re.compile(rf"^fcs\.(\d+)\.(0\.weight|1\.{_BN})$")
# a point-head layer's norm, converted: (layer, BN tensor)
_POINT_NORM = re.compile(rf"^({re.escape(POINT)}fc\d+)\.norm\.(\w+)$")


def _point_fc(match: re.Match) -> str:
    """``fcs.<k>.0.weight`` -> ``fc<k+1>.weight``, ``fcs.<k>.1.*`` -> ``fc<k+1>.norm.*``."""
    index, part = match[1], match[2]
    fc = f"{POINT}fc{int(index) + 1}"
    return f"{fc}.weight" if part == "0.weight" else f"{fc}.norm.{part[2:]}"


_RULES: Rules = [
    under("backbone_net.", RESNET_RULES["mmcv"]),
    (re.compile(rf"^{_FPN}\.0\.(?P<param>weight)$"), fpn_conv_key),
    (re.compile(rf"^{_FPN}\.(?P<norm>1)\.(?P<param>{_BN})$"), fpn_conv_key),
    (re.compile(rf"^{_SCALE_HEAD}\.0\.(?P<param>weight)$"), scale_head_key),
    (re.compile(rf"^{_SCALE_HEAD}\.(?P<norm>1)\.(?P<param>{_BN})$"), scale_head_key),
    (re.compile(r"^auxiliary_decoder\.1\.(weight|bias)$"), lambda m: f"{COARSE}predictor.{m[1]}"),
    (_POINT_FC, _point_fc),
    (re.compile(r"^decoder\.1\.(weight|bias)$"), lambda m: f"{POINT}predictor.{m[1]}"),
]


def _point_head_problems(state_dict: StateDict) -> List[str]:
    """What keeps the point head's conv + BN layers ``fcs.<k>`` from being converted: missing
    tensors, and BN tensors whose shape is not (C_out,) of the conv weight (C_out, C_in, 1)."""
    layers: Dict[int, Dict[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        match = _POINT_FC.match(key)
        if match:
            layers.setdefault(int(match[1]), {})[match[2]] = value
    problems = []
    for k, parts in sorted(layers.items()):
        needed = ["0.weight"] + [f"1.{p}" for p in _BN_PARAMS]
        missing = [f"fcs.{k}.{p}: missing (point head conv + BN)" for p in needed if p not in parts]
        if missing:
            problems += missing
            continue
        channels = parts["0.weight"].shape[0]
        problems += [
            f"fcs.{k}.1.{p}: shape {tuple(parts[f'1.{p}'].shape)}, expected ({channels},)"
            for p in _BN_PARAMS
            if tuple(parts[f"1.{p}"].shape) != (channels,)
        ]
    return problems


def _fold_point_head_norms(converted: StateDict) -> Dict[str, torch.Tensor]:
    """``converted`` with each ``fc<k>.norm.*`` of the point head folded into ``fc<k>.weight``
    and a new ``fc<k>.bias`` (computed in float64; the norm's counter is dropped)."""
    norms: Dict[str, Dict[str, torch.Tensor]] = {}
    for key, value in converted.items():
        match = _POINT_NORM.match(key)
        if match:
            norms.setdefault(match[1], {})[match[2]] = value
    folded = OrderedDict()
    for key, value in converted.items():
        layer = key[: -len(".weight")]
        if key.endswith(".weight") and layer in norms:
            gamma, beta, mean, var = (norms[layer][p].double() for p in _BN_PARAMS)
            weight, bias = fuse_conv_bn_weights(
                value.double(), None, mean, var, _BN_EPS, gamma, beta
            )
            folded[key] = weight.detach().to(value.dtype)
            folded[f"{layer}.bias"] = bias.detach().to(value.dtype)
        elif not _POINT_NORM.match(key):
            folded[key] = value
    return folded


def convert_sssegmentation_pointrend(
    state_dict: Mapping[str, torch.Tensor], fold_point_head_norms: bool = False
) -> Dict[str, torch.Tensor]:
    """Convert the model state dict of an sssegmentation PointRend checkpoint.

    Every tensor is renamed (BN counters ``num_batches_tracked`` included); the point head's
    ``fcs.<k>.1.*`` BNs become ``fc<k+1>.norm.*`` (for ``MODEL.POINTREND_SEM.FC_NORM`` "SyncBN").

    Args:
        state_dict: ``checkpoint["model"]``; a ``module.`` before every key (a model saved
            inside DistributedDataParallel) is removed.
        fold_point_head_norms: fold the point head's BNs into ``fc<k+1>.weight`` / ``.bias``
            instead (for ``FC_NORM ""``; their counters are dropped).

    Returns:
        OrderedDict in this project's keys.

    Raises:
        ConversionError (a KeyError): naming every key that could not be placed, and every
            missing or mis-shaped tensor of a point-head layer.
    """
    converted = place_state_dict(
        state_dict, _RULES, source="sssegmentation", check_source=_point_head_problems
    )
    return _fold_point_head_norms(converted) if fold_point_head_norms else converted
