#!/usr/bin/env python
"""Show where PointRend looks on one image: one PNG with a row of titled panels.

    python tools/visualize_points.py --config-file configs/demo_synthetic.yaml \
        --input img.png --output points.png \
        --opts MODEL.WEIGHTS output/demo_synthetic/model_final.pth

Panels: the input; the coarse head's prediction; for each subdivision step, the uncertainty
(-(top1 - top2) of that step's upsampled logits, before its points are re-predicted) as a heat
map over the image, with the points the step re-predicts; the final (refined) prediction.

The model predicts through the inference module every prediction runs
(``pointrend_sem.inference``), ``predict(..., trace=trace)``, with a
:class:`~pointrend_sem.modeling.SubdivisionTrace` that records the steps; the tool shows the
whole-image inference (``TEST.SLIDING_WINDOW.ENABLED`` False) and its coarse prediction
(``MODEL.POINTREND_SEM.OUTPUT_COARSE`` True) whatever the config says.
"""

import argparse
import logging
import os
from typing import List, Optional, Sequence, Tuple

import pointrend_sem  # noqa: F401  # isort: skip  (first: detectron2 imported quietly)
import numpy as np
from detectron2.data import transforms as T
from detectron2.data.detection_utils import read_image
from detectron2.modeling import build_model
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from pointrend_sem.checkpoint import PointRendSemCheckpointer, check_weights_file
from pointrend_sem.cpu_memory import add_memory_argument, apply_memory_argument
from pointrend_sem.data import build_test_augmentations
from pointrend_sem.engine import add_opts_argument, setup
from pointrend_sem.errors import UserFileNotFoundError, main_with_one_line_errors
from pointrend_sem.inference import build_inference_model
from pointrend_sem.modeling import collect_subdivision
from pointrend_sem.predictor import display_metadata, to_model_inputs

PANEL_INCHES = 4.0  # width and height of one panel
LEGEND_INCHES = 0.5  # band under the panels for the class legend
DPI = 100
# what the tool shows: the whole-image inference and the coarse prediction
FORCED_OPTS = ["TEST.SLIDING_WINDOW.ENABLED", False, "MODEL.POINTREND_SEM.OUTPUT_COARSE", True]

# one subdivision step: uncertainty (h, w) on the step's grid over the image, and the points
# chosen at that step, (P, 2) (x, y) in pixels of the image
Step = Tuple[np.ndarray, np.ndarray]


def figure_size(num_steps: int, dpi: int = DPI) -> Tuple[int, int]:
    """(width, height) in pixels of the PNG for ``num_steps`` subdivision steps."""
    return round((num_steps + 3) * PANEL_INCHES * dpi), round((PANEL_INCHES + LEGEND_INCHES) * dpi)


def colorize(labels: np.ndarray, colors: Sequence[Sequence[int]]) -> np.ndarray:
    """(H, W) class ids -> (H, W, 3) uint8 RGB; ids without a colour are black."""
    palette = np.asarray(colors, dtype=np.uint8).reshape(-1, 3)
    out = np.zeros(labels.shape + (3,), np.uint8)
    known = (labels >= 0) & (labels < len(palette))
    out[known] = palette[labels[known]]
    return out


def blend(image: np.ndarray, labels: np.ndarray, colors, alpha: float = 0.6) -> np.ndarray:
    """Class colours of ``labels`` (H, W) over an (H, W, 3) uint8 RGB image."""
    mixed = (1 - alpha) * image.astype(np.float32) + alpha * colorize(labels, colors)
    return mixed.round().astype(np.uint8)


def draw_point_panels(
    image: np.ndarray,
    coarse: np.ndarray,
    steps: List[Step],
    final: np.ndarray,
    colors: Sequence[Sequence[int]],
    class_names: Optional[Sequence[str]] = None,
    dpi: int = DPI,
) -> Figure:
    """The row of panels, as a matplotlib figure of :func:`figure_size` pixels.

    Args:
        image: (H, W, 3) uint8 RGB input.
        coarse: (H, W) class ids of the coarse prediction.
        steps: per subdivision step, (uncertainty (h, w) covering the image, points (P, 2)
            (x, y) in pixels of the image).
        final: (H, W) class ids of the final prediction.
        colors: RGB colour (0-255) of each class.
        class_names: name of each class, for the legend (none without it).
    """
    width, height = figure_size(len(steps), dpi)
    fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(steps) + 3)
    fig.subplots_adjust(left=0.01, right=0.99, top=0.9, bottom=0.02 + LEGEND_INCHES * dpi / height)
    extent = (0, image.shape[1], image.shape[0], 0)  # pixel edges: points land on their cells
    axes[0].imshow(image, extent=extent)
    axes[0].set_title(f"input {image.shape[1]}×{image.shape[0]}")
    axes[1].imshow(blend(image, coarse, colors), extent=extent)
    axes[1].set_title("coarse prediction")
    gray = image.mean(axis=2)
    for k, (uncertainty, points) in enumerate(steps, start=1):
        ax = axes[k + 1]
        ax.imshow(gray, cmap="gray", extent=extent)
        ax.imshow(uncertainty, cmap="viridis", alpha=0.7, extent=extent, interpolation="nearest")
        ax.scatter(
            points[:, 0],
            points[:, 1],
            s=_marker_area(image.shape, uncertainty.shape[1], dpi),
            c="#ff1f1f",
            marker="o",
            linewidths=0,
        )
        grid = f"{uncertainty.shape[1]}×{uncertainty.shape[0]}"
        ax.set_title(
            f"step {k}: uncertainty on {grid} (bright: high)\n{len(points)} points chosen (red)",
            fontsize=10,
        )
    axes[-1].imshow(blend(image, final, colors), extent=extent)
    axes[-1].set_title("final prediction")
    for ax in axes:
        ax.set_axis_off()
    if class_names:
        handles = [
            Patch(color=np.asarray(c) / 255.0, label=name) for name, c in zip(class_names, colors)
        ]
        fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False)
    return fig


def _marker_area(image_shape, grid_width: int, dpi: int) -> float:
    """Scatter marker area (points^2) of a dot half as wide as a grid cell on screen (the image
    is fitted into a square panel), at least 2 pixels wide."""
    height, width = image_shape[:2]
    cell_pixels = PANEL_INCHES * dpi * width / max(width, height) / grid_width
    diameter = max(0.5 * cell_pixels, 2.0) * 72.0 / dpi
    return diameter**2


def get_parser() -> argparse.ArgumentParser:
    """The command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config-file", required=True, metavar="FILE", help="config file")
    parser.add_argument("--input", required=True, help="the image")
    parser.add_argument("--output", required=True, help="the PNG to write")
    parser.add_argument("--dpi", type=int, default=DPI, help=f"resolution (default {DPI})")
    add_memory_argument(parser)
    add_opts_argument(parser)
    return parser


def main(argv: Optional[List[str]] = None) -> None:
    """Parse ``argv``, run the model on the image and write the panels."""
    args = get_parser().parse_args(argv)
    args.opts = list(args.opts) + FORCED_OPTS
    cfg = setup(args, log=False)
    apply_memory_argument(args, cfg.MODEL.DEVICE)
    if not os.path.isfile(args.input):
        raise UserFileNotFoundError(f"The image {args.input} (--input) does not exist.")
    model = build_model(cfg)
    model.eval()
    check_weights_file(cfg.MODEL.WEIGHTS)
    PointRendSemCheckpointer(model, strict_fit=True).load(cfg.MODEL.WEIGHTS)
    image = read_image(args.input, format=cfg.INPUT.FORMAT)
    augmentations = T.AugmentationList(build_test_augmentations(cfg))
    inference_model = build_inference_model(model, cfg)
    result = collect_subdivision(inference_model, to_model_inputs(image, augmentations))
    rgb = image if cfg.INPUT.FORMAT == "RGB" else image[:, :, ::-1]
    metadata = display_metadata(cfg)
    fig = draw_point_panels(
        rgb,
        result["coarse"],
        result["steps"],
        result["final"],
        metadata.stuff_colors,
        metadata.stuff_classes,
        args.dpi,
    )
    fig.savefig(args.output, dpi=args.dpi)
    logging.getLogger(__name__).info(f"Wrote {args.output}")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main_with_one_line_errors(main)()
