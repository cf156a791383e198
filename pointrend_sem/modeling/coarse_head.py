"""Coarse heads: predict class logits at a common stride from several feature maps."""

from typing import Dict

import torch
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from detectron2.modeling.meta_arch.semantic_seg import SemSegFPNHead
from torch.nn import functional as F


@SEM_SEG_HEADS_REGISTRY.register()
class SizeMatchedSemSegFPNHead(SemSegFPNHead):
    """detectron2's Semantic FPN head (the same modules and weights) whose branches are summed
    after resizing each to the finest branch's size (bilinear), as mmsegmentation's
    ``FPNHead``; identical to detectron2's when sizes are multiples of the largest stride, and
    correct on unpadded inputs of any size."""

    def layers(self, features: Dict[str, torch.Tensor]) -> torch.Tensor:
        """
        Args:
            features: maps named by ``in_features``, finest first.

        Returns:
            (N, num_classes, H_0, W_0) logits at the finest map's size.
        """
        x = self.scale_heads[0](features[self.in_features[0]])
        for name, head in zip(self.in_features[1:], self.scale_heads[1:]):
            y = head(features[name])
            if y.shape[-2:] != x.shape[-2:]:
                y = F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)
            x = x + y
        return self.predictor(x)
