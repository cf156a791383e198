"""Run a model on single images: the predictor and the names/colours to draw its classes with.

Used by ``demo/demo.py`` and ``tools/visualize_points.py``.
"""

import logging
from typing import Dict

import numpy as np
import torch
from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T
from detectron2.data.catalog import Metadata
from detectron2.modeling import build_model
from detectron2.utils.colormap import colormap

from .capabilities import runnable_device
from .checkpoint import PointRendSemCheckpointer
from .data import build_test_augmentations
from .modeling.binary import num_output_channels


def to_model_inputs(image: np.ndarray, augmentations: T.AugmentationList) -> Dict:
    """The model's input dict of an (H, W, 3) uint8 image in the model's input format:
    "image" (3, h, w) float tensor resized by ``augmentations``, "height" H, "width" W."""
    aug_input = T.AugInput(np.ascontiguousarray(image))
    augmentations(aug_input)
    tensor = torch.as_tensor(aug_input.image.astype("float32").transpose(2, 0, 1))
    return {"image": tensor, "height": image.shape[0], "width": image.shape[1]}


class SemSegPredictor:
    """The model of a config with the weights of ``MODEL.WEIGHTS``, one image in, one output out.

    Like detectron2's ``DefaultPredictor`` (BGR input, converted to ``INPUT.FORMAT``), but the
    image is resized with the config's own test augmentation
    (:func:`pointrend_sem.data.build_test_augmentations`: ``INPUT.RESIZE_BACKEND`` "opencv"
    resizes as mmsegmentation's and sssegmentation's test pipelines, "detectron2" as
    ``DefaultPredictor``), and the output comes back at the input's size
    (``TEST.OUTPUT_RESIZE``). The resize runs on the uint8 image, as in those pipelines. The
    prediction is the model's :meth:`~pointrend_sem.modeling.PointRendSemanticSegmentor.predict`.

    ``MODEL.WEIGHTS`` may be a file or URL of a published checkpoint of mmsegmentation,
    sssegmentation or detectron2, loaded as it is (:class:`PointRendSemCheckpointer`); one that
    does not fit the model (an entry of another shape, or missing) raises a ``UserValueError``
    naming it and the fix (``strict_fit``); ``MODEL.WEIGHTS ""`` keeps the random
    initialization.
    """

    def __init__(self, cfg):
        if runnable_device(cfg.MODEL.DEVICE) != cfg.MODEL.DEVICE:
            logging.getLogger(__name__).info(
                f"{cfg.MODEL.DEVICE} is not available: the model runs on the CPU."
            )
            cfg = cfg.clone()
            cfg.defrost()
            cfg.MODEL.DEVICE = "cpu"
        self.model = build_model(cfg)
        self.model.eval()
        PointRendSemCheckpointer(self.model, strict_fit=True).load(cfg.MODEL.WEIGHTS)
        self.augmentations = T.AugmentationList(build_test_augmentations(cfg))
        self.input_format = cfg.INPUT.FORMAT

    def model_inputs(self, image_bgr: np.ndarray) -> Dict:
        """The model's input dict of one (H, W, 3) uint8 BGR image: "image" (3, h, w) float
        tensor resized for test, "height" H and "width" W."""
        image = image_bgr[:, :, ::-1] if self.input_format == "RGB" else image_bgr
        return to_model_inputs(image, self.augmentations)

    def __call__(self, image_bgr: np.ndarray) -> Dict:
        """
        Args:
            image_bgr: (H, W, 3) uint8 image in BGR order, as OpenCV reads it.

        Returns:
            the model's output for the image: "sem_seg" (max(C, 2), H, W) logits (C: classes
            predicted; two channels for a one-logit binary model), and "coarse_sem_seg"
            likewise when the config asks for it.
        """
        inputs = self.model_inputs(image_bgr)
        with torch.no_grad():
            return self.model.predict([inputs["image"]], [(inputs["height"], inputs["width"])])[0]


def display_metadata(cfg) -> Metadata:
    """Class names and colours to draw predictions of ``cfg``'s model with.

    Taken from the metadata of ``DATASETS.TEST[0]`` (``stuff_classes``, ``stuff_colors``) and
    completed up to the model's output channels (``MODEL.SEM_SEG_HEAD.NUM_CLASSES``, 2 for a
    one-logit binary model): a class missing there is called "class <i>" and gets a fixed
    colour of detectron2's colormap, so every predicted class is drawn, with the same colour in
    every image.
    """
    name = cfg.DATASETS.TEST[0] if len(cfg.DATASETS.TEST) else "__unused"
    source = MetadataCatalog.get(name)
    num_classes = max(
        num_output_channels(cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES),
        len(source.get("stuff_classes", [])),
    )
    classes = list(source.get("stuff_classes", []))
    classes += [f"class {i}" for i in range(len(classes), num_classes)]
    palette = colormap(rgb=True, maximum=255).astype(int).tolist()
    colors = [list(c) for c in source.get("stuff_colors", [])][:num_classes]
    colors += [palette[i % len(palette)] for i in range(len(colors), num_classes)]
    return Metadata(name=name, stuff_classes=classes, stuff_colors=colors)
