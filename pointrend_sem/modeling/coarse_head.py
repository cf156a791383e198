"""Coarse heads: predict class logits at a common stride from backbone feature maps; the
contract a coarse head fulfils for :class:`~.pointrend_head.PointRendSemHead`, checked when the
model is built.

Shape shorthand in this module: N: images, C: classes predicted (logits per pixel; 1 for a
one-logit binary model), H x W: the padded input batch, C_f x H_f x W_f: one feature map at
stride s_f, s: the coarse head's ``common_stride``, H_c x W_c: the coarse logits' grid,
(H / s) x (W / s).

The coarse-head contract. ``MODEL.POINTREND_SEM.COARSE_HEAD_NAME`` names a head of detectron2's
``SEM_SEG_HEADS_REGISTRY``; it is built as ``head(cfg, input_shape)``, ``input_shape`` being the
backbone's ``output_shape()`` (every map it produces, name -> ShapeSpec), and must offer:

* ``layers(features) -> (N, C, H_c, W_c)`` logits, C = ``MODEL.SEM_SEG_HEAD.NUM_CLASSES``, from
  the dict of backbone maps of a batch padded to H x W;
* ``common_stride``: the int s those logits are at, H_c x W_c = (H / s) x (W / s) for an H x W
  that every backbone stride divides (the size of a backbone map of stride s). detectron2's heads
  and those of this package read it from ``MODEL.SEM_SEG_HEAD.COMMON_STRIDE``;
* ``layers`` runs at any input size: test images are not crop-sized, so no pooling window may be
  fixed at the training crop (detectron2's ``ASPP(pool_kernel_size=...)``);
* ``predictor``, the classifier conv, only for ``MODEL.POINTREND_SEM.HEAD_INIT`` "mmseg".

The point head does not see the coarse head's own features: it samples the backbone maps named
by ``MODEL.POINTREND_SEM.IN_FEATURES`` (choose the finest: "p2" of an FPN, "res2" of a plain
ResNet) and the coarse logits at each point. Adaptive subdivision doubles the resolution S times,
``MODEL.POINTREND_SEM.SUBDIVISION_STEPS``; -1 derives S from s (:func:`subdivision_steps_for`).

:func:`build_coarse_head` checks the contract: it runs ``layers`` once, in eval mode without
gradients, on zero-valued maps of a small input and compares the logits with (1, C, H / s, W / s);
a head that does not fit stops the build with one line naming what is missing and the fix.
"""

import math
import numbers
from typing import Dict, Optional, Tuple

import torch
from detectron2.layers import ASPP, ShapeSpec
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from detectron2.modeling.meta_arch.semantic_seg import SemSegFPNHead
from torch import nn
from torch.nn import functional as F

from ..errors import UserKeyError, UserValueError
from .point_head import check_head_init

# MODEL.POINTREND_SEM.SUBDIVISION_STEPS value that derives the steps from the coarse stride
AUTO_SUBDIVISION_STEPS = -1
# registered heads that do not fit the contract as they are -> the adapter that does
ADAPTERS = {
    "DeepLabV3Head": "DeepLabV3CoarseHead",
    "DeepLabV3PlusHead": "DeepLabV3PlusCoarseHead",
}
_SEE_README = "README, 'PointRend on any coarse head'"


def init_coarse_head_(head: nn.Module, scheme: str) -> None:
    """(Re-)initialise, in place, the convolutions of a coarse head.

    * "detectron2": left as built (detectron2's Semantic FPN head: MSRA fill of every conv,
      classifier included; its DeepLab heads: Xavier fill, classifier N(0, 0.001); the FCN head:
      MSRA fill, classifier N(0, 0.001)).
    * "mmseg" (mmsegmentation 0.x, whose decode heads trained the published models): the other
      convs as built (MSRA fill = mmcv ConvModule's Kaiming init); the classifier ``predictor``
      (mmsegmentation's ``conv_seg``) N(0, 0.01), bias 0.
    * "sssegmentation": PyTorch's default of every conv (it initialises nothing itself).

    Norms are left as built (weight 1, bias 0).

    Raises:
        ValueError: an unknown scheme; "mmseg" for a head without a ``predictor`` conv.
    """
    check_head_init(scheme)
    if scheme == "mmseg":
        predictor = getattr(head, "predictor", None)
        if not isinstance(predictor, nn.Conv2d):
            raise UserValueError(
                f"MODEL.POINTREND_SEM.HEAD_INIT 'mmseg' re-initialises the coarse head's "
                f"classifier conv `predictor`, which {type(head).__name__} does not have; set "
                "HEAD_INIT 'detectron2' to keep the head's own initialisation."
            )
        nn.init.normal_(predictor.weight, std=0.01)
        if predictor.bias is not None:
            nn.init.constant_(predictor.bias, 0)
    elif scheme == "sssegmentation":
        for module in head.modules():
            if isinstance(module, nn.Conv2d):
                module.reset_parameters()


def subdivision_steps_for(steps: int, common_stride: int) -> int:
    """S, the subdivision steps of ``MODEL.POINTREND_SEM.SUBDIVISION_STEPS`` = ``steps`` for a
    coarse head at stride ``common_stride`` (s): ``steps`` itself when >= 0; for -1
    (:data:`AUTO_SUBDIVISION_STEPS`) the fewest x2 steps that reach stride 1, ceil(log2 s)
    (s = 4: 2, as the published recipes; 8: 3; 16: 4).

    Raises:
        ValueError: ``steps`` below -1.
    """
    if steps == AUTO_SUBDIVISION_STEPS:
        return (int(common_stride) - 1).bit_length()
    if steps < 0:
        raise UserValueError(
            f"MODEL.POINTREND_SEM.SUBDIVISION_STEPS is {steps}; set a number of steps >= 0, or "
            f"{AUTO_SUBDIVISION_STEPS} to take the coarse head's stride to 1."
        )
    return steps


def build_coarse_head(cfg, input_shape: Dict[str, ShapeSpec]) -> nn.Module:
    """The coarse head named by ``MODEL.POINTREND_SEM.COARSE_HEAD_NAME``, built from
    ``SEM_SEG_HEADS_REGISTRY``, checked against the contract (see the module's doc) and
    initialised as ``MODEL.POINTREND_SEM.HEAD_INIT`` says. detectron2's ``SemSegFPNHead`` is
    built as a :class:`SharedUpsampleSemSegFPNHead` (its subclass: same modules and results).

    Args:
        input_shape: every map the backbone produces (its ``output_shape()``).

    Raises:
        KeyError: the name is not registered.
        ValueError: the head does not fit the contract, or reads maps the backbone lacks; the
            message names the missing method, attribute or map and the fix.
    """
    name = cfg.MODEL.POINTREND_SEM.COARSE_HEAD_NAME
    if name not in SEM_SEG_HEADS_REGISTRY or name == "PointRendSemHead":
        choices = sorted({n for n, _ in SEM_SEG_HEADS_REGISTRY} - {"PointRendSemHead"})
        raise UserKeyError(
            f"MODEL.POINTREND_SEM.COARSE_HEAD_NAME {name!r} is not a coarse head of "
            f"SEM_SEG_HEADS_REGISTRY; choose one of {choices}, or register your own "
            f"({_SEE_README})."
        )
    head_class = SEM_SEG_HEADS_REGISTRY.get(name)
    if head_class is SemSegFPNHead:
        head_class = SharedUpsampleSemSegFPNHead  # same modules, one upsample
    try:
        head = head_class(cfg, input_shape)
    except Exception as e:
        missing = [f for f in cfg.MODEL.SEM_SEG_HEAD.IN_FEATURES if f not in input_shape]
        if not missing:
            raise
        raise UserValueError(
            f"MODEL.SEM_SEG_HEAD.IN_FEATURES names {missing}, which the backbone does not "
            f"produce, and the coarse head {name!r} failed to build ({type(e).__name__}: "
            f"{' '.join(str(e).split())}); choose from {sorted(input_shape)}."
        ) from e
    check_coarse_head(head, name, input_shape, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES)
    init_coarse_head_(head, cfg.MODEL.POINTREND_SEM.HEAD_INIT)
    return head


def check_coarse_head(
    head: nn.Module, name: str, input_shape: Dict[str, ShapeSpec], num_classes: int
) -> None:
    """Check that a built coarse head fits the contract (see the module's doc): it has
    ``layers`` and an int ``common_stride``, reads only maps of ``input_shape``, pools over no
    window fixed at the training crop, and, run once on zero-valued maps of a (2L x 3L) input
    (L: the least common multiple of the backbone strides and s), returns (1, C, 2L / s, 3L / s)
    logits, C = ``num_classes``. The head is left as it was (mode, parameters, buffers).

    Raises:
        ValueError: naming what does not fit and the fix.
    """
    where = f"The coarse head {name!r} (MODEL.POINTREND_SEM.COARSE_HEAD_NAME)"
    adapter = ADAPTERS.get(name)
    use_adapter = f"; set COARSE_HEAD_NAME {adapter!r}, its adapter" if adapter else ""
    if not callable(getattr(head, "layers", None)):
        raise UserValueError(
            f"{where} has no method layers(features) returning (N, C, H / s, W / s) logits"
            f"{use_adapter or ', which PointRend calls; add it'} ({_SEE_README})."
        )
    stride = getattr(head, "common_stride", None)
    if isinstance(stride, bool) or not isinstance(stride, numbers.Integral) or stride < 1:
        raise UserValueError(
            f"{where} has no int attribute common_stride > 0 (got {stride!r}), the stride s of "
            f"its logits; set it in the head, e.g. from MODEL.SEM_SEG_HEAD.COMMON_STRIDE "
            f"({_SEE_README})."
        )
    missing = [f for f in getattr(head, "in_features", ()) if f not in input_shape]
    if missing:
        raise UserValueError(
            f"{where} reads {missing}, which the backbone does not produce; set "
            f"MODEL.SEM_SEG_HEAD.IN_FEATURES to maps of {sorted(input_shape)}."
        )
    for module in head.modules():
        if isinstance(module, ASPP) and module.pool_kernel_size is not None:
            raise UserValueError(
                f"{where} pools in ASPP over a window of {tuple(module.pool_kernel_size)} cells "
                f"fixed at the training crop (INPUT.CROP.SIZE / stride), which fails at other "
                f"input sizes{use_adapter or '; build ASPP with pool_kernel_size=None'}."
            )
    stride = int(stride)
    probe = _probe_features(head, input_shape, stride)
    if probe is None:
        return
    features, (height, width) = probe
    training = head.training
    try:
        with torch.no_grad():
            logits = head.eval().layers(features)
    except Exception as e:
        raise UserValueError(
            f"{where} failed on the backbone maps of a {height}x{width} input "
            f"({type(e).__name__}: {' '.join(str(e).split())}); it must run on the maps of "
            f"{sorted(input_shape)} at any input size{use_adapter} ({_SEE_README})."
        ) from e
    finally:
        head.train(training)
    expected = (1, num_classes, height // stride, width // stride)
    got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
    if got == expected:
        return
    fixes = []
    if len(got) == 4 and got[1] != num_classes:
        fixes.append(
            f"it predicts {got[1]} classes: set MODEL.SEM_SEG_HEAD.NUM_CLASSES {got[1]} or give "
            f"its classifier {num_classes} outputs"
        )
    if len(got) == 4 and got[2:] != expected[2:]:
        where_at, value = f"{got[2]}x{got[3]}", "to their stride"
        if got[2] > 0 and height % got[2] == 0 and (height // got[2]) * got[3] == width:
            where_at, value = f"stride {height // got[2]}", str(height // got[2])
        fixes.append(
            f"its logits are at {where_at}, not at its common_stride {stride}: set "
            f"MODEL.SEM_SEG_HEAD.COMMON_STRIDE (or the head's common_stride) {value}"
        )
    raise UserValueError(
        f"{where} returned {got} for a {height}x{width} input, where the contract asks for "
        f"(N, NUM_CLASSES, H / common_stride, W / common_stride) logits = {expected}; "
        + ("; ".join(fixes) or f"return logits of that shape ({_SEE_README})")
        + "."
    )


def _probe_features(
    head: nn.Module, input_shape: Dict[str, ShapeSpec], stride: int
) -> Optional[Tuple[Dict[str, torch.Tensor], Tuple[int, int]]]:
    """Zero-valued (1, C_f, H / s_f, W / s_f) maps of every backbone output for an (H, W) =
    (2L, 3L) input, L the least common multiple of the strides and ``stride``, on the head's
    device; None when a shape is unknown or the head is on the "meta" device (shapes only)."""
    param = next(iter(head.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    shapes = list(input_shape.values())
    if device.type == "meta" or any(s.stride is None or s.channels is None for s in shapes):
        return None
    multiple = math.lcm(stride, *(s.stride for s in shapes))
    height, width = 2 * multiple, 3 * multiple
    features = {
        f: torch.zeros(1, s.channels, height // s.stride, width // s.stride, device=device)
        for f, s in input_shape.items()
    }
    return features, (height, width)


def _final_upsample(head: nn.Module) -> Tuple[nn.Module, Optional[nn.Upsample]]:
    """(body, upsample) of a Semantic FPN scale head that ends in detectron2's 2x bilinear
    upsample (align_corners False); (head, None) otherwise."""
    if isinstance(head, nn.Sequential) and len(head) > 1:
        last = head[-1]
        if (
            isinstance(last, nn.Upsample)
            and last.mode == "bilinear"
            and not last.align_corners
            and last.size is None
            and last.scale_factor in (2, 2.0, (2, 2), (2.0, 2.0))
        ):
            return head[:-1], last
    return head, None


def semantic_fpn_logits(
    head: SemSegFPNHead, features: Dict[str, torch.Tensor], match_sizes: bool
) -> torch.Tensor:
    """The logits of detectron2's Semantic FPN head, its branches' final upsamples shared.

    Every coarser branch ends in the same 2x bilinear upsample, and bilinear interpolation is
    linear: ``up(a) + up(b) + up(c) == up(a + b + c)``. The branches that reach that upsample
    at the same size are summed first and upsampled once, so one upsample and one full-size sum
    run instead of three of each (90 ms and 50 ms of an R-50 pass at 1024 x 2048 on 2 threads).
    The result equals the head's own ``layers`` up to float rounding.

    Args:
        head: a ``SemSegFPNHead`` (its ``scale_heads``, ``in_features`` and ``predictor``).
        features: maps named by ``in_features``, each (N, C_f, H_f, W_f), finest first
            (H_c x W_c).
        match_sizes: resize a branch whose size differs from the finest branch's (bilinear)
            before adding it; otherwise the sizes must agree, as in detectron2.

    Returns:
        (N, C, H_c, W_c) logits at the finest map's size.
    """

    def add(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if match_sizes and y.shape[-2:] != x.shape[-2:]:
            y = F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)
        return x + y

    x = head.scale_heads[0](features[head.in_features[0]])
    before_upsample: Dict[Tuple[int, ...], Tuple[torch.Tensor, nn.Upsample]] = {}
    for name, scale_head in zip(head.in_features[1:], head.scale_heads[1:]):
        body, upsample = _final_upsample(scale_head)
        y = body(features[name])
        if upsample is None:
            x = add(x, y)
        elif tuple(y.shape) in before_upsample:
            total, _ = before_upsample[tuple(y.shape)]
            before_upsample[tuple(y.shape)] = (total + y, upsample)
        else:
            before_upsample[tuple(y.shape)] = (y, upsample)
    for total, upsample in before_upsample.values():
        x = add(x, upsample(total))
    return head.predictor(x)


class SharedUpsampleSemSegFPNHead(SemSegFPNHead):
    """detectron2's ``SemSegFPNHead`` (same modules, weights and results up to float rounding)
    whose branches share their final upsample (:func:`semantic_fpn_logits`).
    :func:`build_coarse_head` gives a built ``SemSegFPNHead`` this class."""

    def layers(self, features: Dict[str, torch.Tensor]) -> torch.Tensor:
        return semantic_fpn_logits(self, features, match_sizes=False)


@SEM_SEG_HEADS_REGISTRY.register()
class SizeMatchedSemSegFPNHead(SemSegFPNHead):
    """detectron2's Semantic FPN head (the same modules and weights) whose branches are summed
    after resizing each to the finest branch's size (bilinear), as mmsegmentation's
    ``FPNHead``; identical to detectron2's when sizes are multiples of the largest stride, and
    correct on unpadded inputs of any size. Branches share their final upsample
    (:func:`semantic_fpn_logits`)."""

    def layers(self, features: Dict[str, torch.Tensor]) -> torch.Tensor:
        """
        Args:
            features: maps named by ``in_features``, each (N, C_f, H_f, W_f), finest first
                (H_c x W_c).

        Returns:
            (N, C, H_c, W_c) logits at the finest map's size.
        """
        return semantic_fpn_logits(self, features, match_sizes=True)
