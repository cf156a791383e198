"""Published checkpoints recognized from their contents, and converted with shape checks.

:func:`recognize_checkpoint` tells from the keys of a loaded checkpoint (never from the file name)
which code base it comes from; :func:`convert_checkpoint` renames its tensors into this project's
keys and checks them against the model they are for. ``tools/convert_weights.py`` and the
checkpointer that reads ``MODEL.WEIGHTS``
(:class:`pointrend_sem.checkpoint.PointRendSemCheckpointer`) both convert through
:func:`convert_checkpoint`.
"""

from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import torch

from .mmseg import convert_mmseg_pointrend
from .placement import (
    BACKBONE_PREFIX,
    BN_COUNTER,
    POINT,
    StateDict,
    check_state_dict,
    strip_ddp_prefix,
)
from .resnet import convert_resnet_backbone
from .sssegmentation import convert_sssegmentation_pointrend

BACKBONE_SOURCES = ("mmcv", "torchvision")
MODEL_SOURCES = ("mmseg", "sssegmentation")
# how each source's checkpoint is named in messages
DESCRIPTIONS = {
    "mmseg": "an mmsegmentation PointRend checkpoint",
    "sssegmentation": "an sssegmentation PointRend checkpoint",
    "mmcv": "an mmcv ImageNet ResNet (backbone only)",
    "torchvision": "a torchvision ImageNet ResNet (backbone only)",
}
# the wrappers a code base puts its model's state dict under
_WRAPPERS = ("state_dict", "model")


def unwrap_state_dict(checkpoint: Any) -> Dict[str, Any]:
    """The model state dict inside a loaded checkpoint: ``checkpoint`` itself, or what it holds
    under "state_dict" / "model" (mmsegmentation: ``{"meta", "state_dict"}``; sssegmentation:
    ``{"model", "optimizer", "epoch"}``; detectron2: ``{"model", "__author__"}``), unwrapped as
    often as nested. Empty for anything that is not a dict."""
    while isinstance(checkpoint, Mapping):
        inner = [checkpoint[w] for w in _WRAPPERS if isinstance(checkpoint.get(w), Mapping)]
        if not inner:
            return dict(checkpoint)
        checkpoint = inner[0]
    return {}


def recognize_state_dict(state_dict: Mapping[str, Any]) -> Optional[str]:
    """The source ("mmseg", "sssegmentation", "mmcv", "torchvision") whose key layout
    ``state_dict`` has (a ``module.`` before every key is ignored); None for this project's own
    keys (detectron2's layout) and anything else."""
    keys = list(strip_ddp_prefix({k: None for k in state_dict if isinstance(k, str)}))
    if any(k.startswith("decode_head.") for k in keys):
        return "mmseg"
    if any(k.startswith("backbone_net.") for k in keys):
        return "sssegmentation"
    if any(k.startswith("layer1.") for k in keys):
        if any(k.startswith("stem.0.") for k in keys):
            return "mmcv"
        if any(k.startswith("conv1.") for k in keys):
            return "torchvision"
    return None


def recognize_checkpoint(checkpoint: Any) -> Optional[Tuple[str, Dict[str, torch.Tensor]]]:
    """(source, its model's tensors) of a loaded published checkpoint of another code base (see
    :func:`recognize_state_dict`); None for this project's and detectron2's checkpoints, which
    load as they are, and for anything unknown."""
    state = unwrap_state_dict(checkpoint)
    source = recognize_state_dict(state)
    if source is None:
        return None
    return source, {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def converter(
    source: str, fold_point_head_norms: bool = False
) -> Callable[[StateDict], Dict[str, torch.Tensor]]:
    """The renaming function of ``source`` (``fold_point_head_norms``: sssegmentation only)."""
    if source in BACKBONE_SOURCES:
        return lambda state: convert_resnet_backbone(state, source)
    if source == "mmseg":
        return convert_mmseg_pointrend
    if source == "sssegmentation":
        return lambda state: convert_sssegmentation_pointrend(state, fold_point_head_norms)
    raise ValueError(f"unknown source {source!r}; one of {MODEL_SOURCES + BACKBONE_SOURCES}")


def has_point_head_norms(model_state: StateDict) -> bool:
    """Whether the point head of a model (its ``state_dict()``) has norms after its fc layers
    (``MODEL.POINTREND_SEM.FC_NORM`` set): sssegmentation's BNs then stay norms, else they are
    folded into the fc layers."""
    return any(k.startswith(POINT) and ".norm." in k for k in model_state)


def convert_checkpoint(
    state_dict: StateDict,
    source: str,
    model_state: Optional[StateDict] = None,
    *,
    fold_point_head_norms: bool = False,
) -> Dict[str, torch.Tensor]:
    """Rename ``source``'s state dict into this project's keys and check it against a model.

    Args:
        state_dict: the source model's tensors (e.g. from :func:`recognize_checkpoint`).
        source: "mmseg", "sssegmentation", "mmcv" or "torchvision".
        model_state: ``state_dict()`` of the model the weights are for (keys and shapes only are
            read): every model tensor must be filled (a backbone: those of
            ``backbone.bottom_up.``; BN counters may stay unfilled), no key may be one the model
            lacks, every shape must agree. None: no check.
        fold_point_head_norms: sssegmentation only, see
            :func:`~pointrend_sem.convert.sssegmentation.convert_sssegmentation_pointrend`.

    Returns:
        OrderedDict in this project's keys.

    Raises:
        ConversionError: naming every key that cannot be placed or does not fit the model.
    """
    converted = converter(source, fold_point_head_norms)(state_dict)
    if model_state is not None:
        check_converted(converted, source, model_state)
    return converted


def check_converted(converted: StateDict, source: str, model_state: StateDict) -> None:
    """Check tensors converted from ``source`` against a model's ``state_dict()`` as
    :func:`convert_checkpoint` does.

    Raises:
        ConversionError: naming every key that does not fit the model.
    """
    check_state_dict(
        converted,
        model_state,
        required_prefix="" if source in MODEL_SOURCES else BACKBONE_PREFIX,
        optional_suffixes=(BN_COUNTER,),
    )
