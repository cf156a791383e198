"""Batch norms folded into the layer before them, for inference.

In inference a frozen or eval-mode batch norm is a fixed affine map per channel, so
``norm(conv(x))`` is one convolution with scaled weights and a bias: a pass over every feature
map saved (ResNet has one norm per conv). The arithmetic is torch's
(``torch.nn.utils.fusion.fuse_conv_bn_weights``); this module finds the pairs in a detectron2
model and rewrites a copy made for inference (:mod:`.builder`), never the model itself.

Shape shorthand: C_out / C_in: a layer's output / input channels.
"""

from typing import Optional, Tuple

import torch
from detectron2.layers import Conv2d, FrozenBatchNorm2d
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from ..modeling.point_head import PointFC

# Batch norms that are a fixed per-channel affine map in eval mode (detectron2's
# NaiveSyncBatchNorm is a BatchNorm2d; SyncBatchNorm in eval mode is a plain batch norm;
# FrozenBatchNorm2d always)
FOLDABLE_NORMS = (FrozenBatchNorm2d, nn.BatchNorm2d, nn.SyncBatchNorm)
# layers that carry their norm as ``.norm`` and run it after themselves
LAYERS_WITH_NORM = (Conv2d, PointFC)


def is_foldable(norm: Optional[nn.Module]) -> bool:
    """A norm that is a fixed per-channel affine map in inference (one of
    :data:`FOLDABLE_NORMS`, in eval mode, with running statistics)."""
    if isinstance(norm, FrozenBatchNorm2d):
        return True
    return (
        isinstance(norm, FOLDABLE_NORMS)
        and not norm.training
        and norm.running_mean is not None
        and norm.running_var is not None
    )


def folded_weight_and_bias(
    weight: torch.Tensor, bias: Optional[torch.Tensor], norm: nn.Module
) -> Tuple[torch.Tensor, torch.Tensor]:
    """The weight (C_out, C_in, *kernel) and bias (C_out,) of a layer followed by the batch norm
    ``norm``, as one layer; the weight keeps the memory layout of ``weight``."""
    folded_weight, folded_bias = fuse_conv_bn_weights(
        weight, bias, norm.running_mean, norm.running_var, norm.eps, norm.weight, norm.bias
    )
    channels_last = weight.dim() == 4 and weight.is_contiguous(memory_format=torch.channels_last)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    return folded_weight.detach().contiguous(memory_format=layout), folded_bias.detach()


@torch.no_grad()
def fold_norms_(module: nn.Module) -> int:
    """Fold, in place, the batch norm of every detectron2 ``Conv2d`` and point-head ``PointFC``
    of ``module`` whose norm :func:`is_foldable` into its weight and bias, leaving ``norm``
    None (both classes then skip it); return how many. Call it on a copy in eval mode."""
    count = 0
    for layer in module.modules():
        if not isinstance(layer, LAYERS_WITH_NORM) or not is_foldable(layer.norm):
            continue
        weight, bias = folded_weight_and_bias(layer.weight, layer.bias, layer.norm)
        layer.weight = nn.Parameter(weight, requires_grad=False)
        layer.bias = nn.Parameter(bias, requires_grad=False)
        layer.norm = None
        count += 1
    return count
