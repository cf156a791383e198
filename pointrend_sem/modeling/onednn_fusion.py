"""Convolutions fused with the ReLU (and the residual sum) that follows them, for inference on a
CPU: the one adapter to torch's oneDNN fused convolution, a private operator.

Shape shorthand in this module: N: images, C_in / C_out: channels, H x W: a feature map.

On a CPU a ReLU or a residual sum after a convolution is a separate pass over memory: in the
R-50 PointRend at 1024 x 2048 in bf16 the ReLUs and sums took about 17 % of the time. oneDNN
applies them to the convolution's accumulators before it writes its output ("post-ops"). torch
reaches that through ``torch.ops.mkldnn._convolution_pointwise`` (what TorchInductor emits for
CPU; private, with no public equivalent), used only here, only on modules made for inference
(:class:`.precision.InferenceCopy`): the model itself, its state dict and training never
see it. The copy is rewritten only where the operator runs in the copy's dtype on this CPU
(:func:`pointrend_sem.capabilities.fused_conv_runs`, a cached one-op probe: some builds lack
the operator, and oneDNN refuses bf16 below AVX-512 and fp16 below avx512_fp16); elsewhere it
keeps the plain modules, which compute the same.

:func:`fuse_relu_convs_` rewrites, in place:

* a detectron2 ``Conv2d`` whose activation is ReLU (and norm folded away): conv + ReLU;
* detectron2's ``BottleneckBlock``: conv1 + ReLU, conv2 + ReLU, conv3 + shortcut sum + ReLU;
* detectron2's ``BasicStem``: conv + ReLU, then the max pool; DeepLab's ``DeepLabStem`` (the
  ResNetV1c deep stem): three conv + ReLU, then the max pool.
"""

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


class ReLUFusedConv2d(Conv2d):
    """detectron2's ``Conv2d`` with ReLU, norm folded away, as one fused call (see module doc)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv_relu(self, x)


class ReLUFusedBottleneckBlock(BottleneckBlock):
    """detectron2's ``BottleneckBlock``, norms folded away, its ReLUs and its residual sum fused
    into the convolutions (see module doc)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = conv_relu(self.conv1, x)
        out = conv_relu(self.conv2, out)
        shortcut = x if self.shortcut is None else self.shortcut(x)
        return conv_add_relu(self.conv3, out, shortcut)


class ReLUFusedBasicStem(BasicStem):
    """detectron2's ``BasicStem``, norm folded away: fused conv + ReLU, then the max pool."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(conv_relu(self.conv1, x), kernel_size=3, stride=2, padding=1)


class ReLUFusedDeepLabStem(DeepLabStem):
    """DeepLab's deep stem, norms folded away: three fused conv + ReLU, then the max pool."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in (self.conv1, self.conv2, self.conv3):
            x = conv_relu(conv, x)
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


def _is_relu(activation) -> bool:
    return activation in (F.relu, F.relu_) or isinstance(activation, nn.ReLU)


def fuse_relu_convs_(module: nn.Module) -> int:
    """Rewrite, in place, the modules of ``module`` listed in the module doc into their fused
    forms (same parameters; only ``forward`` changes); return how many convolutions now run
    fused. Call it on an inference copy whose norms are folded, and only where the fused
    operator runs in the copy's dtype (:func:`pointrend_sem.capabilities.fused_conv_runs`)."""
    fused = 0
    for sub in module.modules():
        if type(sub) is BottleneckBlock and all(
            _fusable(c) for c in (sub.conv1, sub.conv2, sub.conv3)
        ):
            sub.__class__ = ReLUFusedBottleneckBlock
            fused += 3
        elif type(sub) is BasicStem and _fusable(sub.conv1) and sub.conv1.activation is None:
            sub.__class__ = ReLUFusedBasicStem
            fused += 1
        elif type(sub) is DeepLabStem and all(
            _fusable(c) and c.activation is None for c in (sub.conv1, sub.conv2, sub.conv3)
        ):
            sub.__class__ = ReLUFusedDeepLabStem
            fused += 3
        elif type(sub) is Conv2d and _fusable(sub) and _is_relu(sub.activation):
            sub.__class__ = ReLUFusedConv2d
            fused += 1
    return fused
