"""An optional record of adaptive subdivision, step by step, for tools that show where PointRend
looks (``tools/visualize_points.py``, the browser demo ``demo/app.py``).

Pass a fresh :class:`SubdivisionTrace` to
:meth:`~.meta_arch.PointRendSemanticSegmentor.predict` (or to
:meth:`~.pointrend_head.PointRendSemHead.inference`); the prediction itself is unchanged.
:func:`collect_subdivision` does that for one image and returns what the tools draw.

Shape shorthand in this module: N: images, C: classes predicted (logits per pixel; 1 for a
one-logit binary model), H x W: the padded batch tensor, H_k x W_k: the grid of step k (the
coarse grid upsampled x2 k times), M: points asked for per step, P: points re-predicted per
image at a step, ``min(M, H_k * W_k)``.
"""

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from .point_sampling import calculate_uncertainty


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


def step_in_image(logits: torch.Tensor, coords: torch.Tensor, padded_size, image_size, out_size):
    """One subdivision step, cropped to the grid cells that cover the image (a partly covered
    last row or column included, as :func:`select_uncertain_grid_points` counts them).

    Args:
        logits: (1, C, h, w) logits of the step before its points are re-predicted, over the
            padded batch.
        coords: (P, 2) chosen points, [0, 1] (x, y) over the padded batch.
        padded_size, image_size: (H, W) of the padded batch and of the image inside it.
        out_size: (H, W) of the original image.

    Returns:
        uncertainty (rows, cols) of the crop, and the points inside it (P', 2) in pixels of the
        original image, the crop being stretched over the image.
    """
    uncertainty = calculate_uncertainty(logits)[0, 0]
    grid = np.array(uncertainty.shape, dtype=np.float64)
    cells = np.ceil(grid * np.asarray(image_size) / np.asarray(padded_size))  # (rows, cols)
    xy = coords.cpu().double().numpy() * grid[::-1]  # in grid cells
    inside = (xy < cells[::-1]).all(axis=1)
    points = xy[inside] * (np.asarray(out_size, dtype=np.float64) / cells)[::-1]
    return uncertainty[: int(cells[0]), : int(cells[1])].cpu().numpy(), points


@torch.no_grad()
def collect_subdivision(model, inputs: Dict) -> Dict:
    """Predict one input dict with ``model.predict`` (an inference module, or a
    ``PointRendSemanticSegmentor`` in eval mode, with whole-image inference and
    ``output_coarse``; see ``FORCED_OPTS``), recording each subdivision step in a
    :class:`SubdivisionTrace`.

    Args:
        inputs: "image" (3, h, w) in the model's input format, "height" H and "width" W of the
            original image (:func:`pointrend_sem.predictor.to_model_inputs`).

    Returns:
        dict with "coarse" and "final" (H, W) class ids at the original size, and "steps":
        a list of (uncertainty (rows, cols), points (P, 2) in pixels), one per subdivision step.

    Raises:
        ValueError: the model does not return its coarse prediction.
    """
    out_size = (inputs["height"], inputs["width"])
    trace = SubdivisionTrace()
    (output,) = model.predict([inputs["image"]], [out_size], trace=trace)
    if "coarse_sem_seg" not in output:
        raise ValueError(
            "collect_subdivision draws the coarse prediction: build the model with "
            "MODEL.POINTREND_SEM.OUTPUT_COARSE True."
        )
    image_size = trace.image_sizes[0]
    steps = [
        step_in_image(step.logits, step.point_coords[0], trace.padded_size, image_size, out_size)
        for step in trace.steps
    ]
    return {
        "coarse": output["coarse_sem_seg"].argmax(0).cpu().numpy(),
        "final": output["sem_seg"].argmax(0).cpu().numpy(),
        "steps": steps,
    }
