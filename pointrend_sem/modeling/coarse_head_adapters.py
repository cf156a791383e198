"""Coarse heads of other segmentation models, fitted to PointRend's coarse-head contract
(:mod:`.coarse_head`): detectron2's DeepLabV3+ and DeepLabV3 heads, and mmsegmentation's FCN head.
Name them in ``MODEL.POINTREND_SEM.COARSE_HEAD_NAME``; they read ``MODEL.SEM_SEG_HEAD.*``.

Shape shorthand in this module: N: images, C: classes predicted
(``MODEL.SEM_SEG_HEAD.NUM_CLASSES``), C_f x H_f x W_f: one backbone feature map, H_c x W_c: the
logits' grid, that of the finest map the head reads.

What the adapters change: detectron2's ASPP pools the image-level feature over a window fixed at
the training crop (``INPUT.CROP.SIZE`` / stride), which fails at any other input size; here it
pools globally (``nn.AdaptiveAvgPool2d(1)``), at training and at test time: the same values on
crop-sized inputs, and one graph for any size (no data-dependent branch, so it exports).
Parameters and state-dict keys are detectron2's, so its DeepLab checkpoints load as they are.
"""

from typing import Dict, List, Union

import fvcore.nn.weight_init as weight_init
import torch
from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from detectron2.projects.deeplab import DeepLabV3Head, DeepLabV3PlusHead
from torch import nn
from torch.nn import functional as F

from ..errors import UserValueError


def _without_train_crop(cfg):
    """A copy of ``cfg`` with ``INPUT.CROP.ENABLED`` False: detectron2's DeepLab heads read the
    crop only to fix ASPP's pooling window, which is then global."""
    cfg = cfg.clone()
    cfg.defrost()
    cfg.INPUT.CROP.ENABLED = False
    return cfg


def _check_one_feature(name: str, in_features, input_shape: Dict[str, ShapeSpec]) -> None:
    """Raise when ``in_features`` (``MODEL.SEM_SEG_HEAD.IN_FEATURES``) is not one backbone map."""
    if len(in_features) != 1 or in_features[0] not in input_shape:
        raise UserValueError(
            f"{name} reads one backbone map, but MODEL.SEM_SEG_HEAD.IN_FEATURES is "
            f'{list(in_features)}; set it to one of {sorted(input_shape)}, e.g. ["res5"].'
        )


@SEM_SEG_HEADS_REGISTRY.register()
class DeepLabV3PlusCoarseHead(DeepLabV3PlusHead):
    """detectron2's :class:`DeepLabV3PlusHead` (Chen et al., ECCV 2018) with global ASPP image
    pooling at every input size: ASPP on the coarsest of ``MODEL.SEM_SEG_HEAD.IN_FEATURES``, then
    a decoder stage per finer map (1x1 projection to ``PROJECT_CHANNELS``, concatenation, two 3x3
    convs), logits at the finest map's stride (``COMMON_STRIDE``, 4 on res2 + res5)."""

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        return super().from_config(_without_train_crop(cfg), input_shape)


@SEM_SEG_HEADS_REGISTRY.register()
class DeepLabV3CoarseHead(DeepLabV3Head):
    """detectron2's :class:`DeepLabV3Head` (Chen et al., 2017) with the ``layers`` it lacks and
    global ASPP image pooling at every input size: ASPP on the one map of
    ``MODEL.SEM_SEG_HEAD.IN_FEATURES`` (res5; its output is ``ASPP_CHANNELS`` wide, and the
    classifier takes ``CONVS_DIM``: keep them equal), then a 1x1 classifier; logits at that
    map's stride (``COMMON_STRIDE``, 16 for a ResNet whose res5 is dilated)."""

    def __init__(self, cfg, input_shape: Dict[str, ShapeSpec]):
        _check_one_feature(type(self).__name__, cfg.MODEL.SEM_SEG_HEAD.IN_FEATURES, input_shape)
        super().__init__(_without_train_crop(cfg), input_shape)

    def layers(self, features: Dict[str, torch.Tensor]) -> torch.Tensor:
        """
        Args:
            features: backbone maps, each (N, C_f, H_f, W_f); ``in_features[0]`` is read.

        Returns:
            (N, C, H_c, W_c) logits at that map's size.
        """
        return self.predictor(self.aspp(features[self.in_features[0]]))


@SEM_SEG_HEADS_REGISTRY.register()
class FCNCoarseHead(nn.Module):
    """mmsegmentation's ``FCNHead`` (Long et al., CVPR 2015): ``num_convs`` 3x3 convs (norm,
    ReLU) on one backbone map, with ``concat_input`` the map concatenated to their output and
    fused by one more 3x3 conv, dropout, then a 1x1 classifier; logits at the map's stride."""

    @configurable
    def __init__(
        self,
        *,
        in_feature: str,
        in_channels: int,
        num_classes: int,
        common_stride: int,
        conv_dims: int,
        num_convs: int = 2,
        concat_input: bool = True,
        norm: Union[str, nn.Module] = "",
        dropout: float = 0.1,
    ):
        """
        Args:
            in_feature: the backbone map read, C_f = ``in_channels`` channels.
            num_classes: C.
            common_stride: the stride of the map, hence of the logits.
            conv_dims: channels of every conv.
            num_convs: 3x3 convs before the classifier (0: the classifier on the map itself).
            concat_input: concatenate the map to the convs' output and fuse them with a 3x3 conv.
            norm: norm after each conv ("" = none, then the convs have a bias).
            dropout: channel dropout (``nn.Dropout2d``) before the classifier.
        """
        super().__init__()
        self.in_features: List[str] = [in_feature]
        self.common_stride = common_stride
        convs, channels = [], in_channels
        for _ in range(num_convs):
            convs.append(self._conv(channels, conv_dims, norm))
            channels = conv_dims
        self.convs = nn.Sequential(*convs)
        self.conv_cat = (
            self._conv(in_channels + conv_dims, conv_dims, norm)
            if concat_input and num_convs > 0
            else None
        )
        self.dropout = nn.Dropout2d(dropout) if dropout > 0 else nn.Identity()
        self.predictor = Conv2d(channels, num_classes, kernel_size=1)
        nn.init.normal_(self.predictor.weight, 0, 0.001)
        nn.init.constant_(self.predictor.bias, 0)

    @staticmethod
    def _conv(in_channels: int, out_channels: int, norm) -> Conv2d:
        conv = Conv2d(
            in_channels,
            out_channels,
            kernel_size=3,
            padding=1,
            bias=not norm,
            norm=get_norm(norm, out_channels),
            activation=F.relu,
        )
        weight_init.c2_msra_fill(conv)
        return conv

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        head = cfg.MODEL.SEM_SEG_HEAD
        _check_one_feature(cls.__name__, head.IN_FEATURES, input_shape)
        feature = head.IN_FEATURES[0]
        return {
            "in_feature": feature,
            "in_channels": input_shape[feature].channels,
            "num_classes": head.NUM_CLASSES,
            "common_stride": head.COMMON_STRIDE,
            "conv_dims": head.CONVS_DIM,
            "num_convs": head.FCN_NUM_CONVS,
            "concat_input": head.FCN_CONCAT_INPUT,
            "norm": head.NORM,
            "dropout": head.FCN_DROPOUT,
        }

    def layers(self, features: Dict[str, torch.Tensor]) -> torch.Tensor:
        """
        Args:
            features: backbone maps, each (N, C_f, H_f, W_f); ``in_features[0]`` is read.

        Returns:
            (N, C, H_c, W_c) logits at that map's size.
        """
        x = features[self.in_features[0]]
        y = self.convs(x)
        if self.conv_cat is not None:
            y = self.conv_cat(torch.cat([x, y], dim=1))
        return self.predictor(self.dropout(y))
