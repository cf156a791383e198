#!/usr/bin/env python
"""Convert ImageNet-pretrained ResNet backbones into files that MODEL.WEIGHTS loads.

    python tools/convert_weights.py --from mmcv resnet50_v1c-2cccc1ad.pth \
        pretrained/resnet50_v1c.pth
    python tools/convert_weights.py --from torchvision resnet50-0676ba61.pth pretrained/r50_tv.pth

``mmcv``: mmcv/mmsegmentation's ResNetV1c (``open-mmlab://resnet50_v1c``), deep stem.
``torchvision``: torchvision's ResNet, 7x7 stem (use with ``MODEL.RESNETS.STEM_TYPE basic``).
Every key is placed or the tool refuses to write and names the keys it could not place; the
ImageNet classifier (``fc.*``) is dropped on purpose.
"""

import argparse
import re
import sys
from collections import OrderedDict
from typing import Dict

import torch

# (source prefix pattern, target prefix) for the stems; blocks are mapped by _BLOCK below.
_STEMS = {
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
_DROPPED = re.compile(r"^fc\.|num_batches_tracked$")
BACKBONE_PREFIX = "backbone.bottom_up."


def _rename_block_key(key: str):
    match = _BLOCK.match(key)
    if match is None:
        return None
    stage, block, part, param = match.groups()
    if part.startswith("bn"):
        part = f"conv{part[2:]}.norm"
    part = _BLOCK_PARTS.get(part, part)
    return f"res{int(stage) + 1}.{block}.{part}.{param}"


def convert_resnet_backbone(state_dict: Dict[str, torch.Tensor], source: str):
    """Rename a ResNet ImageNet state dict into pointrend-sem's backbone keys.

    Args:
        state_dict: the source's parameters and buffers.
        source: "mmcv" or "torchvision".

    Returns:
        OrderedDict of ``backbone.bottom_up.*`` tensors.

    Raises:
        KeyError: naming every key that could not be placed.
    """
    stems = _STEMS[source]
    converted, unplaced = OrderedDict(), []
    for key, value in state_dict.items():
        if _DROPPED.search(key):
            continue
        new_key = next(
            (target + key[len(src) :] for src, target in stems.items() if key.startswith(src)),
            None,
        )
        new_key = new_key or _rename_block_key(key)
        if new_key is None:
            unplaced.append(key)
            continue
        converted[BACKBONE_PREFIX + new_key] = value
    if unplaced:
        raise KeyError(f"cannot place {len(unplaced)} key(s) of a {source} ResNet: {unplaced}")
    return converted


def load_state_dict(path: str) -> Dict[str, torch.Tensor]:
    """Parameters of a checkpoint file, unwrapped from "state_dict"/"model" if nested."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    for wrapper in ("state_dict", "model"):
        if isinstance(checkpoint, dict) and isinstance(checkpoint.get(wrapper), dict):
            checkpoint = checkpoint[wrapper]
    return checkpoint


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--from", dest="source", required=True, choices=sorted(_STEMS))
    parser.add_argument("input", help="source checkpoint (.pth)")
    parser.add_argument("output", help="converted file for MODEL.WEIGHTS (.pth)")
    args = parser.parse_args(argv)
    try:
        converted = convert_resnet_backbone(load_state_dict(args.input), args.source)
    except KeyError as e:
        print(f"error: {args.input}: {e.args[0]}; nothing written.", file=sys.stderr)
        return 1
    for key, value in converted.items():
        print(f"{key:60s} {tuple(value.shape)}")
    torch.save({"model": converted, "__author__": "pointrend-sem convert_weights"}, args.output)
    print(f"wrote {len(converted)} tensors to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
