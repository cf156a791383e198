"""Coarse heads: predict class logits at a common stride from several feature maps.

Shape shorthand in this module: N: images, C: classes predicted (logits per pixel; 1 for a
one-logit binary model), C_f x H_f x W_f: one feature map, H_c x W_c: the finest map of
``in_features``, at whose size the (coarse) logits are predicted.
"""

from typing import Dict

import torch
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from detectron2.modeling.meta_arch.semantic_seg import SemSegFPNHead
from torch import nn
from torch.nn import functional as F

from .point_head import check_head_init


def init_coarse_head_(head: nn.Module, scheme: str) -> None:
    """(Re-)initialise, in place, the convolutions of a Semantic-FPN coarse head built by
    detectron2's :class:`SemSegFPNHead` (or a subclass; its classifier is ``predictor``).

    * "detectron2": left as built: every conv, classifier included, MSRA fill (Kaiming normal,
      fan-out, bias 0).
    * "mmseg" (0.x ``FPNHead``, which trained the published models): the scale-head convs keep
      MSRA fill (= mmcv ConvModule's Kaiming init); the classifier ``conv_seg`` N(0, 0.01), bias 0.
    * "sssegmentation": PyTorch's default of every conv (it initialises nothing itself).

    Norms are left as built (weight 1, bias 0).
    """
    check_head_init(scheme)
    if scheme == "mmseg":
        nn.init.normal_(head.predictor.weight, std=0.01)
        nn.init.constant_(head.predictor.bias, 0)
    elif scheme == "sssegmentation":
        for module in head.modules():
            if isinstance(module, nn.Conv2d):
                module.reset_parameters()


@SEM_SEG_HEADS_REGISTRY.register()
class SizeMatchedSemSegFPNHead(SemSegFPNHead):
    """detectron2's Semantic FPN head (the same modules and weights) whose branches are summed
    after resizing each to the finest branch's size (bilinear), as mmsegmentation's
    ``FPNHead``; identical to detectron2's when sizes are multiples of the largest stride, and
    correct on unpadded inputs of any size."""

    def layers(self, features: Dict[str, torch.Tensor]) -> torch.Tensor:
        """
        Args:
            features: maps named by ``in_features``, each (N, C_f, H_f, W_f), finest first
                (H_c x W_c).

        Returns:
            (N, C, H_c, W_c) logits at the finest map's size.
        """
        x = self.scale_heads[0](features[self.in_features[0]])
        for name, head in zip(self.in_features[1:], self.scale_heads[1:]):
            y = head(features[name])
            if y.shape[-2:] != x.shape[-2:]:
                y = F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)
            x = x + y
        return self.predictor(x)
