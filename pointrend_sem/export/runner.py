"""Run a model exported by ``tools/export_model.py`` without detectron2 or this package.

This file imports only numpy, OpenCV, PyTorch (and onnxruntime for ``.onnx`` files, Pillow for
``INPUT.RESIZE_BACKEND`` "detectron2"): it runs on its own, e.g. copied next to the exported
file, as well as ``pointrend_sem.export.runner``.

    from runner import ExportedPredictor
    predictor = ExportedPredictor("model.onnx")          # reads model.onnx.json
    scores = predictor(cv2.imread("image.png"))["sem_seg"]  # (C, H, W) at the image's size

Pre- and post-processing are those of :class:`pointrend_sem.predictor.SemSegPredictor` with
one difference, forced by the graph's fixed size: the BGR image is converted to the input format
and resized to the export size H x W itself (not to the config's keep-ratio test size), with the
interpolation of the config's test resize (``INPUT.RESIZE_BACKEND``: OpenCV's bilinear for
"opencv", Pillow's bilinear for "detectron2"), and the graph's (C, H, W) scores are resized back
to the image's size (bilinear, as ``TEST.OUTPUT_RESIZE`` resizes). Export at the size the test
resize gives your images (e.g. 1024 x 2048 for Cityscapes) and the two agree up to rounding;
images of another aspect ratio are stretched to H x W.

The sidecar ``PATH.json`` written by the exporter holds what is needed: "format" ("onnx",
"pt2": a ``torch.export`` ExportedProgram, "aoti": an AOTInductor package), "input_format"
("RGB"/"BGR"), "height", "width", "num_outputs" (C) and "resize_backend".
"""

import json
import os
from typing import Any, Callable, Dict

import cv2
import numpy as np
import torch
from torch.nn import functional as F

SIDECAR_SUFFIX = ".json"


def read_sidecar(path: str) -> Dict[str, Any]:
    """The exporter's description of the exported file ``path`` (``PATH.json``).

    Raises:
        FileNotFoundError: no sidecar next to ``path``.
    """
    sidecar = path + SIDECAR_SUFFIX
    if not os.path.isfile(sidecar):
        raise FileNotFoundError(
            f"{sidecar} not found: an exported model is run with the JSON file "
            "tools/export_model.py writes next to it."
        )
    with open(sidecar) as f:
        return json.load(f)


def load_graph(path: str, fmt: str) -> Callable[[np.ndarray], np.ndarray]:
    """A function (1, 3, H, W) float32 array -> (1, C, H, W) float32 scores running the exported
    file ``path`` of format ``fmt`` ("onnx" with onnxruntime on CPU, "pt2" with
    ``torch.export.load``, "aoti" with ``torch._inductor.aoti_load_package``)."""
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda image: session.run(None, {name: image})[0]
    if fmt == "pt2":
        module = torch.export.load(path).module()
    elif fmt == "aoti":
        module = torch._inductor.aoti_load_package(path)
    else:
        raise ValueError(f"Unknown exported format {fmt!r} in {path}{SIDECAR_SUFFIX}.")

    def run(image: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out = module(torch.from_numpy(image))
        if isinstance(out, (list, tuple)):
            out = out[0]
        return out.numpy()

    return run


def resize_image(image: np.ndarray, height: int, width: int, backend: str) -> np.ndarray:
    """(h, w, 3) uint8 -> (height, width, 3) uint8, bilinear: OpenCV's for "opencv", Pillow's
    for "detectron2" (the interpolations of the config's test resize)."""
    if image.shape[:2] == (height, width):
        return image
    if backend == "detectron2":
        from PIL import Image

        return np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)


class ExportedPredictor:
    """An exported model, one BGR image in, its scores at the image's size out, like
    :class:`pointrend_sem.predictor.SemSegPredictor`."""

    def __init__(self, path: str):
        """
        Args:
            path: an exported file with its sidecar ``PATH.json``.
        """
        self.path = path
        self.info = read_sidecar(path)
        self.height, self.width = int(self.info["height"]), int(self.info["width"])
        self.input_format = self.info["input_format"]
        self.run_graph = load_graph(path, self.info["format"])

    def model_input(self, image_bgr: np.ndarray) -> np.ndarray:
        """(h, w, 3) uint8 BGR -> the graph's (1, 3, H, W) float32 input, in the input format,
        resized to the export size."""
        image = image_bgr[:, :, ::-1] if self.input_format == "RGB" else image_bgr
        image = resize_image(
            np.ascontiguousarray(image), self.height, self.width, self.info["resize_backend"]
        )
        return np.ascontiguousarray(image.astype(np.float32).transpose(2, 0, 1)[None])

    def __call__(self, image_bgr: np.ndarray) -> Dict[str, torch.Tensor]:
        """
        Args:
            image_bgr: (h, w, 3) uint8 image in BGR order, as OpenCV reads it.

        Returns:
            "sem_seg": (C, h, w) float32 scores (logits) at the image's size.
        """
        scores = torch.from_numpy(np.asarray(self.run_graph(self.model_input(image_bgr))))
        size = tuple(image_bgr.shape[:2])
        if tuple(scores.shape[-2:]) != size:
            scores = F.interpolate(scores, size=size, mode="bilinear", align_corners=False)
        return {"sem_seg": scores[0]}
