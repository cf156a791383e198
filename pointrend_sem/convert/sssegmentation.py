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
:func:`fold_batch_norm`), but fine-tuning from those weights trains another model.
"""

import re
from collections import OrderedDict
from typing import Dict, List, Mapping, Optional, Tuple

import torch

from .rules import Rules, rename_with_rules

COARSE = "sem_seg_head.coarse_sem_seg_head."
POINT = "sem_seg_head.point_head."
_BN_PARAMS = ("weight", "bias", "running_mean", "running_var")
_BN_EPS = 1e-5  # torch's default, which sssegmentation's SyncBatchNorm keeps
_BN = "(weight|bias|running_mean|running_var|num_batches_tracked)"
# a point-head layer's conv weight ("0.weight") or BN tensor ("1.<param>")
_POINT_FC = re.compile(rf"^fcs\.(\d+)\.(0\.weight|1\.{_BN})$")


def _fpn(match) -> str:
    kind, level, part, param = match.groups()
    name = "fpn_lateral" if kind == "lateral" else "fpn_output"
    suffix = f"norm.{param}" if part == "1" else param
    return f"backbone.{name}{int(level) + 2}.{suffix}"


def _scale_head(match) -> str:
    level, index, part, param = match.groups()
    suffix = f"norm.{param}" if part == "1" else param
    return f"{COARSE}p{int(level) + 2}.{index}.{suffix}"


# (pattern, target builder) for everything but the backbone and the point head's layers
_RULES: Rules = [
    (re.compile(r"^fpn_neck\.(lateral|fpn)_convs\.(\d)\.(0)\.(weight)$"), _fpn),
    (re.compile(rf"^fpn_neck\.(lateral|fpn)_convs\.(\d)\.(1)\.{_BN}$"), _fpn),
    (re.compile(r"^scale_heads\.(\d)\.(\d+)\.(0)\.(weight)$"), _scale_head),
    (re.compile(rf"^scale_heads\.(\d)\.(\d+)\.(1)\.{_BN}$"), _scale_head),
    (re.compile(r"^auxiliary_decoder\.1\.(weight|bias)$"), lambda m: f"{COARSE}predictor.{m[1]}"),
    (re.compile(r"^decoder\.1\.(weight|bias)$"), lambda m: f"{POINT}predictor.{m[1]}"),
]


def rename_sssegmentation_key(key: str) -> Optional[str]:
    """One sssegmentation PointRend key in this project's naming, or None when it is not one
    of the rules' (the point head's ``fcs.*``, converted layer by layer, see
    :func:`convert_sssegmentation_pointrend`)."""
    return rename_with_rules(key, "backbone_net.", _RULES)


def fold_batch_norm(
    weight: torch.Tensor, norm: Mapping[str, torch.Tensor], eps: float = _BN_EPS
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Fold an inference-mode BatchNorm into the bias-free convolution before it.

    ``bn(conv(x)) = conv'(x)`` with ``W' = W * s`` and ``b' = beta - mean * s`` for
    ``s = gamma / sqrt(var + eps)``, per output channel.

    Args:
        weight: (C_out, C_in, *kernel) convolution weight.
        norm: the BN's "weight", "bias", "running_mean", "running_var", each (C_out,).
        eps: the BN's epsilon.

    Returns:
        weight (C_out, C_in, *kernel) and bias (C_out,), in ``weight``'s dtype.
    """
    scale = norm["weight"].double() / torch.sqrt(norm["running_var"].double() + eps)
    folded = weight.double() * scale.reshape(-1, *([1] * (weight.dim() - 1)))
    bias = norm["bias"].double() - norm["running_mean"].double() * scale
    return folded.to(weight.dtype), bias.to(weight.dtype)


def _point_head_problems(k: int, parts: Mapping[str, torch.Tensor]) -> List[str]:
    """What keeps point-head layer ``fcs.<k>`` from being converted: missing tensors, and BN
    tensors whose shape is not (C_out,) of the conv weight (C_out, C_in, 1)."""
    needed = ["0.weight"] + [f"1.{p}" for p in _BN_PARAMS]
    missing = [f"fcs.{k}.{p} (missing)" for p in needed if p not in parts]
    if missing:
        return missing
    channels = parts["0.weight"].shape[0]
    return [
        f"fcs.{k}.1.{p} {tuple(parts[f'1.{p}'].shape)} (expected ({channels},))"
        for p in _BN_PARAMS
        if tuple(parts[f"1.{p}"].shape) != (channels,)
    ]


def _convert_point_head(
    fcs: Mapping[int, Mapping[str, torch.Tensor]], fold_norms: bool
) -> "OrderedDict[str, torch.Tensor]":
    """``fcs.<k>.0.weight`` -> ``fc<k+1>.weight`` and ``fcs.<k>.1.*`` -> ``fc<k+1>.norm.*``;
    or, with ``fold_norms``, both folded into ``fc<k+1>.weight`` / ``.bias``.

    Raises:
        KeyError: naming every missing or mis-shaped tensor of any layer.
    """
    problems = [problem for k in sorted(fcs) for problem in _point_head_problems(k, fcs[k])]
    if problems:
        raise KeyError(f"cannot convert the point head's conv + BN layers: {problems}")
    converted = OrderedDict()
    for k in sorted(fcs):
        fc = f"{POINT}fc{k + 1}"
        if fold_norms:
            norm = {p: fcs[k][f"1.{p}"] for p in _BN_PARAMS}
            converted[f"{fc}.weight"], converted[f"{fc}.bias"] = fold_batch_norm(
                fcs[k]["0.weight"], norm
            )
            continue
        converted[f"{fc}.weight"] = fcs[k]["0.weight"]
        for part, value in fcs[k].items():
            if part.startswith("1."):
                converted[f"{fc}.norm.{part[2:]}"] = value
    return converted


def convert_sssegmentation_pointrend(
    state_dict: Mapping[str, torch.Tensor], fold_point_head_norms: bool = False
) -> "OrderedDict[str, torch.Tensor]":
    """Convert the model state dict of an sssegmentation PointRend checkpoint.

    Every tensor is renamed (BN counters ``num_batches_tracked`` included); the point head's
    ``fcs.<k>.1.*`` BNs become ``fc<k+1>.norm.*`` (for ``MODEL.POINTREND_SEM.FC_NORM`` "SyncBN").

    Args:
        state_dict: ``checkpoint["model"]`` (see :func:`sssegmentation_state_dict`).
        fold_point_head_norms: fold the point head's BNs into ``fc<k+1>.weight`` / ``.bias``
            instead (for ``FC_NORM ""``; their counters are dropped).

    Returns:
        OrderedDict in this project's keys.

    Raises:
        KeyError: naming every key that could not be placed; or every missing or mis-shaped
            tensor of a point-head layer.
    """
    converted, unplaced = OrderedDict(), []
    fcs: Dict[int, Dict[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        match = _POINT_FC.match(key)
        if match:
            # a folded BN leaves its counter behind
            if not (fold_point_head_norms and match[2] == "1.num_batches_tracked"):
                fcs.setdefault(int(match[1]), {})[match[2]] = value
            continue
        new_key = rename_sssegmentation_key(key)
        if new_key is None:
            unplaced.append(key)
        else:
            converted[new_key] = value
    if unplaced:
        raise KeyError(f"cannot place {len(unplaced)} sssegmentation key(s): {unplaced}")
    converted.update(_convert_point_head(fcs, fold_point_head_norms))
    return converted


def sssegmentation_state_dict(checkpoint: Mapping) -> Dict[str, torch.Tensor]:
    """The model state dict inside a loaded sssegmentation checkpoint.

    sssegmentation saves ``{"model": state_dict, "optimizer": ..., "epoch": ...}``; a
    ``"module."`` prefix (a model saved inside DistributedDataParallel) is removed.
    """
    state = checkpoint.get("model", checkpoint)
    if state and all(key.startswith("module.") for key in state):
        state = {key[len("module.") :]: value for key, value in state.items()}
    return dict(state)


def check_converted(
    converted: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]
) -> None:
    """Check a converted state dict against a model's ``state_dict()``, key for key.

    Raises:
        KeyError: naming every model key the conversion does not provide and every converted
            key the model does not have.
        ValueError: naming every key whose shape differs, with both shapes.
    """
    missing = [k for k in expected if k not in converted]
    unexpected = [k for k in converted if k not in expected]
    if missing or unexpected:
        raise KeyError(f"missing in the conversion: {missing}; not in the model: {unexpected}")
    misshaped = [
        f"{k}: converted {tuple(converted[k].shape)}, model {tuple(expected[k].shape)}"
        for k in expected
        if tuple(converted[k].shape) != tuple(expected[k].shape)
    ]
    if misshaped:
        raise ValueError(f"shape mismatch: {misshaped}")
