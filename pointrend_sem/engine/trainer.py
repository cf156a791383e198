"""Trainer: detectron2's DefaultTrainer with semantic segmentation loaders, evaluators and the
poly schedule."""

import logging
import os
from typing import Callable, Dict, List

import torch
from detectron2.data import (
    MetadataCatalog,
    build_detection_test_loader,
    build_detection_train_loader,
)
from detectron2.engine import DefaultTrainer
from detectron2.evaluation import DatasetEvaluator, DatasetEvaluators
from tabulate import tabulate

from ..data import SemSegDatasetMapper
from ..evaluation import CityscapesOfficialSemSegEvaluator, KeyedSemSegEvaluator
from .lr_schedule import build_poly_lr_scheduler

# evaluator_type -> builders of the evaluators that score a dataset's refined prediction
EVALUATOR_BUILDERS: Dict[str, List[Callable[..., DatasetEvaluator]]] = {
    "sem_seg": [lambda name, out: KeyedSemSegEvaluator(name, output_dir=out)],
    "cityscapes_sem_seg": [
        lambda name, out: KeyedSemSegEvaluator(name, output_dir=out),
        lambda name, out: CityscapesOfficialSemSegEvaluator(name),
    ],
}


class Trainer(DefaultTrainer):
    """DefaultTrainer for PointRend semantic segmentation.

    * train loader: :class:`SemSegDatasetMapper` with the recipe's augmentations;
    * evaluators chosen from the dataset's ``evaluator_type`` (see ``EVALUATOR_BUILDERS``), plus
      the coarse prediction's metrics when ``MODEL.POINTREND_SEM.OUTPUT_COARSE``;
    * ``SOLVER.LR_SCHEDULER_NAME: WarmupPolyLR`` (other names: detectron2's schedulers).
    """

    @classmethod
    def build_evaluator(cls, cfg, dataset_name: str, output_folder: str = None):
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", None)
        if evaluator_type not in EVALUATOR_BUILDERS:
            raise ValueError(
                f"Dataset {dataset_name} has evaluator_type={evaluator_type!r}; pointrend-sem "
                f"evaluates {sorted(EVALUATOR_BUILDERS)}. Set it in the dataset's metadata."
            )
        evaluators = [
            build(dataset_name, output_folder) for build in EVALUATOR_BUILDERS[evaluator_type]
        ]
        if cfg.MODEL.POINTREND_SEM.OUTPUT_COARSE:
            evaluators.append(
                KeyedSemSegEvaluator(
                    dataset_name, output_key="coarse_sem_seg", result_key="coarse_sem_seg"
                )
            )
        return DatasetEvaluators(evaluators)

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        results = super().test(cfg, model, evaluators)
        log_refinement_gain(results)
        return results

    @classmethod
    def build_train_loader(cls, cfg):
        return build_detection_train_loader(cfg, mapper=SemSegDatasetMapper(cfg, is_train=True))

    @classmethod
    def build_test_loader(cls, cfg, dataset_name: str):
        return build_detection_test_loader(
            cfg, dataset_name, mapper=SemSegDatasetMapper(cfg, is_train=False)
        )

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer: torch.optim.Optimizer):
        if cfg.SOLVER.LR_SCHEDULER_NAME == "WarmupPolyLR":
            return build_poly_lr_scheduler(cfg, optimizer)
        return super().build_lr_scheduler(cfg, optimizer)


def log_refinement_gain(results: Dict) -> None:
    """Log coarse vs. refined mIoU and boundary IoU, when both were evaluated.

    ``results`` is ``{dataset: {"sem_seg": {...}, "coarse_sem_seg": {...}}}`` or, with a single
    test dataset, the inner dict itself.
    """
    per_dataset = (
        results
        if all(isinstance(v, dict) and "sem_seg" in v for v in results.values())
        else {"": results}
    )
    rows = []
    for dataset, res in per_dataset.items():
        if "sem_seg" not in res or "coarse_sem_seg" not in res:
            continue
        for metric in ("mIoU", "mBoundaryIoU"):
            coarse, refined = res["coarse_sem_seg"][metric], res["sem_seg"][metric]
            rows.append(
                [dataset, metric, f"{coarse:.2f}", f"{refined:.2f}", f"{refined - coarse:+.2f}"]
            )
    if rows:
        table = tabulate(
            rows, headers=["dataset", "metric", "coarse", "PointRend", "gain"], tablefmt="pipe"
        )
        logging.getLogger(__name__).info("What point refinement buys:\n" + table)
