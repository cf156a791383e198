"""Semantic segmentation metrics of one model output, with the per-class boundary IoU."""

import os
from collections import OrderedDict

import numpy as np
import torch
from detectron2.evaluation import SemSegEvaluator
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager

from .boundary_iou import (
    DILATION_RATIO,
    boundary_counts,
    boundary_iou_from_counts,
    confusion_matrix_with_bands,
)

# Keys of detectron2's boundary IoU, computed on the multi-class label map (see below).
DETECTRON2_BOUNDARY_KEYS = ("BoundaryIoU-", "min(IoU, B-Iou)-")


def predicted_classes(output: dict, key: str = "sem_seg") -> np.ndarray:
    """The (H, W) int64 class map (argmax) of ``output[key]``, a (C, H, W) score tensor on any
    device, as a numpy array. Computed and copied to the CPU once per output: the evaluators
    that read the same outputs (mIoU and boundary IoU, Cityscapes' official files) share it
    through ``output``, under a key of its own."""
    cached = f"_{key}_classes"
    if cached not in output:
        output[cached] = output[key].argmax(dim=0).cpu().numpy()
    return output[cached]


class KeyedSemSegEvaluator(SemSegEvaluator):
    """detectron2's :class:`SemSegEvaluator` reading any output key and reporting under any
    result key, with a per-class boundary IoU (Cheng et al., CVPR 2021) in place of detectron2's.

    With ``output_key="coarse_sem_seg"`` and ``result_key="coarse_sem_seg"`` it scores the
    coarse head's prediction next to the refined one, so one evaluation shows what point
    refinement buys.

    Results under ``result_key``: all of detectron2's (mIoU, fwIoU, mACC, pACC, ``IoU-<class>``,
    ``ACC-<class>``) but its boundary keys, then ``mBoundaryIoU`` and ``BoundaryIoU-<class>``, in
    percent. detectron2 erodes the multi-class label map and subtracts it from itself, so its
    "boundary" map holds label differences (interiors count as class 0, a 2|5 border as class 3);
    here each class is scored on its binary masks, as :mod:`.boundary_iou` describes, with
    intersections and unions summed over the dataset (and over ranks) before dividing.
    ``BoundaryIoU-<class>`` is reported for the classes in some ground truth or some prediction;
    ``mBoundaryIoU`` is their mean. Unlike detectron2's mIoU, which leaves out the classes absent
    from the ground truth, a class that is only predicted counts with a boundary IoU of 0.

    :meth:`process` is overridden: one read of each ground-truth file and one histogram give
    both the confusion matrix and the boundary counts (detectron2's boundary computation is
    never run).
    """

    def __init__(
        self,
        dataset_name: str,
        distributed: bool = True,
        output_dir=None,
        *,
        output_key: str = "sem_seg",
        result_key: str = "sem_seg",
        boundary_dilation_ratio: float = DILATION_RATIO,
        image_border_is_contour: bool = True,
    ):
        """
        Args:
            dataset_name, distributed, output_dir: as :class:`SemSegEvaluator`.
            output_key: the model output to score, a (C, H, W) score tensor per image.
            result_key: the key of the results.
            boundary_dilation_ratio: the boundary band's width as a fraction of the image
                diagonal.
            image_border_is_contour: count the image border as a contour of every class that
                touches it, as the reference implementation does (default; see
                :mod:`.boundary_iou`).
        """
        super().__init__(dataset_name, distributed, output_dir)
        self._output_key = output_key
        self._result_key = result_key
        self._boundary_dilation_ratio = boundary_dilation_ratio
        self._image_border_is_contour = image_border_is_contour
        # SemSegEvaluator.evaluate reads this flag: False keeps its own boundary keys out.
        self._compute_boundary_iou = False

    def reset(self):
        super().reset()
        self._boundary_intersection = np.zeros(self._num_classes, dtype=np.int64)
        self._boundary_union = np.zeros(self._num_classes, dtype=np.int64)

    def process(self, inputs, outputs):
        """Update the confusion matrix as :meth:`SemSegEvaluator.process` does, and the boundary
        intersections / unions, from one read of each ground truth.

        Args:
            inputs: dataset dicts, with a ``"file_name"`` that the dataset maps to a ground-truth
                file.
            outputs: dicts holding ``output_key``, a (C, H, W) score tensor each.
        """
        for inp, out in zip(inputs, outputs):
            pred = predicted_classes(out, self._output_key)
            gt_file = self.input_file_to_gt_file[inp["file_name"]]
            gt = self.sem_seg_loading_fn(gt_file, dtype=int)
            try:
                counts = confusion_matrix_with_bands(
                    gt,
                    pred,
                    self._num_classes,
                    self._ignore_label,
                    dilation_ratio=self._boundary_dilation_ratio,
                    image_border_is_contour=self._image_border_is_contour,
                )
            except ValueError as e:
                raise ValueError(
                    f"{gt_file}: {e}. Check the dataset's stuff_classes and ignore_label."
                ) from e
            self._conf_matrix += counts.sum(axis=(2, 3))
            intersection, union = boundary_counts(counts)
            self._boundary_intersection += intersection
            self._boundary_union += union
            self._predictions.extend(self.encode_json_sem_seg(pred, inp["file_name"]))

    def encode_json_sem_seg(self, sem_seg, input_file_name):
        # The RLE-encoded predictions are only written when there is an output dir.
        if not self._output_dir:
            return []
        return super().encode_json_sem_seg(sem_seg, input_file_name)

    def evaluate(self):
        boundary = np.stack([self._boundary_intersection, self._boundary_union])
        if self._distributed:  # on every rank, before SemSegEvaluator.evaluate's own gathers
            boundary = np.sum(comm.all_gather(boundary), axis=0)
        results = super().evaluate()
        if results is None:  # not the main process
            return None
        metrics = {
            k: v
            for k, v in results["sem_seg"].items()
            if not k.startswith(DETECTRON2_BOUNDARY_KEYS)
        }
        boundary_iou = boundary_iou_from_counts(*boundary)
        reported = ~np.isnan(boundary_iou)
        metrics["mBoundaryIoU"] = (
            float(np.mean(boundary_iou[reported])) if reported.any() else np.nan
        )
        for name, value, is_reported in zip(self._class_names, boundary_iou, reported):
            if is_reported:
                metrics[f"BoundaryIoU-{name}"] = float(value)
        self._logger.info(
            f"{self._result_key}: mBoundaryIoU {metrics['mBoundaryIoU']:.2f} over "
            f"{int(reported.sum())} classes"
        )
        if self._output_dir:  # SemSegEvaluator.evaluate saved the metrics without these
            file_path = os.path.join(self._output_dir, "sem_seg_evaluation.pth")
            with PathManager.open(file_path, "wb") as f:
                torch.save(metrics, f)
        return OrderedDict({self._result_key: metrics})
