"""Inference with batch norms folded into the preceding convolutions.

In inference a frozen or eval-mode batch norm is an affine map per channel, so
``norm(conv(x))`` equals one convolution with scaled weights and a bias. That saves a full
pass over every feature map (ResNet has one norm per conv), while parameters, buffers and
checkpoints stay those of the unfolded model.
"""

from typing import Optional, Tuple

import torch
from detectron2.layers import Conv2d, FrozenBatchNorm2d
from torch import nn
from torch.nn import functional as F


def _is_foldable(norm: Optional[nn.Module]) -> bool:
    """A norm that is a fixed per-channel affine map in inference."""
    if isinstance(norm, FrozenBatchNorm2d):
        return True
    return (
        isinstance(norm, nn.BatchNorm2d)
        and not norm.training
        and norm.running_mean is not None
        and norm.affine
    )


def _state_key(*tensors: Optional[torch.Tensor]) -> Tuple:
    return tuple((t.data_ptr(), t._version) if t is not None else None for t in tensors)


class NormFoldedConv2d(Conv2d):
    """detectron2's :class:`Conv2d` that, in inference (eval mode, no autograd), runs conv and
    norm as one convolution with folded weights. Folded weights are cached until a parameter
    or buffer changes (loading a checkpoint, a training step)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training or torch.is_grad_enabled() or not _is_foldable(self.norm):
            return super().forward(x)
        weight, bias = self._folded_weight_and_bias()
        x = F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)
        return self.activation(x) if self.activation is not None else x

    def _folded_weight_and_bias(self) -> Tuple[torch.Tensor, torch.Tensor]:
        norm = self.norm
        key = _state_key(
            self.weight, self.bias, norm.weight, norm.bias, norm.running_mean, norm.running_var
        )
        cache = getattr(self, "_folded_cache", None)
        if cache is not None and cache[0] == key:
            return cache[1]
        scale = norm.weight * (norm.running_var + norm.eps).rsqrt()
        bias = norm.bias - norm.running_mean * scale
        if self.bias is not None:
            bias = bias + self.bias * scale
        layout = (
            torch.channels_last
            if self.weight.is_contiguous(memory_format=torch.channels_last)
            else torch.contiguous_format
        )
        weight = (self.weight * scale.reshape(-1, 1, 1, 1)).contiguous(memory_format=layout)
        self._folded_cache = (key, (weight, bias))
        return weight, bias


def fold_norms_in_inference(model: nn.Module) -> int:
    """Make every detectron2 ``Conv2d`` of ``model`` that has a batch norm a
    :class:`NormFoldedConv2d` (same parameters, buffers and state-dict keys); return how many."""
    count = 0
    for module in model.modules():
        if type(module) is Conv2d and isinstance(module.norm, (FrozenBatchNorm2d, nn.BatchNorm2d)):
            module.__class__ = NormFoldedConv2d
            count += 1
    return count
