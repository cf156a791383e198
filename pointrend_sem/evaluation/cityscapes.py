"""Cityscapes' official pixel-level evaluation (the benchmark server's numbers) on labelIds.

detectron2's ``CityscapesSemSegEvaluator`` imports a module that exists only inside Meta; this
one uses the public ``cityscapesscripts``.
"""

import glob
import logging
import os
import tempfile
from collections import OrderedDict

import numpy as np
from detectron2.data import MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm
from PIL import Image


def train_ids_to_label_ids(train_ids: np.ndarray) -> np.ndarray:
    """(H, W) Cityscapes trainIds -> (H, W) uint8 labelIds (unknown trainIds -> 0)."""
    from cityscapesscripts.helpers.labels import trainId2label

    lut = np.zeros(256, dtype=np.uint8)
    for train_id, label in trainId2label.items():
        if 0 <= train_id < 255 and not label.ignoreInEval:
            lut[train_id] = label.id
    return lut[train_ids.astype(np.int64).clip(0, 255)]


class CityscapesOfficialSemSegEvaluator(DatasetEvaluator):
    """Write predictions as labelId PNGs and score them with ``cityscapesscripts``'
    ``evalPixelLevelSemanticLabeling`` against ``*_gtFine_labelIds.png`` in the metadata's
    ``gt_dir``. Results: IoU / iIoU over classes and categories, in percent, under
    ``"sem_seg_cityscapes"``. Runs on all ranks; only the main process scores (single machine).
    """

    def __init__(self, dataset_name: str):
        self._metadata = MetadataCatalog.get(dataset_name)
        self._logger = logging.getLogger(__name__)

    def reset(self):
        self._working_dir = tempfile.TemporaryDirectory(prefix="cityscapes_eval_")
        self._temp_dir = self._working_dir.name
        self._temp_dir = comm.all_gather(self._temp_dir)[0]
        if self._temp_dir != self._working_dir.name:
            self._working_dir.cleanup()

    def process(self, inputs, outputs):
        for inp, out in zip(inputs, outputs):
            basename = os.path.splitext(os.path.basename(inp["file_name"]))[0]
            pred = out["sem_seg"].argmax(dim=0).cpu().numpy()
            Image.fromarray(train_ids_to_label_ids(pred)).save(
                os.path.join(self._temp_dir, basename + "_pred.png")
            )

    def evaluate(self):
        comm.synchronize()
        if comm.get_rank() > 0:
            return None
        from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as cs_eval

        args = cs_eval.args
        args.predictionPath = os.path.abspath(self._temp_dir)
        args.predictionWalk = None
        args.JSONOutput = False
        args.colorized = False
        args.quiet = True
        gt_files = sorted(
            glob.glob(os.path.join(self._metadata.gt_dir, "*", "*_gtFine_labelIds.png"))
        )
        if not gt_files:
            raise FileNotFoundError(
                f"No *_gtFine_labelIds.png under {self._metadata.gt_dir}; "
                "see datasets/README.md for the Cityscapes layout."
            )
        predictions = [cs_eval.getPrediction(args, gt) for gt in gt_files]
        results = cs_eval.evaluateImgLists(predictions, gt_files, args)
        self._working_dir.cleanup()
        return OrderedDict(
            {
                "sem_seg_cityscapes": {
                    "IoU": 100.0 * results["averageScoreClasses"],
                    "iIoU": 100.0 * results["averageScoreInstClasses"],
                    "IoU_sup": 100.0 * results["averageScoreCategories"],
                    "iIoU_sup": 100.0 * results["averageScoreInstCategories"],
                }
            }
        )
