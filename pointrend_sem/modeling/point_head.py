"""Point heads: predict class logits at points from point-wise features."""

from typing import List

import fvcore.nn.weight_init as weight_init
import torch
from detectron2.config import configurable
from detectron2.utils.registry import Registry
from torch import nn
from torch.nn import functional as F

SEM_SEG_POINT_HEAD_REGISTRY = Registry("SEM_SEG_POINT_HEAD")
SEM_SEG_POINT_HEAD_REGISTRY.__doc__ = """
Registry for the point heads of pointrend-sem. A point head is called as
``head(fine_grained_features, coarse_logits)`` with (N, C_fine, P) and (N, num_classes, P)
tensors and returns (N, num_classes, P) logits at the P points. It is built with
``head(cfg, fine_grained_channels)``.
"""


@SEM_SEG_POINT_HEAD_REGISTRY.register()
class MLPPointHead(nn.Module):
    """A multi-layer perceptron shared by all points, written as 1x1 Conv1d layers.

    Input of the first layer: fine-grained features concatenated with the coarse logits. With
    ``coarse_pred_each_layer`` the coarse logits are concatenated again to the input of every
    later layer and of the predictor (mmsegmentation's PointHead); without, only to the first
    (detectron2's semantic recipe).
    """

    @configurable
    def __init__(
        self,
        *,
        fine_grained_channels: int,
        num_classes: int,
        fc_dims: List[int],
        coarse_pred_each_layer: bool,
    ):
        """
        Args:
            fine_grained_channels: channels of the fine-grained features (summed over maps).
            num_classes: number of predicted classes.
            fc_dims: width of each hidden layer.
            coarse_pred_each_layer: see the class docstring.
        """
        super().__init__()
        self.coarse_pred_each_layer = coarse_pred_each_layer
        in_channels = fine_grained_channels + num_classes
        # Named fc1, fc2, ... like detectron2's StandardPointHead, so its checkpoints load as-is.
        self.fc_layers = []
        for k, dim in enumerate(fc_dims):
            fc = nn.Conv1d(in_channels, dim, kernel_size=1)
            weight_init.c2_msra_fill(fc)
            self.add_module(f"fc{k + 1}", fc)
            self.fc_layers.append(fc)
            in_channels = dim + (num_classes if coarse_pred_each_layer else 0)
        self.predictor = nn.Conv1d(in_channels, num_classes, kernel_size=1)
        nn.init.normal_(self.predictor.weight, std=0.001)
        nn.init.constant_(self.predictor.bias, 0)

    @classmethod
    def from_config(cls, cfg, fine_grained_channels: int):
        head_cfg = cfg.MODEL.POINTREND_SEM
        return {
            "fine_grained_channels": fine_grained_channels,
            "num_classes": cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
            "fc_dims": [head_cfg.FC_DIM] * head_cfg.NUM_FC,
            "coarse_pred_each_layer": head_cfg.COARSE_PRED_EACH_LAYER,
        }

    def forward(self, fine_grained_features: torch.Tensor, coarse_logits: torch.Tensor):
        """
        Args:
            fine_grained_features: (N, C_fine, P).
            coarse_logits: (N, num_classes, P).

        Returns:
            (N, num_classes, P) logits.
        """
        x = torch.cat((fine_grained_features, coarse_logits), dim=1)
        for fc in self.fc_layers:
            x = F.relu(fc(x))
            if self.coarse_pred_each_layer:
                x = torch.cat((x, coarse_logits), dim=1)
        return self.predictor(x)


def build_point_head(cfg, fine_grained_channels: int) -> nn.Module:
    """Build the point head named by ``cfg.MODEL.POINTREND_SEM.POINT_HEAD_NAME``."""
    name = cfg.MODEL.POINTREND_SEM.POINT_HEAD_NAME
    return SEM_SEG_POINT_HEAD_REGISTRY.get(name)(cfg, fine_grained_channels)
