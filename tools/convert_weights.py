#!/usr/bin/env python
"""Convert other codebases' checkpoints into files that MODEL.WEIGHTS loads.

    # a full PointRend model (give the config it will be used with)
    python tools/convert_weights.py --from mmseg --config-file configs/cityscapes_r50.yaml \
        pointrend_r50_512x1024_80k_cityscapes.pth pretrained/pointrend_r50_cityscapes_mmseg.pth
    python tools/convert_weights.py --from sssegmentation \
        --config-file configs/voc_r50_sssegmentation.yaml \
        pointrend_resnet50os8_voc_train.pth out.pth
    # the same with the point head's BNs folded into its fc layers (a point head without norms:
    # use the weights with MODEL.POINTREND_SEM.FC_NORM "")
    python tools/convert_weights.py --from sssegmentation --fold-point-head-norms \
        --config-file configs/voc_r50_sssegmentation.yaml \
        pointrend_resnet50os8_voc_train.pth out_folded.pth
    # an ImageNet backbone
    python tools/convert_weights.py --from mmcv resnet50_v1c-2cccc1ad.pth \
        pretrained/resnet50_v1c.pth
    python tools/convert_weights.py --from torchvision resnet50-0676ba61.pth out.pth

Sources: ``mmseg`` (mmsegmentation PointRend), ``sssegmentation`` (its PointRend), ``mmcv``
(mmcv's ImageNet ResNetV1c, ``open-mmlab://resnet50_v1c``), ``torchvision`` (ImageNet ResNet;
use with ``MODEL.RESNETS.STEM_TYPE basic``). Every key is renamed and checked against the model
of the config: the tool prints what it mapped and refuses to write (naming them) when a key
cannot be placed, a shape disagrees, or — for full models — a model weight is left unfilled.
A checkpoint saved from inside DistributedDataParallel (every key starting with ``module.``)
converts as it is.
"""

import argparse
import os
import re
import sys
from typing import Dict, List, Optional

import pointrend_sem  # noqa: F401  # isort: skip  (first: detectron2 imported quietly)
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model

from pointrend_sem import add_pointrend_sem_config
from pointrend_sem.checkpoint.safe_load import load_weights_file
from pointrend_sem.convert import ConversionError
from pointrend_sem.convert.placement import BACKBONE_PREFIX
from pointrend_sem.convert.published import (  # noqa: F401  (converter: for scripts and tests)
    BACKBONE_SOURCES,
    MODEL_SOURCES,
    check_converted,
    convert_checkpoint,
    converter,
)
from pointrend_sem.errors import UserError, UserFileNotFoundError, main_with_one_line_errors


def load_state_dict(path: str, unsafe: bool = False) -> Dict[str, torch.Tensor]:
    """Tensors of a checkpoint file, unwrapped from "state_dict"/"model" if nested.

    Read by :func:`pointrend_sem.checkpoint.safe_load.load_weights_file` (no code from the file
    runs); with ``unsafe`` (``--unsafe-load``, as ``POINTREND_SEM_TRUST_CHECKPOINTS=1``) a file
    that holds other pickled objects loads too, with a warning.
    """
    try:
        checkpoint = load_weights_file(path, trust=True if unsafe else None)
    except UserError:
        raise
    except Exception as e:  # torch and pickle raise errors of many kinds for a bad file
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise ValueError(f"cannot be read as a checkpoint ({type(e).__name__}: {first})") from e
    for wrapper in ("state_dict", "model"):
        if isinstance(checkpoint, dict) and isinstance(checkpoint.get(wrapper), dict):
            checkpoint = checkpoint[wrapper]
    return {k: v for k, v in checkpoint.items() if isinstance(v, torch.Tensor)}


def target_state(config_file: str, opts: List[str]) -> Dict[str, torch.Tensor]:
    """Parameters and buffers of the model a config builds (random weights, CPU)."""
    cfg = get_cfg()
    add_pointrend_sem_config(cfg)
    cfg.merge_from_file(config_file)
    cfg.merge_from_list([*opts, "MODEL.DEVICE", "cpu"])
    return build_model(cfg).state_dict()


def backbone_depth(converted: Dict[str, torch.Tensor]) -> Optional[int]:
    """ResNet depth of a converted ImageNet backbone, from its number of res4 blocks and block
    type; None when those match no ResNet."""
    res4 = re.compile(re.escape(BACKBONE_PREFIX) + r"res4\.(\d+)\.")
    blocks = {m[1] for k in converted for m in [res4.match(k)] if m}
    bottleneck = any(k.startswith(f"{BACKBONE_PREFIX}res2.0.conv3.") for k in converted)
    return {(6, True): 50, (23, True): 101, (36, True): 152, (2, False): 18, (6, False): 34}.get(
        (len(blocks), bottleneck)
    )


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--from", dest="source", required=True, choices=MODEL_SOURCES + BACKBONE_SOURCES
    )
    parser.add_argument("input", help="source checkpoint")
    parser.add_argument("output", help="converted file for MODEL.WEIGHTS (.pth)")
    parser.add_argument(
        "--config-file",
        help="config the weights are for (required for full models; backbones default to "
        "configs/cityscapes_r50.yaml at the checkpoint's depth)",
    )
    parser.add_argument(
        "--unsafe-load",
        action="store_true",
        help="the file is trusted: load other pickled objects too, which can run code (as "
        "POINTREND_SEM_TRUST_CHECKPOINTS=1)",
    )
    parser.add_argument(
        "--fold-point-head-norms",
        action="store_true",
        help="sssegmentation: fold the point head's BNs into its fc layers (exact in inference) "
        'for a point head without norms, MODEL.POINTREND_SEM.FC_NORM ""; default: keep them',
    )
    parser.add_argument(
        "opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ... (after OUTPUT)"
    )
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.fold_point_head_norms and args.source != "sssegmentation":
        print("error: --fold-point-head-norms is for --from sssegmentation.", file=sys.stderr)
        return 2
    if not os.path.isfile(args.input):
        raise UserFileNotFoundError(f"The checkpoint {args.input} to convert does not exist.")
    try:
        state = load_state_dict(args.input, args.unsafe_load)
        converted = convert_checkpoint(
            state, args.source, fold_point_head_norms=args.fold_point_head_norms
        )
    except UserError:  # names the file itself (one that asks for other pickled objects)
        raise
    except (KeyError, ValueError) as e:  # a ConversionError lists every key at fault
        print(f"error: {args.input}: {e}\nnothing written.", file=sys.stderr)
        return 1
    opts = list(args.opts)
    config_file = args.config_file
    if config_file is None:
        if args.source in MODEL_SOURCES:
            print("error: --config-file is required for a full model.", file=sys.stderr)
            return 2
        config_file = "configs/cityscapes_r50.yaml"
        depth = backbone_depth(converted)
        if depth is None:
            print(
                f"error: {args.input}: not a ResNet-18/34/50/101/152; give --config-file.",
                file=sys.stderr,
            )
            return 2
        opts += ["MODEL.RESNETS.DEPTH", str(depth)]
        opts += ["MODEL.RESNETS.RES2_OUT_CHANNELS", "64" if depth < 50 else "256"]
        if args.source == "torchvision":
            opts += ["MODEL.RESNETS.STEM_TYPE", "basic"]
    if args.fold_point_head_norms:
        opts += ["MODEL.POINTREND_SEM.FC_NORM", ""]
    try:
        check_converted(converted, args.source, target_state(config_file, opts))
    except ConversionError as e:
        print(
            f"error: {args.input} does not fit {config_file}: {e}\nnothing written.",
            file=sys.stderr,
        )
        return 1
    for key, value in converted.items():
        print(f"{key:70s} {tuple(value.shape)}")
    torch.save({"model": converted, "__author__": f"pointrend-sem from {args.source}"}, args.output)
    print(f"wrote {len(converted)} tensors to {args.output}")
    if args.fold_point_head_norms:
        print('point head norms folded: use these weights with MODEL.POINTREND_SEM.FC_NORM ""')
    return 0


if __name__ == "__main__":
    sys.exit(main_with_one_line_errors(main)())
