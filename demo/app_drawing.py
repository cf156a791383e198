"""What the browser demo (``demo/app.py``) draws from an :class:`~app_model.Analysis`: overlays
(detectron2's ``Visualizer``, through :class:`VisualizationDemo`), the points of each
subdivision step over its uncertainty, the legend with each class's share of the pixels, a
line of facts, and the class-id map as a PNG."""

import html
import math
from typing import List, Sequence, Tuple

import cv2
import matplotlib
import numpy as np
from app_model import Analysis
from visualization import VisualizationDemo

DISPLAY_SIZE = 512  # small images are drawn enlarged to at least this many pixels, long side
POINT_COLOR = (255, 31, 31)  # RGB of the re-predicted points (tools/visualize_points.py's red)


def display_scale(height: int, width: int) -> int:
    """The whole factor an image of ``height`` x ``width`` is drawn enlarged by (1 when its long
    side reaches :data:`DISPLAY_SIZE`): whole, so that pixels stay square cells."""
    return max(1, math.ceil(DISPLAY_SIZE / max(height, width)))


def overlay(
    demo: VisualizationDemo, image_rgb: np.ndarray, labels: np.ndarray, alpha: float, scale: int
) -> np.ndarray:
    """(H, W) class ids drawn over an (H, W, 3) RGB image with the dataset's names and colours,
    as (H * scale, W * scale, 3) uint8 RGB."""
    return demo.draw(image_rgb, labels, alpha=alpha, scale=scale).get_image()


def draw_step(
    image_rgb: np.ndarray, uncertainty: np.ndarray, points: np.ndarray, scale: int
) -> np.ndarray:
    """One subdivision step as tools/visualize_points.py draws it: the step's uncertainty
    (bright: high) over the image in grey, stretched over it, and the points re-predicted at the
    step as red dots; (H * scale, W * scale, 3) uint8 RGB.

    Args:
        uncertainty: (rows, cols) over the image.
        points: (P, 2) (x, y) in pixels of the image.
    """
    height, width = image_rgb.shape[:2]
    size = (width * scale, height * scale)
    gray = cv2.cvtColor(image_rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)
    gray = cv2.resize(gray, size, interpolation=cv2.INTER_NEAREST)
    low, high = float(uncertainty.min()), float(uncertainty.max())
    norm = (uncertainty - low) / (high - low) if high > low else np.zeros_like(uncertainty)
    heat = matplotlib.colormaps["viridis"](norm)[..., :3].astype(np.float32) * 255
    heat = cv2.resize(heat, size, interpolation=cv2.INTER_NEAREST)
    out = (0.3 * gray[..., None] + 0.7 * heat).round().astype(np.uint8)
    radius = max(2, round(0.25 * size[0] / uncertainty.shape[1]))  # a dot half a cell wide
    for x, y in np.round(points * scale).astype(int):
        cv2.circle(out, (int(x), int(y)), radius, POINT_COLOR, -1, lineType=cv2.LINE_AA)
    return out


def step_caption(step: int, uncertainty: np.ndarray, points: np.ndarray) -> str:
    rows, cols = uncertainty.shape
    return f"step {step}: {len(points)} points re-predicted on the {cols}×{rows} grid"


def class_shares(labels: np.ndarray, num_classes: int) -> List[Tuple[int, float]]:
    """(class id, share of the pixels) of the classes present in ``labels``, largest first."""
    counts = np.bincount(labels.ravel(), minlength=num_classes)
    order = sorted(np.flatnonzero(counts), key=lambda c: (-counts[c], c))
    return [(int(c), counts[c] / labels.size) for c in order]


def legend_html(
    shares: Sequence[Tuple[int, float]],
    names: Sequence[str],
    colors: Sequence[Sequence[int]],
) -> str:
    """A table of the classes present: colour, name, share of the pixels."""
    rows = []
    for class_id, share in shares:
        r, g, b = (int(v) for v in colors[class_id])
        swatch = (
            f'<span class="swatch" style="background: rgb({r}, {g}, {b})"></span>'
            f"{html.escape(names[class_id])}"
        )
        percent = f"{share:.1%}" if share >= 0.001 else "<0.1%"
        rows.append(f"<tr><td>{swatch}</td><td>{percent}</td></tr>")
    return (
        '<table class="legend"><thead><tr><th>class</th><th>pixels</th></tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def summary(height: int, width: int, analysis: Analysis, options: str) -> str:
    """One line of markdown: the image size, the time of each pass, what refinement changed,
    the subdivision steps, and the notes."""
    parts = [f"**{width}×{height}** pixels"]
    parts += [f"{name} **{seconds * 1000:.0f} ms**" for name, seconds in analysis.timings.items()]
    parts.append(options)
    if analysis.coarse is not None:
        changed = int((analysis.coarse != analysis.refined).sum())
        parts.append(f"refinement changed {changed:,} pixels ({changed / (height * width):.1%})")
    if analysis.steps:
        counts = ", ".join(str(len(points)) for _, points in analysis.steps)
        parts.append(f"{len(analysis.steps)} subdivision steps ({counts} points)")
    parts += analysis.notes
    return " · ".join(parts)


def class_map_png(labels: np.ndarray) -> bytes:
    """(H, W) class ids as the bytes of a PNG of the same size: 8 bits per pixel, 16 for more
    than 256 classes."""
    dtype = np.uint8 if labels.max(initial=0) < 256 else np.uint16
    ok, encoded = cv2.imencode(".png", labels.astype(dtype))
    assert ok, "OpenCV failed to encode a PNG"
    return encoded.tobytes()
