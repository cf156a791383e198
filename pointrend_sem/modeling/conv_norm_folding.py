"""Inference with batch norms folded into the preceding convolutions.

In inference a frozen or eval-mode batch norm (BatchNorm2d, SyncBatchNorm, detectron2's
NaiveSyncBatchNorm and FrozenBatchNorm2d) is an affine map per channel, so ``norm(conv(x))``
equals one convolution with scaled weights and a bias. That saves a full pass over every feature
map (ResNet has one norm per conv), while parameters, buffers and checkpoints stay those of the
unfolded model. In training (``module.training``) or under autograd the norm runs unfolded, so
batch statistics are used and updated as usual.

The arithmetic, :func:`fold_batch_norm`, also folds a checkpoint's norms once and for all
(sssegmentation's point head, ``tools/convert_weights.py --fold-point-head-norms``).
"""

from typing import Optional, Tuple

import torch
from detectron2.layers import Conv2d, FrozenBatchNorm2d
from torch import nn
from torch.nn import functional as F

from .point_head import PointFC

# Batch norms that are a fixed per-channel affine map in eval mode (detectron2's
# NaiveSyncBatchNorm is a BatchNorm2d; SyncBatchNorm in eval mode is a plain batch norm;
# FrozenBatchNorm2d always): the one list of what inference folds (here, the inference copies of
# .precision, and export)
FOLDABLE_NORMS = (FrozenBatchNorm2d, nn.BatchNorm2d, nn.SyncBatchNorm)


def is_foldable(norm: Optional[nn.Module]) -> bool:
    """A norm that is a fixed per-channel affine map in inference (one of
    :data:`FOLDABLE_NORMS`, in eval mode, with running statistics and affine parameters)."""
    if isinstance(norm, FrozenBatchNorm2d):
        return True
    return (
        isinstance(norm, FOLDABLE_NORMS)
        and not norm.training
        and norm.running_mean is not None
        and norm.running_var is not None
        and norm.affine
    )


def fold_batch_norm(
    weight: torch.Tensor,
    bias: Optional[torch.Tensor],
    norm_weight: torch.Tensor,
    norm_bias: torch.Tensor,
    running_mean: torch.Tensor,
    running_var: torch.Tensor,
    eps: float,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Fold an inference-mode batch norm into the convolution before it, in the tensors' dtype.

    ``norm(conv(x)) = conv'(x)`` with ``W' = W * s`` and ``b' = beta - mean * s + b * s`` for
    ``s = gamma / sqrt(var + eps)``, per output channel.

    Args:
        weight: (C_out, C_in, *kernel) convolution weight (Conv1d or Conv2d).
        bias: (C_out,) convolution bias, or None.
        norm_weight, norm_bias, running_mean, running_var: the norm's gamma, beta and running
            statistics, each (C_out,).
        eps: the norm's epsilon.

    Returns:
        weight (C_out, C_in, *kernel) and bias (C_out,).
    """
    scale = norm_weight * (running_var + eps).rsqrt()
    folded_bias = norm_bias - running_mean * scale
    if bias is not None:
        folded_bias = folded_bias + bias * scale
    return weight * scale.reshape((-1,) + (1,) * (weight.dim() - 1)), folded_bias


def _state_key(*tensors: Optional[torch.Tensor]) -> Tuple:
    return tuple((t.data_ptr(), t._version) if t is not None else None for t in tensors)


def fold_norm_into(weight: torch.Tensor, bias, norm) -> Tuple[torch.Tensor, torch.Tensor]:
    """The (weight, bias) of a layer followed by the batch norm ``norm`` (its running
    statistics), folded into one layer; the weight keeps the memory layout of ``weight``
    (channels-last stays channels-last)."""
    folded_weight, folded_bias = fold_batch_norm(
        weight, bias, norm.weight, norm.bias, norm.running_mean, norm.running_var, norm.eps
    )
    channels_last = weight.dim() == 4 and weight.is_contiguous(memory_format=torch.channels_last)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    return folded_weight.contiguous(memory_format=layout), folded_bias


class _FoldedWeights:
    """Folded weight and bias of a convolution (``weight`` (C_out, C_in, *kernel), optional
    ``bias``) followed by a foldable ``norm``, cached until a parameter or buffer changes
    (loading a checkpoint, a training step)."""

    def _runs_folded(self) -> bool:
        return not (self.training or torch.is_grad_enabled() or not is_foldable(self.norm))

    def _folded_weight_and_bias(self) -> Tuple[torch.Tensor, torch.Tensor]:
        norm = self.norm
        key = _state_key(
            self.weight, self.bias, norm.weight, norm.bias, norm.running_mean, norm.running_var
        )
        cache = getattr(self, "_folded_cache", None)
        if cache is not None and cache[0] == key:
            return cache[1]
        weight, bias = fold_norm_into(self.weight, self.bias, norm)
        self._folded_cache = (key, (weight, bias))
        return weight, bias


def release_folded_weights(model: nn.Module) -> None:
    """Drop the cached folded weights of every norm-folded layer of ``model`` (rebuilt at the
    next inference)."""
    for module in model.modules():
        module.__dict__.pop("_folded_cache", None)


class NormFoldedConv2d(_FoldedWeights, Conv2d):
    """detectron2's :class:`Conv2d` that, in inference (eval mode, no autograd), runs conv and
    norm as one convolution with folded weights."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C_in, H, W) -> (N, C_out, H', W')."""
        if not self._runs_folded():
            return super().forward(x)
        weight, bias = self._folded_weight_and_bias()
        x = F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)
        return self.activation(x) if self.activation is not None else x


class NormFoldedPointFC(_FoldedWeights, PointFC):
    """The point head's :class:`PointFC` that, in inference, runs fc and norm as one layer."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C_in, P) -> (N, C_out, P)."""
        if not self._runs_folded():
            return super().forward(x)
        weight, bias = self._folded_weight_and_bias()
        return F.conv1d(x, weight, bias)


_FOLDED_CLASSES = {Conv2d: NormFoldedConv2d, PointFC: NormFoldedPointFC}


def fold_norms_in_inference(model: nn.Module) -> int:
    """Make every detectron2 ``Conv2d`` and point-head :class:`PointFC` of ``model`` that has a
    batch norm fold it in inference (same parameters, buffers and state-dict keys; the class
    becomes :class:`NormFoldedConv2d` / :class:`NormFoldedPointFC`); return how many.

    Whether a norm is folded is decided at each call: only in eval mode without autograd, and
    only for a norm with running statistics; otherwise the layer runs as before.
    """
    count = 0
    for module in model.modules():
        folded_class = _FOLDED_CLASSES.get(type(module))
        if folded_class is not None and isinstance(module.norm, FOLDABLE_NORMS):
            module.__class__ = folded_class
            count += 1
    return count
