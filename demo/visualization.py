"""Run a PointRend semantic segmentation model on images or video frames and draw its output."""

from typing import Dict, Iterator, Tuple

import cv2
import numpy as np
from detectron2.utils.visualizer import VisImage, Visualizer

from pointrend_sem.predictor import SemSegPredictor, display_metadata


class VisualizationDemo:
    """Predictions drawn over their images with detectron2's :class:`Visualizer`."""

    def __init__(self, cfg, alpha: float = 0.5):
        """
        Args:
            cfg: a config of this project, with ``MODEL.WEIGHTS`` set.
            alpha: opacity of the class colours.
        """
        self.predictor = SemSegPredictor(cfg)
        self.metadata = display_metadata(cfg)
        self.alpha = alpha

    def draw(self, image_rgb: np.ndarray, labels: np.ndarray) -> VisImage:
        """Draw (H, W) class ids over an (H, W, 3) RGB image, at the image's size."""
        visualizer = Visualizer(image_rgb, self.metadata, scale=1.0)
        return visualizer.draw_sem_seg(labels, alpha=self.alpha)

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
