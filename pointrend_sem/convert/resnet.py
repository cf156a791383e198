"""ImageNet ResNets (mmcv's ResNetV1c, torchvision's ResNet) -> detectron2 ResNet keys."""

import re
from collections import OrderedDict
from typing import Dict, Optional

import torch

# source prefix -> target prefix, for the stems; blocks are mapped by rename_block_key
STEMS = {
    "mmcv": {
        "stem.0.": "stem.conv1.",
        "stem.1.": "stem.conv1.norm.",
        "stem.3.": "stem.conv2.",
        "stem.4.": "stem.conv2.norm.",
        "stem.6.": "stem.conv3.",
        "stem.7.": "stem.conv3.norm.",
    },
    "torchvision": {"conv1.": "stem.conv1.", "bn1.": "stem.conv1.norm."},
}
_BLOCK = re.compile(r"^layer(\d)\.(\d+)\.(conv\d|bn\d|downsample\.0|downsample\.1)\.(.+)$")
_BLOCK_PARTS = {"downsample.0": "shortcut", "downsample.1": "shortcut.norm"}
# the ImageNet classifier, and BN's counter (detectron2's norms do not keep it)
DROPPED = re.compile(r"^fc\.|num_batches_tracked$")
BACKBONE_PREFIX = "backbone.bottom_up."


def rename_block_key(key: str) -> Optional[str]:
    """``layer<s>.<b>.<part>.<param>`` -> ``res<s+1>.<b>.<part>.<param>`` (bn<k> -> conv<k>.norm,
    downsample -> shortcut), or None when ``key`` is not a residual block's."""
    match = _BLOCK.match(key)
    if match is None:
        return None
    stage, block, part, param = match.groups()
    if part.startswith("bn"):
        part = f"conv{part[2:]}.norm"
    part = _BLOCK_PARTS.get(part, part)
    return f"res{int(stage) + 1}.{block}.{part}.{param}"


def rename_resnet_key(key: str, source: str) -> Optional[str]:
    """A ResNet key of ``source`` ("mmcv" or "torchvision") renamed to detectron2's ResNet
    (without prefix), or None when it cannot be placed."""
    for src, target in STEMS[source].items():
        if key.startswith(src):
            return target + key[len(src) :]
    return rename_block_key(key)


def convert_resnet_backbone(state_dict: Dict[str, torch.Tensor], source: str):
    """Rename an ImageNet ResNet state dict into this project's backbone keys.

    Args:
        state_dict: the source's parameters and buffers.
        source: "mmcv" or "torchvision".

    Returns:
        OrderedDict of ``backbone.bottom_up.*`` tensors.

    Raises:
        KeyError: naming every key that could not be placed.
    """
    converted, unplaced = OrderedDict(), []
    for key, value in state_dict.items():
        if DROPPED.search(key):
            continue
        new_key = rename_resnet_key(key, source)
        if new_key is None:
            unplaced.append(key)
        else:
            converted[BACKBONE_PREFIX + new_key] = value
    if unplaced:
        raise KeyError(f"cannot place {len(unplaced)} key(s) of a {source} ResNet: {unplaced}")
    return converted
