"""Convolutions fused with the ReLU (and the residual sum) that follows them, for inference on a
CPU: the one adapter to torch's oneDNN fused convolution, a private operator.

Shape shorthand in this module: N: images, C_in / C_out: channels, H x W: a feature map.

On a CPU a ReLU or a residual sum after a convolution is a separate pass over memory: in the
R-50 PointRend at 1024 x 2048 in bf16 the ReLUs and sums took about 17 % of the time. oneDNN
applies them to the convolution's accumulators before it writes its output ("post-ops"). torch
reaches that through ``torch.ops.mkldnn._convolution_pointwise`` (what TorchInductor emits for
CPU; private, with no public equivalent), used only here, only on modules made for inference
(:mod:`.builder`): the model itself, its state dict and training never see it. The copy is
rewritten only where the operator runs in the copy's dtype on this CPU
(:func:`pointrend_sem.capabilities.fused_conv_runs`, a cached one-op probe: some builds lack the
operator, and oneDNN refuses bf16 below AVX-512 and fp16 below avx512_fp16); elsewhere it keeps
the plain modules, which compute the same.

:func:`fuse_relu_convs_` replaces, in place (new modules sharing the parameters):

* a detectron2 ``Conv2d`` whose activation is ReLU (and norm folded away): conv + ReLU;
* detectron2's ``BottleneckBlock``: conv1 + ReLU, conv2 + ReLU, conv3 + shortcut sum + ReLU;
* detectron2's ``BasicStem``: conv + ReLU, then the max pool; DeepLab's ``DeepLabStem`` (the
  ResNetV1c deep stem): three conv + ReLU, then the max pool.
"""

from typing import Optional, Tuple

import torch
from detectron2.layers import Conv2d
from detectron2.modeling.backbone.resnet import BasicStem, BottleneckBlock
from detectron2.projects.deeplab.resnet import DeepLabStem
from torch import nn
from torch.nn import functional as F


def _fusable(conv: nn.Module) -> bool:
    """A plain 2-D convolution (detectron2's ``Conv2d``, norm folded away) with zero padding."""
    return (
        isinstance(conv, nn.Conv2d)
        and getattr(conv, "norm", None) is None
        and conv.padding_mode == "zeros"
        and isinstance(conv.padding, tuple)
    )


def conv_relu(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``relu(conv(x))`` in one oneDNN call on CPU; the plain computation elsewhere.

    Args:
        conv: a :func:`_fusable` convolution, C_in -> C_out.
        x: (N, C_in, H, W).
    """
    if x.device.type == "cpu":
        return torch.ops.mkldnn._convolution_pointwise(
            x, conv.weight, conv.bias, conv.padding, conv.stride, conv.dilation, conv.groups,
            "relu", [], "",
        )  # fmt: skip
    return F.relu_(F.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding,
                            conv.dilation, conv.groups))  # fmt: skip


def conv_add_relu(conv: nn.Conv2d, x: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """``relu(conv(x) + other)`` in one oneDNN call on CPU; the plain computation elsewhere.

    Args:
        conv: a :func:`_fusable` convolution, C_in -> C_out.
        x: (N, C_in, H, W).
        other: (N, C_out, H', W'), the shape of ``conv(x)``, same dtype and memory layout.
    """
    if x.device.type == "cpu" and other.dtype == x.dtype:
        return torch.ops.mkldnn._convolution_pointwise.binary(
            x, other, conv.weight, conv.bias, conv.padding, conv.stride, conv.dilation,
            conv.groups, "add", None, "relu", [], "",
        )  # fmt: skip
    out = F.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)
    return F.relu_(out + other)


class FusedConvReLU(nn.Module):
    """A detectron2 ``Conv2d`` with ReLU activation, norm folded away, as one fused call."""

    def __init__(self, conv: Conv2d):
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C_in, H, W) -> (N, C_out, H', W')."""
        return conv_relu(self.conv, x)


class FusedBottleneckBlock(nn.Module):
    """detectron2's ``BottleneckBlock``, norms folded away, its ReLUs and its residual sum fused
    into the convolutions (same submodules, same parameters)."""

    def __init__(self, block: BottleneckBlock):
        super().__init__()
        self.in_channels, self.out_channels, self.stride = (
            block.in_channels,
            block.out_channels,
            block.stride,
        )
        self.shortcut = block.shortcut
        self.conv1, self.conv2, self.conv3 = block.conv1, block.conv2, block.conv3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C_in, H, W) -> (N, C_out, H / stride, W / stride)."""
        out = conv_relu(self.conv1, x)
        out = conv_relu(self.conv2, out)
        shortcut = x if self.shortcut is None else self.shortcut(x)
        return conv_add_relu(self.conv3, out, shortcut)


class FusedStem(nn.Module):
    """detectron2's ``BasicStem`` (one conv) or DeepLab's deep stem (three), norms folded away:
    each conv fused with its ReLU, then the 3x3 stride-2 max pool."""

    def __init__(self, stem: nn.Module, convs):
        super().__init__()
        self.in_channels, self.out_channels, self.stride = (
            stem.in_channels,
            stem.out_channels,
            stem.stride,
        )
        self.num_convs = len(convs)
        for i, conv in enumerate(convs, start=1):  # the stem's names: conv1 (, conv2, conv3)
            self.add_module(f"conv{i}", conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, C_out, H / 4, W / 4)."""
        for i in range(1, self.num_convs + 1):
            x = conv_relu(getattr(self, f"conv{i}"), x)
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


def _is_relu(activation) -> bool:
    return activation in (F.relu, F.relu_) or isinstance(activation, nn.ReLU)


def _fused_form(module: nn.Module) -> Tuple[Optional[nn.Module], int]:
    """The fused replacement of ``module`` and the convolutions it fuses, or (None, 0)."""
    if type(module) is BottleneckBlock:
        convs = (module.conv1, module.conv2, module.conv3)
        if all(_fusable(c) for c in convs):
            return FusedBottleneckBlock(module), 3
    elif type(module) in (BasicStem, DeepLabStem):
        convs = [module.conv1]
        if type(module) is DeepLabStem:
            convs += [module.conv2, module.conv3]
        if all(_fusable(c) and c.activation is None for c in convs):
            return FusedStem(module, convs), len(convs)
    elif type(module) is Conv2d and _fusable(module) and _is_relu(module.activation):
        return FusedConvReLU(module), 1
    return None, 0


def _replace_child(parent: nn.Module, name: str, old: nn.Module, new: nn.Module) -> None:
    """Make ``new`` the child ``name`` of ``parent``, also where ``parent`` keeps ``old`` in a
    plain list (detectron2's ResNet ``stages``, FPN ``lateral_convs``, SemSegFPNHead
    ``scale_heads``)."""
    setattr(parent, name, new)
    for value in vars(parent).values():
        if isinstance(value, list):
            value[:] = [new if item is old else item for item in value]


def fuse_relu_convs_(module: nn.Module) -> int:
    """Replace, in place, the submodules of ``module`` listed in the module doc by their fused
    forms (sharing their parameters); return how many convolutions now run fused. Call it on an
    inference copy whose norms are folded, and only where the fused operator runs in the copy's
    dtype (:func:`pointrend_sem.capabilities.fused_conv_runs`)."""
    fused = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            replacement, count = _fused_form(child)
            if replacement is not None:
                _replace_child(parent, name, child, replacement)
                fused += count
    return fused
