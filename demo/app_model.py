"""The model behind the browser demo (``demo/app.py``): an uploaded file in, what the page shows
out. No Gradio here: the page (``demo/app_page.py``) calls these.

* :func:`read_upload` reads an uploaded file as the demo reads images (detectron2's
  ``read_image``), and refuses in one line a file that is not an image, an empty one, or one
  larger than the page takes;
* :class:`AppModel` predicts one image with the options of the page (precision, TTA) through
  the demo's predictor (:class:`~pointrend_sem.predictor.SemSegPredictor`, its inference module)
  and records where subdivision looked (:func:`~pointrend_sem.modeling.collect_subdivision`).
"""

import os
import threading
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from detectron2.data.detection_utils import read_image
from PIL import Image
from visualization import VisualizationDemo

from pointrend_sem.capabilities import DTYPE_NAMES, precision_support, runnable_precisions
from pointrend_sem.errors import UserValueError
from pointrend_sem.inference import PRECISIONS, build_inference_model
from pointrend_sem.modeling import collect_subdivision
from pointrend_sem.tta import SemanticSegmentorWithTTA

# the formats named in the message for a file that is not an image (Pillow reads more)
IMAGE_FORMATS = "PNG, JPEG, BMP, WebP or TIFF"


def read_upload(path: Optional[str], name: str, max_pixels: int) -> np.ndarray:
    """The uploaded file ``path`` as an (H, W, 3) uint8 BGR image (EXIF rotation applied), as
    ``demo/demo.py`` reads its inputs.

    Args:
        name: the file's name as the user knows it, for the messages.
        max_pixels: the largest image taken (H x W); larger ones are refused before they are
            decoded.

    Raises:
        UserValueError: nothing uploaded, an empty file, a file that is not an image (or cannot
            be decoded), an image without pixels or with more than ``max_pixels``.
    """
    if not path or not os.path.isfile(path):
        raise UserValueError(f"No image arrived: upload a {IMAGE_FORMATS} file.")
    if os.path.getsize(path) == 0:
        raise UserValueError(f"{name} is empty (0 bytes): upload a {IMAGE_FORMATS} file.")
    try:
        with Image.open(path) as image:  # reads the header only
            width, height = image.size
    except Image.DecompressionBombError:  # a header claiming far more pixels than Pillow takes
        raise UserValueError(too_large(name, None, None, max_pixels)) from None
    except (OSError, SyntaxError, ValueError):  # UnidentifiedImageError is an OSError
        raise UserValueError(
            f"{name} is not an image this demo can read: upload a {IMAGE_FORMATS} file."
        ) from None
    if width * height == 0:
        raise UserValueError(f"{name} is an empty image ({width}×{height} pixels).")
    if width * height > max_pixels:
        raise UserValueError(too_large(name, width, height, max_pixels))
    try:
        return read_image(path, format="BGR")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise UserValueError(
            f"{name} could not be decoded ({' '.join(str(e).split())}): upload a complete, "
            f"uncorrupted {IMAGE_FORMATS} file."
        ) from None


def too_large(name: str, width: Optional[int], height: Optional[int], max_pixels: int) -> str:
    """The message for an image over ``max_pixels``."""
    size = f" is {width}×{height} ({width * height / 1e6:.1f} MP)" if width else " is too large"
    return (
        f"{name}{size}; this demo takes up to {max_pixels / 1e6:g} MP (demo/app.py "
        "--max-megapixels): scale it down first."
    )


@dataclass
class Analysis:
    """One image through the model, as the page shows it.

    Attributes:
        refined: (H, W) class ids of the prediction (PointRend's, refined).
        coarse: (H, W) class ids of the coarse head; None where the model does not give them
            (an exported model).
        steps: per subdivision step, (uncertainty (rows, cols) over the image, points (P, 2)
            (x, y) in pixels of the image) (:func:`~pointrend_sem.modeling.collect_subdivision`);
            empty where the model cannot trace them (exported, sliding window).
        timings: what ran and its seconds, in order, e.g. {"prediction": 0.08}.
        notes: what the page should say about what it could not show.
    """

    refined: np.ndarray
    coarse: Optional[np.ndarray] = None
    steps: List[Tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    timings: Dict[str, float] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)


class AppModel:
    """The demo's predictor with the options of the page: precision (those this machine runs,
    :func:`~pointrend_sem.capabilities.runnable_precisions`), test-time augmentation, and the
    subdivision steps recorded. One inference module per precision, built on first use from the
    predictor's model; calls from several threads run one at a time.

    Attributes:
        demo: the :class:`VisualizationDemo` (predictor, class names and colours, drawing).
        precisions: (label, TEST.PRECISION) the page offers; empty for an exported model.
        default_precision: the config's ``TEST.PRECISION`` (what "auto" picks for "auto").
        exported: whether the predictor is an exported graph (no coarse, no trace, no options).
    """

    def __init__(self, cfg, alpha: float = 0.5, exported: Optional[str] = None):
        """
        Args:
            cfg: the config (``MODEL.WEIGHTS`` set); ``MODEL.POINTREND_SEM.OUTPUT_COARSE`` must
                be True for the coarse prediction to be shown.
            alpha: the default opacity of the overlay.
            exported: a file of ``tools/export_model.py`` to run instead of the PyTorch model.
        """
        self.cfg = cfg
        self.demo = VisualizationDemo(cfg, alpha=alpha, exported=exported)
        self.exported = bool(exported)
        self._lock = threading.Lock()
        self._models: Dict[str, torch.nn.Module] = {}
        self.precisions: List[Tuple[str, str]] = []
        self.default_precision = "fp32"
        if not self.exported:
            predictor = self.demo.predictor
            device = predictor.model.device
            self.precisions = [(precision_label(p, device), p) for p in runnable_precisions(device)]
            names = [p for _, p in self.precisions]
            configured = cfg.TEST.PRECISION
            self.default_precision = (
                configured if configured in names else DTYPE_NAMES[predictor.inference_model.dtype]
            )
            self._models[self.default_precision] = predictor.inference_model

    @property
    def class_names(self) -> List[str]:
        return list(self.demo.metadata.stuff_classes)

    def inference_model(self, precision: str):
        """The inference module in ``precision`` (built on first use)."""
        if precision not in [p for _, p in self.precisions]:
            offered = ", ".join(p for _, p in self.precisions)
            raise UserValueError(
                f"Precision {precision!r} is not one this machine runs; choose one of {offered}."
            )
        if precision not in self._models:
            model = self.demo.predictor.model
            self._models[precision] = build_inference_model(model, self.cfg, precision=precision)
        return self._models[precision]

    def class_map(self, image_bgr: np.ndarray, precision: str = "", tta: bool = False):
        """(H, W) class ids of an (H, W, 3) uint8 BGR image: the argmax of what
        :class:`~pointrend_sem.predictor.SemSegPredictor` returns (with ``tta``, of the mean
        probabilities of :class:`~pointrend_sem.tta.SemanticSegmentorWithTTA`)."""
        with self._lock:
            if self.exported:
                self._refuse_options(precision, tta)
                scores = self.demo.predictor(image_bgr)["sem_seg"]
            elif tta:
                scores = self._tta(image_bgr, precision or self.default_precision)["sem_seg"]
            else:
                model = self.inference_model(precision or self.default_precision)
                scores = self._predict(model, image_bgr)["sem_seg"]
            return scores.argmax(dim=0).cpu().numpy()

    def analyze(self, image_bgr: np.ndarray, precision: str = "", tta: bool = False) -> Analysis:
        """The prediction of an (H, W, 3) uint8 BGR image with what the page shows besides:
        the coarse prediction, the subdivision steps, the time each pass took."""
        with self._lock:
            if self.exported:
                self._refuse_options(precision, tta)
                start = time.perf_counter()
                scores = self.demo.predictor(image_bgr)["sem_seg"]
                return Analysis(
                    refined=scores.argmax(dim=0).cpu().numpy(),
                    timings={"prediction (exported graph)": time.perf_counter() - start},
                    notes=["an exported graph gives neither the coarse prediction nor points"],
                )
            precision = precision or self.default_precision
            model = self.inference_model(precision)
            analysis = self._traced(model, image_bgr)
            if tta:
                start = time.perf_counter()
                output = self._tta(image_bgr, precision)
                analysis.timings["prediction with TTA"] = time.perf_counter() - start
                analysis.refined = output["sem_seg"].argmax(dim=0).cpu().numpy()
                coarse = output.get("coarse_sem_seg")
                analysis.coarse = None if coarse is None else coarse.argmax(dim=0).cpu().numpy()
                if analysis.steps:
                    analysis.notes.append("the points are those of the pass without TTA")
            return analysis

    def _traced(self, model, image_bgr: np.ndarray) -> Analysis:
        """One pass, its subdivision recorded where the model allows it."""
        inputs = self.demo.predictor.model_inputs(image_bgr)
        start = time.perf_counter()
        if self.cfg.TEST.SLIDING_WINDOW.ENABLED:  # its windows are not traced
            output = model.predict([inputs["image"]], [(inputs["height"], inputs["width"])])[0]
            seconds = time.perf_counter() - start
            coarse = output.get("coarse_sem_seg")
            return Analysis(
                refined=output["sem_seg"].argmax(dim=0).cpu().numpy(),
                coarse=None if coarse is None else coarse.argmax(dim=0).cpu().numpy(),
                timings={"prediction": seconds},
                notes=["a sliding-window model's points are not traced"],
            )
        result = collect_subdivision(model, inputs)
        return Analysis(
            refined=result["final"],
            coarse=result["coarse"],
            steps=result["steps"],
            timings={"prediction": time.perf_counter() - start},
        )

    def _predict(self, model, image_bgr: np.ndarray) -> Dict[str, torch.Tensor]:
        """``SemSegPredictor.__call__`` with ``model`` as the inference module."""
        inputs = self.demo.predictor.model_inputs(image_bgr)
        return model.predict([inputs["image"]], [(inputs["height"], inputs["width"])])[0]

    def _tta(self, image_bgr: np.ndarray, precision: str) -> Dict[str, torch.Tensor]:
        """The output of :class:`SemanticSegmentorWithTTA` (``TEST.AUG``) for the image."""
        tta = SemanticSegmentorWithTTA.from_config(self.cfg, self.inference_model(precision))
        image = image_bgr[:, :, ::-1] if self.cfg.INPUT.FORMAT == "RGB" else image_bgr
        tensor = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        height, width = image.shape[:2]
        return tta([{"image": tensor, "height": height, "width": width}])[0]

    def _refuse_options(self, precision: str, tta: bool) -> None:
        if tta or precision:
            raise UserValueError(
                "An exported graph runs as it was exported: no precision or TTA to choose."
            )

    def tta_description(self) -> str:
        """The views of TTA (``TEST.AUG``), in a few words."""
        ratios = ", ".join(f"{r:g}" for r in self.cfg.TEST.AUG.SCALE_RATIOS)
        flip = " and their flips" if self.cfg.TEST.AUG.FLIP else ""
        return f"scales {ratios}{flip}"


def precision_label(precision: str, device) -> str:
    """How the page names a precision: its name, and "emulated" where the device has no
    instructions for it (slower than fp32)."""
    dtype = PRECISIONS[precision]
    if dtype is None or precision_support(dtype, device).native:
        return precision
    return f"{precision} (emulated here: slower than fp32)"
