"""The reference implementations a PointRend config is compared with (``--compare``):
detectron2's PointRend and mmsegmentation's, sized like the config and holding the same weights
as ours."""

import os
from typing import Any, List, Tuple

import torch
from detectron2.checkpoint import DetectionCheckpointer
from torch import nn

from pointrend_sem.convert import ConversionError, check_state_dict

from .inputs import detectron2_inputs, in_format, sem_seg_labels
from .measure import Contender
from .reference_models import randomize_norms

COMPARE_CHOICES = ("detectron2", "mmseg")


def reference_opts(cfg) -> List[Any]:
    """Overrides of detectron2's PointRend config that match our config's architecture size."""
    num_classes = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    return [
        "MODEL.RESNETS.DEPTH", cfg.MODEL.RESNETS.DEPTH,
        "MODEL.RESNETS.RES2_OUT_CHANNELS", cfg.MODEL.RESNETS.RES2_OUT_CHANNELS,
        "MODEL.SEM_SEG_HEAD.NUM_CLASSES", num_classes,
        "MODEL.POINT_HEAD.NUM_CLASSES", num_classes,
        "MODEL.POINT_HEAD.SUBDIVISION_STEPS", cfg.MODEL.POINTREND_SEM.SUBDIVISION_STEPS,
        "MODEL.POINT_HEAD.SUBDIVISION_NUM_POINTS", cfg.MODEL.POINTREND_SEM.SUBDIVISION_NUM_POINTS,
        "MODEL.DEVICE", cfg.MODEL.DEVICE,
    ]  # fmt: skip


def detectron2_reference(cfg, weights: str, seed: int) -> Tuple[nn.Module, str]:
    """detectron2's PointRend semantic model sized like ``cfg``, with ``weights`` or random
    weights (random normalization statistics included).

    Returns:
        (model in eval mode, its INPUT.FORMAT).
    """
    import detectron2

    from .reference_models import (
        build_detectron2_pointrend,
        detectron2_pointrend_config,
    )

    root = os.path.dirname(os.path.dirname(detectron2.__file__))
    opts = reference_opts(cfg)
    reference = build_detectron2_pointrend(root, opts)
    if weights:
        DetectionCheckpointer(reference).load(weights)
    else:
        randomize_norms(reference, seed)
    return reference, detectron2_pointrend_config(root, opts).INPUT.FORMAT


def mmseg_reference(cfg, weights: str, seed: int) -> nn.Module:
    """mmsegmentation's PointRend sized like ``cfg`` (BN), with ``weights`` (an mmseg
    checkpoint) or random weights (random normalization statistics included), on the CPU
    (:func:`build_reference` moves it to ``MODEL.DEVICE``)."""
    from .reference_models import build_mmseg_pointrend

    steps = cfg.MODEL.POINTREND_SEM.SUBDIVISION_STEPS
    if steps != 2:
        raise SystemExit(f"--compare mmseg: mmseg's recipe has 2 subdivision steps, ours {steps}.")
    reference = build_mmseg_pointrend(
        depth=cfg.MODEL.RESNETS.DEPTH,
        num_classes=cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
        norm="BN",
        subdivision_num_points=cfg.MODEL.POINTREND_SEM.SUBDIVISION_NUM_POINTS,
    )
    if weights:
        from mmengine.runner import load_checkpoint

        load_checkpoint(reference, weights, map_location="cpu")
    else:
        randomize_norms(reference, seed)
    return reference


def load_reference_weights(kind: str, reference: nn.Module, ours: nn.Module) -> None:
    """Give ``ours`` every tensor of ``reference`` (renamed from mmseg's keys for "mmseg").

    Raises:
        SystemExit: when our config's model cannot hold the reference's weights.
    """
    state = reference.state_dict()
    if kind == "mmseg":
        from pointrend_sem.convert.mmseg import convert_mmseg_pointrend

        state = convert_mmseg_pointrend(state)
    hint = {
        "detectron2": "a config with detectron2's architecture, e.g. "
        "configs/cityscapes_r101_detectron2.yaml",
        "mmseg": "an mmseg-recipe config such as configs/cityscapes_r50.yaml with "
        "MODEL.RESNETS.NORM BN MODEL.SEM_SEG_HEAD.NORM BN (and MODEL.RESNETS.RES2_OUT_CHANNELS "
        "64 below depth 50)",
    }[kind]
    try:
        check_state_dict(state, ours.state_dict(), optional_suffixes=("num_batches_tracked",))
    except ConversionError as e:
        raise SystemExit(f"--compare {kind} needs {hint}:\n{e}") from None
    ours.load_state_dict(state, strict=False)


def build_reference(kind: str, cfg, ours: nn.Module, image_rgb: torch.Tensor, args) -> Contender:
    """The reference model of ``kind`` as a :class:`Contender`, its weights copied into ours,
    on ours' device (``cfg.MODEL.DEVICE``).

    ``args``: the command line's ``weights``, ``seed`` and ``batch_size``.
    """
    if kind == "detectron2":
        reference, input_format = detectron2_reference(cfg, args.weights, args.seed)
        load_reference_weights(kind, reference, ours)
        inputs = detectron2_inputs(in_format(image_rgb, input_format), args.batch_size)
        return Contender("reference", lambda: reference(inputs), sem_seg_labels)

    from .reference_models import mmseg_logits

    # mmsegmentation's PointRend is plain PyTorch (the mmcv.ops shim's point_sample is
    # grid_sample): it runs on our device; like ours and detectron2's, it takes the image from
    # host memory at each pass (mmseg_logits copies it to the model's device)
    reference = mmseg_reference(cfg, args.weights, args.seed)
    load_reference_weights(kind, reference, ours)
    reference.to(cfg.MODEL.DEVICE)
    images = [image_rgb] * args.batch_size
    return Contender(
        "reference",
        lambda: mmseg_logits(reference, images),
        lambda logits: [x.argmax(0) for x in logits],
    )


def agreement(ours: List[torch.Tensor], theirs: List[torch.Tensor]) -> float:
    """Fraction of pixels, over all images, where two predictions have the same class."""
    same = sum(int((a == b.to(a.device)).sum()) for a, b in zip(ours, theirs))
    return same / sum(a.numel() for a in ours)
