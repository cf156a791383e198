"""Cityscapes: the official pixel-level evaluation, and test-set files for the benchmark server.

detectron2's ``CityscapesSemSegEvaluator`` imports a module that exists only inside Meta; these
use the public ``cityscapesscripts``.

* :class:`CityscapesOfficialSemSegEvaluator` (val): writes each prediction as a labelId PNG and
  scores exactly the images it was given with ``evalPixelLevelSemanticLabeling``'s
  ``evaluateImgLists`` against ``<gt_dir>/<city>/<name>_gtFine_{labelIds,instanceIds}.png``.
  Its IoU is the number the benchmark server reports; it equals
  ``python -m cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling`` on the same files.
* :class:`CityscapesSubmissionWriter` (test): writes the predictions in the submission format,
  one labelId PNG (uint8, full resolution) per image, named ``<city>_<seq>_<frame>_leftImg8bit.png``
  (the server matches ``<city>_<seq>_<frame>*.png``), and reports no metrics.
* :func:`build_cityscapes_evaluators` picks them: the test split gets the writer, the other
  splits detectron2's mIoU with the per-class boundary IoU (:class:`KeyedSemSegEvaluator`) and
  the official evaluation (which has no boundary metric).

Test-set submission, after ``python datasets/prepare_cityscapes.py`` (detectron2 reads the test
split's labelTrainIds files too, all "ignore")::

    python train_net.py --config-file configs/cityscapes_r50.yaml --eval-only \\
        MODEL.WEIGHTS path/to/model_final.pth DATASETS.TEST "('cityscapes_fine_sem_seg_test',)"
    cd output/cityscapes_r50/inference/cityscapes_fine_sem_seg_test/cityscapes_submission
    zip -q ../cityscapes_submission.zip *.png

The predictions are in ``<evaluation output folder>/cityscapes_submission``: with the Trainer,
``OUTPUT_DIR/inference/cityscapes_fine_sem_seg_test/cityscapes_submission`` (1,525 files);
upload the zip at https://www.cityscapes-dataset.com/submit/ (pixel-level semantic labeling).

Both evaluators run in one process or in several on one machine (all ranks write into the main
process's folder, which scores); not across machines.
"""

import contextlib
import copy
import logging
import os
import tempfile
from collections import OrderedDict
from typing import Dict, Iterator, List, Sequence, Tuple

import numpy as np
from detectron2.data import MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm
from PIL import Image

from .sem_seg import KeyedSemSegEvaluator, predicted_classes

IMAGE_SUFFIX = "_leftImg8bit.png"
SUBMISSION_FOLDER = "cityscapes_submission"


def train_ids_to_label_ids(train_ids: np.ndarray) -> np.ndarray:
    """(H, W) Cityscapes trainIds -> (H, W) uint8 labelIds (unknown trainIds -> 0)."""
    from cityscapesscripts.helpers.labels import trainId2label

    lut = np.zeros(256, dtype=np.uint8)
    for train_id, label in trainId2label.items():
        if 0 <= train_id < 255 and not label.ignoreInEval:
            lut[train_id] = label.id
    return lut[train_ids.astype(np.int64).clip(0, 255)]


def cityscapes_image_id(file_name: str) -> Tuple[str, str]:
    """``.../<city>/<city>_<seq>_<frame>_leftImg8bit.png`` -> ``(city, "<city>_<seq>_<frame>")``.

    Raises:
        ValueError: when the name is not a Cityscapes image name.
    """
    basename = os.path.basename(file_name)
    stem = basename[: -len(IMAGE_SUFFIX)]
    if not basename.endswith(IMAGE_SUFFIX) or len(stem.split("_")) != 3:
        raise ValueError(
            f"not a Cityscapes image (<city>_<seq>_<frame>{IMAGE_SUFFIX}): {file_name}"
        )
    return stem.split("_")[0], stem


def _save_label_ids(output: dict, path: str) -> None:
    """Save the argmax of an output's (C, H, W) "sem_seg" scores as an (H, W) uint8 labelId
    PNG."""
    train_ids = predicted_classes(output)
    Image.fromarray(train_ids_to_label_ids(train_ids)).save(path)


@contextlib.contextmanager
def _numpy_in1d() -> Iterator[None]:
    """Provide ``np.in1d`` (removed in NumPy 2.4) while ``cityscapesscripts`` (<= 2.3.0), which
    calls it for the instance-level scores, runs; restore NumPy afterwards."""
    if hasattr(np, "in1d"):
        yield
        return
    np.in1d = lambda ar1, ar2, **kwargs: np.isin(ar1, ar2, **kwargs).ravel()
    try:
        yield
    finally:
        del np.in1d


def evaluate_label_id_files(predictions: Sequence[str], ground_truths: Sequence[str]) -> Dict:
    """Score labelId PNGs with ``cityscapesscripts``' ``evaluateImgLists``, pairwise.

    Args:
        predictions: (H, W) uint8 labelId PNGs.
        ground_truths: the matching ``*_gtFine_labelIds.png``; each ``*_gtFine_instanceIds.png``
            next to it is read for the instance-level (iIoU) scores.

    Returns:
        ``cityscapesscripts``' result dict (``averageScoreClasses``, ``classScores``, ...),
        scores in [0, 1].

    Raises:
        FileNotFoundError: on a missing ground-truth file.
        RuntimeError: when ``cityscapesscripts`` rejects the files (it would exit the process).
    """
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as cs_eval

    for gt in ground_truths:
        for path in (gt, gt.replace("_labelIds", "_instanceIds")):
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{path} is missing: unzip gtFine_trainvaltest.zip")
    args = copy.copy(cs_eval.args)  # the module's own is global state: leave it alone
    args.evalInstLevelScore, args.evalPixelAccuracy = True, False
    args.JSONOutput, args.quiet, args.colorized, args.bold, args.nocol = False, True, False, "", ""
    try:
        with _numpy_in1d():
            return cs_eval.evaluateImgLists(list(predictions), list(ground_truths), args)
    except SystemExit as e:
        raise RuntimeError("cityscapesscripts' evaluation failed; see its ERROR above") from e


def summarize_cityscapes_results(results: Dict) -> Dict[str, float]:
    """``cityscapesscripts``' result dict -> IoU, iIoU, IoU_sup, iIoU_sup and ``IoU-<class>``
    of the 19 evaluated classes, in percent."""
    from cityscapesscripts.helpers.labels import trainId2label

    metrics = {
        "IoU": 100.0 * results["averageScoreClasses"],
        "iIoU": 100.0 * results["averageScoreInstClasses"],
        "IoU_sup": 100.0 * results["averageScoreCategories"],
        "iIoU_sup": 100.0 * results["averageScoreInstCategories"],
    }
    for train_id in range(19):
        name = trainId2label[train_id].name
        metrics[f"IoU-{name}"] = 100.0 * results["classScores"][name]
    return metrics


class _CityscapesFilesEvaluator(DatasetEvaluator):
    """Shared by the evaluators below: a folder of the main process that all ranks write into."""

    def _shared_folder(self, folder: str) -> str:
        if comm.get_local_size() != comm.get_world_size():
            raise RuntimeError(f"{type(self).__name__} does not work across several machines")
        return comm.all_gather(folder)[0]


class CityscapesOfficialSemSegEvaluator(_CityscapesFilesEvaluator):
    """Cityscapes' official pixel-level evaluation of the refined prediction (``"sem_seg"``).

    Predictions are written as labelId PNGs into a temporary folder; the main process then scores
    the images it was given (gathered from all ranks), and only those, against
    ``<gt_dir>/<city>/<city>_<seq>_<frame>_gtFine_labelIds.png`` (``gt_dir`` from the dataset's
    metadata). Results, in percent, under ``"sem_seg_cityscapes"``: IoU / iIoU over classes,
    IoU_sup / iIoU_sup over categories, and ``IoU-<class>``.
    """

    def __init__(self, dataset_name: str):
        self._gt_dir = MetadataCatalog.get(dataset_name).gt_dir
        self._logger = logging.getLogger(__name__)

    def reset(self):
        self._working_dir = tempfile.TemporaryDirectory(prefix="cityscapes_eval_")
        self._temp_dir = self._shared_folder(self._working_dir.name)
        if self._temp_dir != self._working_dir.name:
            self._working_dir.cleanup()
        self._pairs: List[Tuple[str, str]] = []  # (prediction, ground truth)

    def process(self, inputs, outputs):
        for inp, out in zip(inputs, outputs):
            city, image_id = cityscapes_image_id(inp["file_name"])
            prediction = os.path.join(self._temp_dir, image_id + IMAGE_SUFFIX)
            _save_label_ids(out, prediction)
            gt = os.path.join(self._gt_dir, city, image_id + "_gtFine_labelIds.png")
            self._pairs.append((prediction, gt))

    def evaluate(self):
        comm.synchronize()
        pairs = sorted({pair for part in comm.gather(self._pairs) for pair in part})
        if not comm.is_main_process():
            return None
        try:
            self._logger.info(f"Cityscapes' official evaluation of {len(pairs)} images ...")
            results = evaluate_label_id_files([p for p, _ in pairs], [g for _, g in pairs])
        finally:
            self._working_dir.cleanup()
        return OrderedDict({"sem_seg_cityscapes": summarize_cityscapes_results(results)})


class CityscapesSubmissionWriter(_CityscapesFilesEvaluator):
    """Write the predictions for the Cityscapes benchmark server; no metrics.

    Each image's prediction becomes ``<output_dir>/cityscapes_submission/
    <city>_<seq>_<frame>_leftImg8bit.png``: uint8 labelIds (trainIds mapped back with
    :func:`train_ids_to_label_ids`) at the image's full resolution. Files of an earlier run are
    overwritten image by image, never deleted.
    """

    def __init__(self, dataset_name: str, output_dir: str):
        if not output_dir:
            raise ValueError("CityscapesSubmissionWriter needs an output directory")
        self._dataset_name = dataset_name
        self._output_dir = os.path.join(output_dir, SUBMISSION_FOLDER)
        self._logger = logging.getLogger(__name__)

    def reset(self):
        os.makedirs(self._output_dir, exist_ok=True)
        self._folder = self._shared_folder(os.path.abspath(self._output_dir))
        self._num_written = 0

    def process(self, inputs, outputs):
        for inp, out in zip(inputs, outputs):
            _, image_id = cityscapes_image_id(inp["file_name"])
            _save_label_ids(out, os.path.join(self._folder, image_id + IMAGE_SUFFIX))
            self._num_written += 1

    def evaluate(self):
        comm.synchronize()
        num_written = sum(comm.gather(self._num_written))
        if not comm.is_main_process():
            return None
        self._logger.info(
            f"Wrote {num_written} {self._dataset_name} predictions to {self._folder}: zip the "
            "PNGs and upload them at https://www.cityscapes-dataset.com/submit/"
        )
        return OrderedDict()


def is_cityscapes_test_split(dataset_name: str) -> bool:
    """Whether the dataset's ``gt_dir`` is a Cityscapes ``test`` folder (no public labels)."""
    gt_dir = MetadataCatalog.get(dataset_name).get("gt_dir", "")
    return os.path.basename(os.path.normpath(gt_dir)) == "test"


def build_cityscapes_evaluators(dataset_name: str, output_dir: str) -> List[DatasetEvaluator]:
    """The evaluators of a Cityscapes split (``evaluator_type`` "cityscapes_sem_seg").

    test: ``[CityscapesSubmissionWriter]`` into ``output_dir/cityscapes_submission``;
    train / val: ``[KeyedSemSegEvaluator, CityscapesOfficialSemSegEvaluator]``.
    """
    if is_cityscapes_test_split(dataset_name):
        return [CityscapesSubmissionWriter(dataset_name, output_dir)]
    return [
        KeyedSemSegEvaluator(dataset_name, output_dir=output_dir),
        CityscapesOfficialSemSegEvaluator(dataset_name),
    ]
