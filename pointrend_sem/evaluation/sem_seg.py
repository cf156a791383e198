"""Semantic segmentation metrics of one model output, with the mean boundary IoU."""

from collections import OrderedDict

import numpy as np
from detectron2.evaluation import SemSegEvaluator


class KeyedSemSegEvaluator(SemSegEvaluator):
    """detectron2's :class:`SemSegEvaluator` reading any output key and reporting under any
    result key, with ``mBoundaryIoU`` (mean over classes of its per-class boundary IoU) added.

    With ``output_key="coarse_sem_seg"`` and ``result_key="coarse_sem_seg"`` it scores the
    coarse head's prediction next to the refined one, so one evaluation shows what point
    refinement buys.
    """

    def __init__(
        self,
        dataset_name: str,
        distributed: bool = True,
        output_dir=None,
        *,
        output_key: str = "sem_seg",
        result_key: str = "sem_seg",
    ):
        super().__init__(dataset_name, distributed, output_dir)
        self._output_key = output_key
        self._result_key = result_key

    def process(self, inputs, outputs):
        super().process(inputs, [{"sem_seg": o[self._output_key]} for o in outputs])

    def encode_json_sem_seg(self, sem_seg, input_file_name):
        # The RLE-encoded predictions are only written when there is an output dir.
        if not self._output_dir:
            return []
        return super().encode_json_sem_seg(sem_seg, input_file_name)

    def evaluate(self):
        results = super().evaluate()
        if results is None:  # not the main process
            return None
        metrics = results["sem_seg"]
        boundary = [v for k, v in metrics.items() if k.startswith("BoundaryIoU-")]
        if boundary:
            metrics["mBoundaryIoU"] = float(np.nanmean(boundary))
        return OrderedDict({self._result_key: metrics})
