"""Run a PointRend semantic segmentation model on images or video frames and draw its output."""

from typing import Dict, Iterator, Optional, Tuple

import cv2
import numpy as np
from detectron2.utils.visualizer import VisImage, Visualizer

from pointrend_sem.cpu_memory import add_memory_argument
from pointrend_sem.engine import add_opts_argument
from pointrend_sem.export.runner import ExportedPredictor
from pointrend_sem.predictor import SemSegPredictor, display_metadata


def add_model_arguments(parser) -> None:
    """The options that choose the model, shared by ``demo/demo.py`` and ``demo/app.py``:
    ``--config-file``, ``--exported``, the memory option and ``--opts`` (``MODEL.WEIGHTS``: a
    file, a published checkpoint or its URL)."""
    parser.add_argument("--config-file", required=True, metavar="FILE", help="config file")
    parser.add_argument(
        "--exported",
        metavar="PATH",
        help="run this file of tools/export_model.py (with its PATH.json) instead of the "
        "PyTorch model; the config still names the classes and colours",
    )
    add_memory_argument(parser)
    add_opts_argument(parser)


class VisualizationDemo:
    """Predictions drawn over their images with detectron2's :class:`Visualizer`."""

    def __init__(self, cfg, alpha: float = 0.5, exported: Optional[str] = None):
        """
        Args:
            cfg: a config of this project, with ``MODEL.WEIGHTS`` set.
            alpha: opacity of the class colours.
            exported: a file of ``tools/export_model.py`` (with its sidecar) to run instead of
                the PyTorch model (:class:`ExportedPredictor`: the same call, BGR in,
                "sem_seg" out); the config still names the classes and colours.
        """
        self.predictor = ExportedPredictor(exported) if exported else SemSegPredictor(cfg)
        self.metadata = display_metadata(cfg)
        self.alpha = alpha

    def draw(
        self,
        image_rgb: np.ndarray,
        labels: np.ndarray,
        alpha: Optional[float] = None,
        scale: float = 1.0,
    ) -> VisImage:
        """Draw (H, W) class ids over an (H, W, 3) RGB image, at the image's size times
        ``scale``, with opacity ``alpha`` (None: the demo's)."""
        visualizer = Visualizer(image_rgb, self.metadata, scale=scale)
        return visualizer.draw_sem_seg(labels, alpha=self.alpha if alpha is None else alpha)

    def run_on_image(self, image_bgr: np.ndarray) -> Tuple[Dict, VisImage]:
        """
        Args:
            image_bgr: (H, W, 3) uint8 image in BGR order.

        Returns:
            the model's output, and the prediction drawn over the image (RGB, H x W).
        """
        predictions = self.predictor(image_bgr)
        # the argmax over classes labels every pixel: no pixel is left as "ignore"; the scores
        # are a tensor (SemSegPredictor) or a numpy array (ExportedPredictor)
        labels = predictions["sem_seg"].argmax(0)
        labels = labels.cpu().numpy() if hasattr(labels, "cpu") else labels
        return predictions, self.draw(image_bgr[:, :, ::-1], labels)

    def run_on_video(self, video: cv2.VideoCapture) -> Iterator[np.ndarray]:
        """Yield each frame of ``video`` with its prediction drawn over it, as BGR uint8."""
        while video.isOpened():
            success, frame = video.read()
            if not success:
                break
            _, vis = self.run_on_image(frame)
            yield vis.get_image()[:, :, ::-1]
