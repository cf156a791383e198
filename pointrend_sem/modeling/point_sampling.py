"""Where PointRend looks: uncertainty of logits and the choice of points.

Shape shorthand in this module: N: images, C: classes predicted (logits per pixel; 1 for a
one-logit binary model), H_c x W_c: the coarse logits' grid, H x W: any logits grid (in
subdivision, the grid of the current step), P: points per image.

Point coordinates are (x, y), normalized to [0, 1] x [0, 1] over the padded batch tensor, as
detectron2's ``point_sample`` expects.
"""

from typing import Optional, Tuple

import torch
from detectron2.projects.point_rend.point_features import (
    get_uncertain_point_coords_on_grid,
    get_uncertain_point_coords_with_randomness,
)

from .binary import is_one_logit, one_logit_uncertainty


def calculate_uncertainty(logits: torch.Tensor) -> torch.Tensor:
    """Uncertainty of per-class logits: minus the margin between the two highest logits.

    A one-logit (binary) model uses the margin to the decision boundary instead
    (:func:`.binary.one_logit_uncertainty`).

    Args:
        logits: (N, C, ...) class logits, C >= 1.

    Returns:
        (N, 1, ...) uncertainty, highest where the prediction is least certain.
    """
    if is_one_logit(logits):
        return one_logit_uncertainty(logits)
    first, second = two_highest(logits)
    return (second - first).unsqueeze(1)


def two_highest(logits: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """The highest and second-highest of C >= 2 logits per position, both (N, ...): the values
    of ``torch.topk(logits, 2, dim=1)``, equal to them, in one running pass over the classes.

    ``topk`` over the class dimension sorts each position's C values apart; on a 19-class
    1024 x 2048 map it took 124 ms of a 4.2 s R-50 pass, this 50 ms (2 threads).

    Args:
        logits: (N, C, ...) with C >= 2; a channels-last map is made classes-first first (its
            class planes are strided otherwise, and the passes over them slow).
    """
    logits = logits.contiguous()
    first = torch.maximum(logits[:, 0], logits[:, 1])
    second = torch.minimum(logits[:, 0], logits[:, 1])
    for c in range(2, logits.shape[1]):
        value = logits[:, c]
        second = torch.maximum(second, torch.minimum(first, value))
        first = torch.maximum(first, value)
    return first, second


def sample_training_points(
    coarse_logits: torch.Tensor,
    num_points: int,
    oversample_ratio: float,
    importance_sample_ratio: float,
) -> torch.Tensor:
    """Training points: the beta * P most uncertain of k * P random candidates, plus
    (1 - beta) * P uniformly random points (PointRend paper, Sec. 3.1).

    Uncertainty is computed from the coarse logits interpolated at each candidate, not from the
    coarse grid. Randomness comes from torch's global generator (``torch.manual_seed`` seeds it).

    Args:
        coarse_logits: (N, C, H_c, W_c) coarse logits.
        num_points: P, points per image.
        oversample_ratio: k >= 1.
        importance_sample_ratio: beta in [0, 1].

    Returns:
        (N, P, 2) point coordinates in [0, 1].
    """
    return get_uncertain_point_coords_with_randomness(
        coarse_logits, calculate_uncertainty, num_points, oversample_ratio, importance_sample_ratio
    )


def select_uncertain_grid_points(
    logits: torch.Tensor, num_points: int, valid_fraction: Optional[torch.Tensor] = None
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Inference points: the ``num_points`` most uncertain cells of the logits' grid.

    Args:
        logits: (N, C, H, W) logits on a regular grid over the padded batch.
        num_points: M; P = ``min(M, H * W)`` points are returned.
        valid_fraction: optional (N, 2) float tensor, the fraction (height, width) of the padded
            batch that each image really covers. Cells outside it (padding) are chosen last, so
            the point budget is spent on the image. None: the images fill the batch.

    Returns:
        point_indices: (N, P) long tensor of flat indices into the H x W grid.
        point_coords: (N, P, 2) [0, 1]-normalized coordinates of the cell centres.
    """
    uncertainty = calculate_uncertainty(logits)
    if valid_fraction is not None:
        height, width = logits.shape[-2:]
        rows = torch.arange(height, device=logits.device)
        cols = torch.arange(width, device=logits.device)
        valid_rows = (valid_fraction[:, 0] * height).ceil().long()
        valid_cols = (valid_fraction[:, 1] * width).ceil().long()
        outside = (rows[None, :, None] >= valid_rows[:, None, None]) | (
            cols[None, None, :] >= valid_cols[:, None, None]
        )
        uncertainty = uncertainty.masked_fill(outside[:, None], float("-inf"))
    return get_uncertain_point_coords_on_grid(uncertainty, num_points)
