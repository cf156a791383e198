"""An optional record of adaptive subdivision, step by step, for tools that show where PointRend
looks (``tools/visualize_points.py``).

Pass a fresh :class:`SubdivisionTrace` to
:meth:`~.meta_arch.PointRendSemanticSegmentor.predict` (or to
:meth:`~.pointrend_head.PointRendSemHead.inference`); the prediction itself is unchanged.

Shape shorthand in this module: N: images, C: classes predicted (logits per pixel; 1 for a
one-logit binary model), H x W: the padded batch tensor, H_k x W_k: the grid of step k (the
coarse grid upsampled x2 k times), M: points asked for per step, P: points re-predicted per
image at a step, ``min(M, H_k * W_k)``.
"""

from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import torch


@dataclass
class SubdivisionStep:
    """One subdivision step of a batch.

    Attributes:
        logits: (N, C, H_k, W_k) the step's upsampled logits, before its points are re-predicted.
        point_indices: (N, P) flat indices of the re-predicted cells in the H_k x W_k grid.
        point_coords: (N, P, 2) their centres, (x, y) in [0, 1] over the padded batch.
        point_logits: (N, C, P) the point head's logits written there.
    """

    logits: torch.Tensor
    point_indices: torch.Tensor
    point_coords: torch.Tensor
    point_logits: torch.Tensor


@dataclass
class SubdivisionTrace:
    """What one prediction's adaptive subdivision did.

    Attributes:
        steps: one :class:`SubdivisionStep` per subdivision step (S of them), in order.
        padded_size: (H, W) of the padded batch the steps' grids and coordinates cover (set by
            :meth:`~.meta_arch.PointRendSemanticSegmentor.predict`; None when the head is called
            directly).
        image_sizes: (H_i, W_i) of each image inside the padded batch, at its top left (set
            with ``padded_size``).
    """

    steps: List[SubdivisionStep] = field(default_factory=list)
    padded_size: Optional[Tuple[int, int]] = None
    image_sizes: List[Tuple[int, int]] = field(default_factory=list)

    def add_step(
        self,
        logits: torch.Tensor,
        point_indices: torch.Tensor,
        point_coords: torch.Tensor,
        point_logits: torch.Tensor,
    ) -> None:
        """Record a step (shapes as :class:`SubdivisionStep`), detached; ``logits`` is copied,
        as the step then overwrites it in place."""
        self.steps.append(
            SubdivisionStep(
                logits=logits.detach().clone(),
                point_indices=point_indices.detach(),
                point_coords=point_coords.detach(),
                point_logits=point_logits.detach(),
            )
        )
