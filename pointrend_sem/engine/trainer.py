"""Trainer: detectron2's DefaultTrainer with semantic segmentation loaders, evaluators and the
poly schedule, through hooks only (:mod:`.defaults` adds the three detectron2's constructor
lacks)."""

import logging
import os
import weakref
from collections import OrderedDict
from typing import Callable, Dict, List, Sequence

import torch
from detectron2.data import MetadataCatalog, build_detection_test_loader
from detectron2.engine import create_ddp_model, hooks
from detectron2.evaluation import (
    DatasetEvaluator,
    DatasetEvaluators,
    inference_on_dataset,
    print_csv_format,
)
from detectron2.layers import NaiveSyncBatchNorm
from detectron2.utils import comm
from tabulate import tabulate
from torch import nn

from ..checkpoint import (
    PointRendSemCheckpointer,
    checkpoint_to_read,
    explain_unreadable_checkpoint,
    make_writes_atomic,
)
from ..data import SemSegDatasetMapper
from ..data.resumable_loader import build_resumable_train_loader
from ..errors import UserValueError
from ..evaluation import (
    KeyedSemSegEvaluator,
    build_cityscapes_evaluators,
    is_cityscapes_test_split,
)
from ..inference import build_inference_model
from ..tta import SemanticSegmentorWithTTA
from .amp import build_step_trainer
from .defaults import DefaultTrainerWithHooks
from .lr_schedule import build_poly_lr_scheduler
from .resumption import (
    AbandonOnStop,
    CheckpointOnSignal,
    EvaluationAbandoned,
    ExactResumption,
    active_stop_signals,
)
from .stop_signals import ignore_in_worker, parse_signals

# added to the result keys of evaluations with test-time augmentation (sem_seg_TTA, ...)
TTA_SUFFIX = "_TTA"

# evaluator_type -> builder of the evaluators that score a dataset's (refined) prediction
EVALUATOR_BUILDERS: Dict[str, Callable[[str, str], List[DatasetEvaluator]]] = {
    "sem_seg": lambda name, out: [KeyedSemSegEvaluator(name, output_dir=out)],
    "cityscapes_sem_seg": build_cityscapes_evaluators,
}


class Trainer(DefaultTrainerWithHooks):
    """DefaultTrainer for PointRend semantic segmentation.

    * train loader: :class:`SemSegDatasetMapper` with the recipe's augmentations;
    * evaluators chosen from the dataset's ``evaluator_type`` (see ``EVALUATOR_BUILDERS``), plus
      the coarse prediction's metrics when ``MODEL.POINTREND_SEM.OUTPUT_COARSE``;
    * ``SOLVER.LR_SCHEDULER_NAME: WarmupPolyLR`` (other names: detectron2's schedulers);
    * several processes: DistributedDataParallel arguments that work on CPU and keep plain
      BatchNorm statistics equal (:func:`ddp_arguments`);
    * ``SOLVER.AMP.ENABLED``: bf16 on CPU, resumable across AMP on/off (:mod:`.amp`);
    * checkpoints read by :class:`PointRendSemCheckpointer` and written atomically.

    It overrides only hooks: detectron2's public ones, and the three of
    :class:`~pointrend_sem.engine.defaults.DefaultTrainerWithHooks` (the one adapter to
    detectron2's constructor).
    """

    @classmethod
    def build_ddp_model(cls, cfg, model):
        """``model`` in DistributedDataParallel (several processes) with :func:`ddp_arguments`:
        detectron2 gives ``device_ids=[local rank]``, which torch refuses for a CPU model, and
        ``broadcast_buffers=False``, which lets plain BatchNorm statistics drift apart between
        processes; each is left out where it fails."""
        kwargs = ddp_arguments(model, cfg.MODEL.DEVICE, comm.get_world_size())
        return create_ddp_model(model, **kwargs)

    @classmethod
    def build_step_trainer(cls, cfg, model, data_loader, optimizer):
        """:func:`~pointrend_sem.engine.amp.build_step_trainer`: with ``SOLVER.AMP.ENABLED``,
        bf16 autocast on CPU, detectron2's fp16 step (resumable without a scaler state) on
        CUDA."""
        return build_step_trainer(model, data_loader, optimizer, amp=cfg.SOLVER.AMP.ENABLED)

    def build_checkpointer(self, cfg, model):
        """A :class:`PointRendSemCheckpointer` (published checkpoints of other code bases load
        as ``MODEL.WEIGHTS``) that writes atomically (:func:`make_writes_atomic`: a run killed
        mid-save resumes from the last complete checkpoint)."""
        checkpointer = PointRendSemCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        return make_writes_atomic(checkpointer)

    def build_writers(self):
        """detectron2's metric writers (console, metrics.json, TensorBoard), remembered for
        :meth:`build_hooks`."""
        self._metric_writers = super().build_writers()
        return self._metric_writers

    def build_hooks(self):
        """detectron2's hooks, its PeriodicWriter (every 20 iterations) replaced by one that
        writes every ``cfg.LOG_PERIOD`` iterations, with :class:`ExactResumption` and
        :class:`CheckpointOnSignal` (:mod:`.resumption`: exact resumption, a checkpoint on
        ``SOLVER.CHECKPOINT_ON_SIGNALS``) before the writer. The new writer hook takes the
        writers that ``DefaultTrainer.build_hooks`` built through :meth:`build_writers`, so each
        writer (metrics.json opened for appending, TensorBoard's event file) exists once.

        The stop hook comes before the writer: a stop ends its iteration before the writer
        writes it, and the writer's ``after_train`` writes it once. Written twice, the console
        printer divides by the iterations since its last write (zero) when the stop comes
        within detectron2's 3 timing warm-up iterations of a start."""
        cfg = self.cfg
        built = [
            (
                hooks.PeriodicWriter(self._metric_writers, period=cfg.LOG_PERIOD)
                if isinstance(hook, hooks.PeriodicWriter)
                else hook
            )
            for hook in super().build_hooks()
        ]
        resumption = [
            ExactResumption(self.data_loader, cfg.SEED, cfg.SOLVER.IMS_PER_BATCH),
            CheckpointOnSignal(parse_signals(cfg.SOLVER.CHECKPOINT_ON_SIGNALS), self.checkpointer),
        ]
        writer_at = next(
            (i for i, hook in enumerate(built) if isinstance(hook, hooks.PeriodicWriter)),
            len(built),
        )
        return built[:writer_at] + resumption + built[writer_at:]

    def train(self):
        """:meth:`DefaultTrainer.train`; the train loader's workers are stopped on every way out
        (a stop signal, an error, also in a hook's ``after_train``): they ignore the stop signals,
        and at interpreter exit multiprocessing would SIGTERM them and wait for them."""
        try:
            return super().train()
        finally:
            self.release_train_loader()

    def release_train_loader(self) -> None:
        """Stop the train loader's workers now: the step trainer drops its iterator
        (detectron2's ``SimpleTrainer.reset_data_loader``, keeping the same loader)."""
        loader = self.data_loader
        self._trainer.reset_data_loader(lambda: loader)

    def resume_or_load(self, resume: bool = True) -> None:
        """As :meth:`DefaultTrainer.resume_or_load`; a checkpoint file that cannot be read
        (truncated, not a checkpoint) stops with an error naming it
        (:func:`explain_unreadable_checkpoint`)."""
        path, source = checkpoint_to_read(self.checkpointer, self.cfg.MODEL.WEIGHTS, resume)
        with explain_unreadable_checkpoint(path, source):
            super().resume_or_load(resume=resume)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name: str, output_folder: str = None):
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type", None)
        if evaluator_type not in EVALUATOR_BUILDERS:
            raise UserValueError(
                f"Dataset {dataset_name} has evaluator_type={evaluator_type!r}; pointrend-sem "
                f"evaluates {sorted(EVALUATOR_BUILDERS)}. Set it in the dataset's metadata."
            )
        evaluators = EVALUATOR_BUILDERS[evaluator_type](dataset_name, output_folder)
        if cfg.MODEL.POINTREND_SEM.OUTPUT_COARSE and not is_cityscapes_test_split(dataset_name):
            evaluators.append(
                KeyedSemSegEvaluator(
                    dataset_name, output_key="coarse_sem_seg", result_key="coarse_sem_seg"
                )
            )
        return DatasetEvaluators(evaluators)

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """detectron2's evaluation of the inference module of ``model`` (built here, from the
        weights of this moment: :mod:`pointrend_sem.inference`). During training, a stop signal
        abandons it: no results ({})."""
        try:
            results = super().test(cfg, build_inference_model(model, cfg), evaluators)
        except EvaluationAbandoned:
            logging.getLogger(__name__).info("Evaluation abandoned: training is stopping.")
            return {}
        log_refinement_gain(results, cfg.DATASETS.TEST)
        return results

    @classmethod
    def test_with_TTA(cls, cfg, model):
        """Evaluate with multi-scale + flip TTA (``TEST.AUG``).

        Returns the structure :meth:`test` returns, each result key with a "_TTA" suffix
        (``sem_seg_TTA``, ``coarse_sem_seg_TTA``): ``{key: metrics}`` for one test dataset,
        ``{dataset: {key: metrics}}`` for several. The copy-paste lines print the same names.
        """
        logger = logging.getLogger(__name__)
        logger.info("Running inference with test-time augmentation ...")
        tta_model = SemanticSegmentorWithTTA.from_config(cfg, model)
        results = OrderedDict()
        for dataset_name in cfg.DATASETS.TEST:
            # The TTA model resizes each view itself, from the original image.
            loader = abandoned_on_stop(
                build_detection_test_loader(
                    cfg, dataset_name, mapper=SemSegDatasetMapper(cfg, False, augmentations=[])
                )
            )
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference_TTA", dataset_name)
            evaluator = cls.build_evaluator(cfg, dataset_name, output_folder)
            try:
                outputs = inference_on_dataset(tta_model, loader, evaluator)
            except EvaluationAbandoned:
                logger.info("Evaluation abandoned: training is stopping.")
                return {}
            results[dataset_name] = with_suffix(outputs, TTA_SUFFIX)
            if comm.is_main_process():
                logger.info(
                    f"Evaluation results for {dataset_name} with test-time augmentation in csv "
                    "format:"
                )
                print_csv_format(results[dataset_name])
        if len(results) == 1:
            results = list(results.values())[0]
        log_refinement_gain(results, cfg.DATASETS.TEST, suffix=TTA_SUFFIX)
        return results

    @classmethod
    def build_train_loader(cls, cfg):
        """The resumable train loader (:mod:`pointrend_sem.data.resumable_loader`) over
        :class:`SemSegDatasetMapper`; its workers ignore the stop signals."""
        return build_resumable_train_loader(
            cfg,
            SemSegDatasetMapper(cfg, is_train=True),
            rank=comm.get_rank(),
            world_size=comm.get_world_size(),
            worker_init_fn=ignore_in_worker(parse_signals(cfg.SOLVER.CHECKPOINT_ON_SIGNALS)),
        )

    @classmethod
    def build_test_loader(cls, cfg, dataset_name: str):
        return abandoned_on_stop(
            build_detection_test_loader(
                cfg, dataset_name, mapper=SemSegDatasetMapper(cfg, is_train=False)
            )
        )

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer: torch.optim.Optimizer):
        if cfg.SOLVER.LR_SCHEDULER_NAME == "WarmupPolyLR":
            return build_poly_lr_scheduler(cfg, optimizer)
        return super().build_lr_scheduler(cfg, optimizer)


def abandoned_on_stop(loader):
    """An evaluation ``loader`` that a stop signal during training abandons
    (:class:`AbandonOnStop`), its workers ignoring the signal; ``loader`` as it is outside
    training."""
    signals = active_stop_signals()
    if not signals:
        return loader
    loader.worker_init_fn = ignore_in_worker(signals)
    return AbandonOnStop(loader)


def per_process_batch_norms(model: nn.Module) -> List[str]:
    """Names of the BatchNorm layers of ``model`` whose running statistics each process updates
    from its own batches alone: torch's ``BatchNorm1d/2d/3d`` with ``track_running_stats``, but
    not ``SyncBatchNorm`` or detectron2's ``NaiveSyncBatchNorm`` (statistics of the global batch,
    the same in every process) nor ``FrozenBatchNorm2d`` (never updated)."""
    plain = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, plain)
        and not isinstance(module, NaiveSyncBatchNorm)
        and module.track_running_stats
    ]


def broadcast_buffers(model: nn.Module, world_size: int) -> bool:
    """Whether DistributedDataParallel over ``model`` in ``world_size`` processes should
    broadcast rank 0's buffers: when the model has plain BatchNorm layers
    (:func:`per_process_batch_norms`) and there are several processes. Otherwise each process
    keeps running statistics of its own batches; evaluation then scores each process's shard
    with a different model, and only rank 0's is saved. Logs one line when it broadcasts."""
    names = per_process_batch_norms(model)
    if world_size <= 1 or not names:
        return False
    logging.getLogger(__name__).info(
        f"{len(names)} plain BatchNorm layers (e.g. {names[0]}) in {world_size} processes: "
        "DistributedDataParallel broadcasts rank 0's running statistics at each training forward, "
        "so that every process evaluates and saves the same model. The recipes use SyncBN "
        "(statistics of the global batch), as detectron2's DeepLab does."
    )
    return True


def ddp_arguments(model: nn.Module, device: str, world_size: int) -> Dict:
    """Keyword arguments for detectron2's ``create_ddp_model`` over ``model`` on ``device``
    (``cfg.MODEL.DEVICE``) in ``world_size`` processes: DefaultTrainer's, except
    ``device_ids=None`` on CPU and rank 0's buffers broadcast where :func:`broadcast_buffers`
    says so."""
    kwargs = {"device_ids": None} if torch.device(device).type == "cpu" else {}
    if not broadcast_buffers(model, world_size):
        kwargs["broadcast_buffers"] = False  # DefaultTrainer's choice: buffers stay per process
    # else DistributedDataParallel's default, which broadcasts (not passed: newer torch deprecates
    # broadcast_buffers for forward_sync_buffers, which older torch lacks)
    return kwargs


def with_suffix(results: Dict, suffix: str) -> Dict:
    """``results`` (``{key: metrics}``, as an evaluator returns) with ``suffix`` added to each
    key, in the same order."""
    return OrderedDict((key + suffix, value) for key, value in results.items())


def merge_results(results: Dict, more: Dict) -> Dict:
    """Add ``more`` to ``results`` in place and return it: the results of
    :meth:`Trainer.test_with_TTA` to those of :meth:`Trainer.test`, in their structure,
    ``{key: metrics}`` for one test dataset, ``{dataset: {key: metrics}}`` for several."""
    for key, value in more.items():
        results.setdefault(key, OrderedDict()).update(value)
    return results


def log_refinement_gain(results: Dict, dataset_names: Sequence[str], suffix: str = "") -> None:
    """Log coarse vs. refined mIoU and boundary IoU, when both were evaluated.

    ``results`` is ``{dataset: {"sem_seg": {...}, "coarse_sem_seg": {...}}}`` or, with a single
    test dataset (``dataset_names`` has one name), the inner dict itself; ``suffix`` is that of
    the result keys ("_TTA": ``sem_seg_TTA``, ``coarse_sem_seg_TTA``).
    """
    per_dataset = {dataset_names[0]: results} if len(dataset_names) == 1 else results
    refined_key, coarse_key = "sem_seg" + suffix, "coarse_sem_seg" + suffix
    rows = []
    for dataset, res in per_dataset.items():
        if refined_key not in res or coarse_key not in res:
            continue
        for metric in ("mIoU", "mBoundaryIoU"):
            coarse, refined = res[coarse_key][metric], res[refined_key][metric]
            rows.append(
                [dataset, metric, f"{coarse:.2f}", f"{refined:.2f}", f"{refined - coarse:+.2f}"]
            )
    if rows:
        table = tabulate(  # numbers kept as formatted: two decimals, the gain's sign
            rows,
            headers=["dataset", "metric", "coarse", "PointRend", "gain"],
            tablefmt="pipe",
            disable_numparse=True,
            colalign=("left", "left", "right", "right", "right"),
        )
        tta = " (with test-time augmentation)" if suffix == TTA_SUFFIX else ""
        logging.getLogger(__name__).info(f"What point refinement buys{tta}:\n" + table)
