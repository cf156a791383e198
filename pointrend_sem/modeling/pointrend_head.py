"""The PointRend semantic segmentation head: a coarse head refined by a point head.

Shape shorthand in this module: N: images, C: classes predicted (logits per pixel; 1 for a
one-logit binary model), H x W: the padded input batch, C_f x H_f x W_f: one backbone feature
map, C_fine: channels of the fine-grained point features (summed over ``in_features``),
H_c x W_c: the coarse logits' grid, S: subdivision steps, H_k x W_k: the grid of step k,
(H_c * 2^k) x (W_c * 2^k), M: points asked for per step, P: points per image (training points,
or the ``min(M, H_k * W_k)`` cells re-predicted at a step).
"""

import logging
from typing import Dict, List, Optional, Tuple

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from detectron2.projects.point_rend.point_features import point_sample
from torch import nn
from torch.nn import functional as F

from ..errors import UserValueError
from .binary import is_one_logit, one_logit_loss_sum
from .coarse_head import build_coarse_head, subdivision_steps_for
from .point_head import build_point_head
from .point_sampling import sample_training_points, select_uncertain_grid_points
from .subdivision_trace import SubdivisionTrace

logger = logging.getLogger(__name__)


def cross_entropy_with_ignore(
    logits: torch.Tensor, targets: torch.Tensor, ignore_value: int, avg_non_ignore: bool
) -> torch.Tensor:
    """Cross-entropy that stays finite when every target is ignored.

    A one-logit (binary) model gets binary cross-entropy, target 1 = foreground, 0 = background
    (:func:`.binary.one_logit_loss_sum`).

    Args:
        logits: (N, C, ...) logits ("...": H x W pixels, or P points).
        targets: (N, ...) long class indices, ``ignore_value`` where ignored.
        avg_non_ignore: average over non-ignored targets (True) or over all targets (False).

    Returns:
        scalar loss; zero (with gradient) when all targets are ignored.
    """
    if is_one_logit(logits):
        loss = one_logit_loss_sum(logits, targets, ignore_value)
    else:
        loss = F.cross_entropy(logits, targets, ignore_index=ignore_value, reduction="sum")
    if avg_non_ignore:
        count = (targets != ignore_value).sum().clamp(min=1)
    else:
        count = max(targets.numel(), 1)
    return loss / count


def sample_point_features(features: torch.Tensor, point_coords: torch.Tensor) -> torch.Tensor:
    """Bilinear samples (N, C_f, P) of feature maps (N, C_f, H_f, W_f) at points (N, P, 2), (x, y)
    in [0, 1] (detectron2's ``point_sample``, zero padding)."""
    return point_sample(features, point_coords, align_corners=False)


def write_point_logits_(
    logits: torch.Tensor, point_indices: torch.Tensor, point_logits: torch.Tensor
) -> None:
    """Overwrite, in place, the logits of the cells ``point_indices`` with ``point_logits``.

    Args:
        logits: (N, C, H_k, W_k) logits of a subdivision step, contiguous or channels-last.
        point_indices: (N, P) flat indices into the H_k x W_k grid.
        point_logits: (N, C, P) new logits.
    """
    n, c, h, w = logits.shape
    if logits.is_contiguous(memory_format=torch.channels_last):
        cells = logits.permute(0, 2, 3, 1).view(n, h * w, c)  # a view of the same memory
        index = point_indices.unsqueeze(2).expand(-1, -1, c)
        cells.scatter_(1, index, point_logits.transpose(1, 2).to(cells.dtype))
    else:
        index = point_indices.unsqueeze(1).expand(-1, c, -1)
        logits.view(n, c, h * w).scatter_(2, index, point_logits.to(logits.dtype))


@SEM_SEG_HEADS_REGISTRY.register()
class PointRendSemHead(nn.Module):
    """PointRend for semantic segmentation (Kirillov et al., CVPR 2020).

    A coarse head predicts logits at ``common_stride``; a point head re-predicts logits at
    selected points from fine-grained features sampled at those points and the coarse logits
    there. Training selects points by importance sampling, inference by adaptive subdivision.

    Contract: detectron2's semantic-head contract, ``forward(features, targets)`` ->
    ``(None, losses)`` in training and ``forward(features)`` -> ``(logits, {})`` in eval mode;
    :meth:`~.meta_arch.PointRendSemanticSegmentor.predict` calls :meth:`inference`, which also
    returns the coarse logits and takes the part of the batch each image covers.

    Attribute names (``coarse_sem_seg_head``, ``point_head``) follow detectron2's
    ``PointRendSemSegHead`` so its checkpoints load without renaming.
    """

    @configurable
    def __init__(
        self,
        *,
        coarse_sem_seg_head: nn.Module,
        point_head: nn.Module,
        in_features: List[str],
        ignore_value: int,
        train_num_points: int,
        oversample_ratio: float,
        importance_sample_ratio: float,
        subdivision_steps: int,
        subdivision_num_points: int,
        coarse_loss_weight: float = 1.0,
        point_loss_weight: float = 1.0,
        loss_avg_non_ignore: bool = True,
        points_off_padding: bool = True,
    ):
        """
        Args:
            coarse_sem_seg_head: has ``layers(features) -> (N, C, H_c, W_c)`` logits at its
                ``common_stride`` s (H_c = H / s for a padded H divisible by s): the contract of
                :mod:`.coarse_head`, checked by :func:`.coarse_head.build_coarse_head`.
            point_head: called as ``point_head(fine (N, C_fine, P), coarse (N, C, P))``.
            in_features: feature maps the fine-grained point features are sampled from.
            ignore_value: label ignored by both losses.
            train_num_points, oversample_ratio, importance_sample_ratio: P, k and beta of
                training point selection (:func:`.point_sampling.sample_training_points`).
            subdivision_steps, subdivision_num_points: S and M of adaptive subdivision
                (``from_config`` derives S from s when SUBDIVISION_STEPS is -1, see
                :func:`.coarse_head.subdivision_steps_for`).
            coarse_loss_weight, point_loss_weight: loss weights.
            loss_avg_non_ignore: see :func:`cross_entropy_with_ignore`.
            points_off_padding: in inference, give the padding of a batch subdivision points
                last (the ``valid_fraction`` of :meth:`inference`); False ignores
                ``valid_fraction``, as detectron2's PointRend does.
        """
        super().__init__()
        self.coarse_sem_seg_head = coarse_sem_seg_head
        self.point_head = point_head
        self.in_features = in_features
        self.ignore_value = ignore_value
        self.train_num_points = train_num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio
        self.subdivision_steps = subdivision_steps
        self.subdivision_num_points = subdivision_num_points
        self.coarse_loss_weight = coarse_loss_weight
        self.point_loss_weight = point_loss_weight
        self.loss_avg_non_ignore = loss_avg_non_ignore
        self.points_off_padding = points_off_padding
        # how point features are read from the maps; the inference layer's reduced-precision
        # copy reads fp32 samples of bf16/fp16 maps (pointrend_sem.inference.precision)
        self.sample_point_features = sample_point_features

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        head_cfg = cfg.MODEL.POINTREND_SEM
        missing = [f for f in head_cfg.IN_FEATURES if f not in input_shape]
        if missing:
            raise UserValueError(
                f"MODEL.POINTREND_SEM.IN_FEATURES names {missing}, which the backbone does not "
                f"produce; choose the maps the point head samples from {sorted(input_shape)}."
            )
        coarse_head = build_coarse_head(cfg, input_shape)
        fine_stride = min(input_shape[f].stride or 0 for f in head_cfg.IN_FEATURES)
        if fine_stride > coarse_head.common_stride:
            logger.warning(
                f"MODEL.POINTREND_SEM.IN_FEATURES {list(head_cfg.IN_FEATURES)} are at stride "
                f"{fine_stride}, coarser than the coarse logits ({coarse_head.common_stride}): "
                "the point head gets no finer detail than the coarse head; name the backbone's "
                "finest map (p2, res2)."
            )
        fine_channels = sum(input_shape[f].channels for f in head_cfg.IN_FEATURES)
        return {
            "coarse_sem_seg_head": coarse_head,
            "point_head": build_point_head(cfg, fine_channels),
            "in_features": list(head_cfg.IN_FEATURES),
            "ignore_value": cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE,
            "train_num_points": head_cfg.TRAIN_NUM_POINTS,
            "oversample_ratio": head_cfg.OVERSAMPLE_RATIO,
            "importance_sample_ratio": head_cfg.IMPORTANCE_SAMPLE_RATIO,
            "subdivision_steps": subdivision_steps_for(
                head_cfg.SUBDIVISION_STEPS, coarse_head.common_stride
            ),
            "subdivision_num_points": head_cfg.SUBDIVISION_NUM_POINTS,
            "coarse_loss_weight": head_cfg.COARSE_LOSS_WEIGHT,
            "point_loss_weight": head_cfg.POINT_LOSS_WEIGHT,
            "loss_avg_non_ignore": head_cfg.LOSS_AVG_NON_IGNORE,
            "points_off_padding": head_cfg.POINTS_OFF_PADDING,
        }

    def forward(
        self, features: Dict[str, torch.Tensor], targets: Optional[torch.Tensor] = None
    ) -> Tuple[Optional[torch.Tensor], Dict[str, torch.Tensor]]:
        """detectron2's semantic-head contract (``SemSegFPNHead``, PointRend's own
        ``PointRendSemSegHead``): the losses with targets, the predictions in eval mode without.

        Args:
            features: backbone feature maps, each (N, C_f, H_f, W_f).
            targets: (N, H, W) long labels at the padded input size, or None (inference).

        Returns:
            with targets: ``(None, {"loss_sem_seg": ..., "loss_sem_seg_point": ...})``, scalars;
            without: ``(refined logits, {})``, the logits (N, C, H_c * 2^S, W_c * 2^S) of
            :meth:`inference` over the whole batch.

        Raises:
            ValueError: in training mode without targets.
        """
        if targets is not None:
            return None, self.losses(features, targets)
        if self.training:
            raise ValueError(
                "PointRendSemHead.forward(features, targets) needs targets in training mode; "
                "call it in eval mode (model.eval()) for predictions."
            )
        refined, _ = self.inference(features)
        return refined, {}

    def point_logits(
        self,
        features: Dict[str, torch.Tensor],
        coarse_logits: torch.Tensor,
        point_coords: torch.Tensor,
    ) -> torch.Tensor:
        """Point head prediction at points.

        Args:
            features: backbone feature maps, each (N, C_f, H_f, W_f); those of ``in_features``
                are sampled (C_fine channels in all).
            coarse_logits: (N, C, H_c, W_c), sampled too.
            point_coords: (N, P, 2) (x, y) in [0, 1] over the padded batch.

        Returns:
            (N, C, P) logits.
        """
        fine_grained = torch.cat(
            [self.sample_point_features(features[f], point_coords) for f in self.in_features],
            dim=1,
        )
        coarse_at_points = point_sample(coarse_logits, point_coords, align_corners=False)
        return self.point_head(fine_grained, coarse_at_points)

    def losses(self, features: Dict[str, torch.Tensor], targets: torch.Tensor):
        """Coarse loss over all pixels plus point loss at the sampled points.

        Args:
            features: backbone feature maps, each (N, C_f, H_f, W_f).
            targets: (N, H, W) long labels at the padded input size.

        Returns:
            "loss_sem_seg" and "loss_sem_seg_point", weighted scalars.
        """
        coarse_logits = self.coarse_sem_seg_head.layers(features)
        upsampled = F.interpolate(
            coarse_logits.float(), size=targets.shape[-2:], mode="bilinear", align_corners=False
        )
        loss_coarse = cross_entropy_with_ignore(
            upsampled, targets, self.ignore_value, self.loss_avg_non_ignore
        )
        with torch.no_grad():
            point_coords = sample_training_points(
                coarse_logits,
                self.train_num_points,
                self.oversample_ratio,
                self.importance_sample_ratio,
            )
        point_logits = self.point_logits(features, coarse_logits, point_coords)
        point_targets = (
            point_sample(
                targets.unsqueeze(1).to(torch.float),
                point_coords,
                mode="nearest",
                align_corners=False,
            )
            .squeeze(1)
            .to(torch.long)
        )
        loss_point = cross_entropy_with_ignore(
            point_logits, point_targets, self.ignore_value, self.loss_avg_non_ignore
        )
        return {
            "loss_sem_seg": loss_coarse * self.coarse_loss_weight,
            "loss_sem_seg_point": loss_point * self.point_loss_weight,
        }

    def inference(
        self,
        features: Dict[str, torch.Tensor],
        valid_fraction: Optional[torch.Tensor] = None,
        trace: Optional[SubdivisionTrace] = None,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Predictions by adaptive subdivision: the head's inference contract.

        Each of S steps upsamples the logits x2 (bilinear), picks the M most uncertain grid
        cells, and overwrites their logits with the point head's prediction.

        Args:
            features: backbone feature maps of the padded batch, each (N, C_f, H_f, W_f).
            valid_fraction: (N, 2) fraction (height, width) of the padded batch covered by each
                image; its padding gets points last (see :func:`select_uncertain_grid_points`).
                None: the images fill the batch. Ignored unless ``points_off_padding``.
            trace: if given, each step is appended to ``trace.steps``
                (:meth:`SubdivisionTrace.add_step`).

        Returns:
            refined: (N, C, H_c * 2^S, W_c * 2^S) logits.
            coarse: (N, C, H_c, W_c) coarse logits.
        """
        coarse_logits = self.coarse_sem_seg_head.layers(features)
        # classes-first (NCHW) layout whatever the features': the x2 upsampling and the per-class
        # passes of the uncertainty run faster over whole class planes than over channels-last
        # pixels of C values (132 against 162 ms, 50 against 355 ms at 19 x 1024 x 2048)
        logits = coarse_logits.contiguous()
        if not self.points_off_padding:
            valid_fraction = None
        for _ in range(self.subdivision_steps):
            logits = F.interpolate(logits, scale_factor=2, mode="bilinear", align_corners=False)
            point_indices, point_coords = select_uncertain_grid_points(
                logits, self.subdivision_num_points, valid_fraction
            )
            point_logits = self.point_logits(features, coarse_logits, point_coords)
            if trace is not None:
                trace.add_step(logits, point_indices, point_coords, point_logits)
            write_point_logits_(logits, point_indices, point_logits)
        return logits, coarse_logits
