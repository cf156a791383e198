"""ImageNet ResNets (mmcv's ResNetV1c, torchvision's ResNet) -> detectron2 ResNet keys."""

import re
from typing import Dict

import torch

from .placement import BACKBONE_PREFIX, Rules, StateDict, place_state_dict

# mmcv's deep stem (a Sequential: conv, BN, ReLU three times) -> detectron2's DeepLabStem
_MMCV_STEM = {
    "0": "conv1",
    "1": "conv1.norm",
    "3": "conv2",
    "4": "conv2.norm",
    "6": "conv3",
    "7": "conv3.norm",
}
_BLOCK = re.compile(r"^layer(\d)\.(\d+)\.(conv\d|bn\d|downsample\.0|downsample\.1)\.(.+)$")
_BLOCK_PARTS = {"downsample.0": "shortcut", "downsample.1": "shortcut.norm"}
# the ImageNet classifier, and BN's counter (detectron2's norms do not keep it)
DROPPED = re.compile(r"^fc\.|num_batches_tracked$")


def _block(match: re.Match) -> str:
    """``layer<s>.<b>.<part>.<param>`` -> ``res<s+1>.<b>.<part>.<param>`` (bn<k> ->
    conv<k>.norm, downsample -> shortcut)."""
    stage, block, part, param = match.groups()
    if part.startswith("bn"):
        part = f"conv{part[2:]}.norm"
    part = _BLOCK_PARTS.get(part, part)
    return f"{BACKBONE_PREFIX}res{int(stage) + 1}.{block}.{part}.{param}"


def _mmcv_stem(match: re.Match):
    part = _MMCV_STEM.get(match[1])
    return None if part is None else f"{BACKBONE_PREFIX}stem.{part}.{match[2]}"


# per source, the rules that place a ResNet's keys under ``backbone.bottom_up.``
RESNET_RULES: Dict[str, Rules] = {
    "mmcv": [(re.compile(r"^stem\.(\d)\.(.+)$"), _mmcv_stem), (_BLOCK, _block)],
    "torchvision": [
        (re.compile(r"^conv1\.(.+)$"), lambda m: f"{BACKBONE_PREFIX}stem.conv1.{m[1]}"),
        (re.compile(r"^bn1\.(.+)$"), lambda m: f"{BACKBONE_PREFIX}stem.conv1.norm.{m[1]}"),
        (_BLOCK, _block),
    ],
}


def convert_resnet_backbone(state_dict: StateDict, source: str) -> "Dict[str, torch.Tensor]":
    """Rename an ImageNet ResNet state dict into this project's backbone keys.

    Args:
        state_dict: the source's parameters and buffers (a ``module.`` before every key is
            removed).
        source: "mmcv" or "torchvision".

    Returns:
        OrderedDict of ``backbone.bottom_up.*`` tensors.

    Raises:
        ConversionError (a KeyError): naming every key that could not be placed.
    """
    return place_state_dict(
        state_dict, RESNET_RULES[source], source=f"{source} ResNet", drop=DROPPED
    )
