"""Point heads: predict class logits at points from point-wise features.

Shape shorthand in this module: N: images, P: points per image, C_fine: channels of the
fine-grained point features, C: classes predicted (logits per point; 1 for a one-logit binary
model), C_in / C_out: channels into / out of one layer.
"""

from typing import List, Optional

import fvcore.nn.weight_init as weight_init
import torch
from detectron2.config import configurable
from detectron2.layers import get_norm
from detectron2.utils.registry import Registry
from torch import nn
from torch.nn import functional as F

SEM_SEG_POINT_HEAD_REGISTRY = Registry("SEM_SEG_POINT_HEAD")
SEM_SEG_POINT_HEAD_REGISTRY.__doc__ = """
Registry for the point heads of pointrend-sem. A point head is called as
``head(fine_grained_features, coarse_logits)`` with (N, C_fine, P) and (N, C, P) tensors and
returns (N, C, P) logits at the P points. It is built with ``head(cfg, fine_grained_channels)``
(C_fine), C being ``cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES``.
"""

# Initialisation schemes of the heads' layers (MODEL.POINTREND_SEM.HEAD_INIT)
HEAD_INITS = ("detectron2", "mmseg", "sssegmentation")


def check_head_init(scheme: str) -> None:
    """Raise ValueError, naming the choices, when ``scheme`` is not in :data:`HEAD_INITS`."""
    if scheme not in HEAD_INITS:
        raise ValueError(
            f"MODEL.POINTREND_SEM.HEAD_INIT is {scheme!r}; choose one of {list(HEAD_INITS)}."
        )


class PointFC(nn.Conv1d):
    """A "fully connected" layer shared by all points (a 1x1 Conv1d) with an optional norm after
    it, laid out like detectron2's :class:`Conv2d`: keys ``weight``, ``bias``, ``norm.*``.

    The norm is any 2D norm (BatchNorm2d, SyncBatchNorm, GroupNorm, ...) applied to the
    (N, C_out, P) output seen as an (N, C_out, P, 1) map: a batch norm normalizes each channel
    over all N * P points, as sssegmentation's SyncBatchNorm on its (N, C_out, P) point features.
    """

    def __init__(self, in_channels: int, out_channels: int, *, norm: Optional[nn.Module] = None):
        """
        Args:
            in_channels, out_channels: C_in, C_out.
            norm: module applied after the convolution; with a norm the layer has no bias.
        """
        super().__init__(in_channels, out_channels, kernel_size=1, bias=norm is None)
        self.norm = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C_in, P) -> (N, C_out, P)."""
        x = super().forward(x)
        if self.norm is not None:
            x = self.norm(x.unsqueeze(-1)).squeeze(-1)
        return x


@SEM_SEG_POINT_HEAD_REGISTRY.register()
class MLPPointHead(nn.Module):
    """A multi-layer perceptron shared by all points, written as 1x1 Conv1d layers.

    Input of the first layer: fine-grained features concatenated with the coarse logits. With
    ``coarse_pred_each_layer`` the coarse logits are concatenated again to the input of every
    later layer and of the predictor (mmsegmentation's PointHead); without, only to the first
    (detectron2's semantic recipe). Each hidden layer is fc, optional norm, ReLU.
    """

    @configurable
    def __init__(
        self,
        *,
        fine_grained_channels: int,
        num_classes: int,
        fc_dims: List[int],
        coarse_pred_each_layer: bool,
        fc_norm: str = "",
        init: str = "detectron2",
    ):
        """
        Args:
            fine_grained_channels: C_fine, channels of the fine-grained features (summed over
                maps).
            num_classes: C, logits predicted per point.
            fc_dims: width of each hidden layer.
            coarse_pred_each_layer: see the class docstring.
            fc_norm: norm after each hidden layer ("" = none; a name for
                :func:`detectron2.layers.get_norm`, e.g. "BN", "SyncBN"); see :class:`PointFC`.
            init: initialisation scheme, one of :data:`HEAD_INITS`: "detectron2"
                (``StandardPointHead``) and "mmseg" (0.x ``PointHead``: ConvModule's Kaiming init
                of the fcs, ``normal_init(fc_seg, std=0.001)``) give the hidden layers MSRA fill
                (Kaiming normal, fan-out, bias 0) and the predictor N(0, 0.001) with bias 0;
                "sssegmentation" keeps PyTorch's default of every layer (it initialises nothing
                itself). Norms start as the identity.
        """
        super().__init__()
        check_head_init(init)
        self.coarse_pred_each_layer = coarse_pred_each_layer
        in_channels = fine_grained_channels + num_classes
        # Named fc1, fc2, ... like detectron2's StandardPointHead, so its checkpoints load as-is.
        self.fc_layers = []
        for k, dim in enumerate(fc_dims):
            fc = PointFC(in_channels, dim, norm=get_norm(fc_norm, dim) if fc_norm else None)
            if init != "sssegmentation":
                weight_init.c2_msra_fill(fc)
            self.add_module(f"fc{k + 1}", fc)
            self.fc_layers.append(fc)
            in_channels = dim + (num_classes if coarse_pred_each_layer else 0)
        self.predictor = nn.Conv1d(in_channels, num_classes, kernel_size=1)
        if init != "sssegmentation":
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
            "fc_norm": head_cfg.FC_NORM,
            "init": head_cfg.HEAD_INIT,
        }

    def forward(self, fine_grained_features: torch.Tensor, coarse_logits: torch.Tensor):
        """
        Args:
            fine_grained_features: (N, C_fine, P).
            coarse_logits: (N, C, P).

        Returns:
            (N, C, P) logits.
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
