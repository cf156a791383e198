"""An exported file evaluated on the config's test datasets with the project's evaluators
(``train_net.py --eval-only --exported PATH``): mIoU, boundary IoU and the rest, as
``--eval-only`` reports them for the PyTorch model.

Each validation image is read from its file as BGR (detectron2's ``read_image``, as the
predictor's users read it) and run by :class:`~pointrend_sem.export.runner.ExportedPredictor`:
resized to the export size, scores resized back to the image's size, where the evaluators
compare them with the ground truth. The graph has one output, so the coarse head's metrics
(``MODEL.POINTREND_SEM.OUTPUT_COARSE``) are not reported.
"""

import logging
import os
from collections import OrderedDict
from typing import Any, Dict, List

import torch
from detectron2.data import build_detection_test_loader
from detectron2.data.detection_utils import read_image
from detectron2.evaluation import inference_on_dataset, print_csv_format

from ..errors import UserValueError
from ..modeling.binary import num_output_channels
from .module import check_exported_file
from .runner import ExportedPredictor

logger = logging.getLogger(__name__)


def read_bgr(dataset_dict: Dict[str, Any]) -> Dict[str, Any]:
    """The test loader's mapper: the dataset dict with its image read as BGR ("image_bgr")."""
    return {**dataset_dict, "image_bgr": read_image(dataset_dict["file_name"], format="BGR")}


class ExportedModel:
    """Dataset dicts with "image_bgr" -> ``[{"sem_seg": (C, H, W) scores}]`` at each image's
    size, from an exported file: what :func:`detectron2.evaluation.inference_on_dataset` calls."""

    def __init__(self, path: str):
        self.predictor = ExportedPredictor(path)

    def __call__(self, inputs: List[Dict[str, Any]]) -> List[Dict[str, torch.Tensor]]:
        return [
            {"sem_seg": torch.from_numpy(self.predictor(d["image_bgr"])["sem_seg"])} for d in inputs
        ]


def evaluate_exported(cfg, path: str) -> Dict[str, Any]:
    """Evaluate the exported ``path`` on ``cfg.DATASETS.TEST`` with the evaluators of
    :meth:`pointrend_sem.engine.Trainer.build_evaluator` (without the coarse head's); results
    as ``Trainer.test`` returns them: ``{key: metrics}`` for one dataset, ``{dataset: {key:
    metrics}}`` for several.

    Raises:
        UserFileNotFoundError: no file ``path``, or no sidecar next to it.
        UserValueError: the file's number of outputs is not the config's.
    """
    from ..engine import Trainer

    check_exported_file(path, "--exported")
    model = ExportedModel(path)
    expected = num_output_channels(cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES)
    if int(model.predictor.info["num_outputs"]) != expected:
        raise UserValueError(
            f"{path} has {model.predictor.info['num_outputs']} outputs and the config "
            f"{expected} (MODEL.SEM_SEG_HEAD.NUM_CLASSES): evaluate it with the config it was "
            "exported from."
        )
    eval_cfg = cfg.clone()
    eval_cfg.defrost()
    eval_cfg.MODEL.POINTREND_SEM.OUTPUT_COARSE = False  # the graph has the refined scores only
    results = OrderedDict()
    for dataset_name in cfg.DATASETS.TEST:
        loader = build_detection_test_loader(cfg, dataset_name, mapper=read_bgr)
        folder = os.path.join(cfg.OUTPUT_DIR, "inference_exported", dataset_name)
        evaluator = Trainer.build_evaluator(eval_cfg, dataset_name, folder)
        results[dataset_name] = inference_on_dataset(model, loader, evaluator)
        logger.info(f"Evaluation results of {path} for {dataset_name} in csv format:")
        print_csv_format(results[dataset_name])
    return list(results.values())[0] if len(results) == 1 else results
