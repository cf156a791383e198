"""Hooks that make a training run stoppable and resumable exactly.

* :class:`ExactResumption`: the run's seed (saved in every checkpoint) and the iteration decide
  all randomness. The train loader starts at the resumed iteration
  (:mod:`pointrend_sem.data.resumable_loader`), and before each iteration Python's, NumPy's and
  torch's generators are seeded from (seed, rank, iteration): the point head's sampling of
  training points comes back too. On CPU, a run stopped at any iteration and resumed ends with
  the weights of the uninterrupted run, bit for bit.
* :class:`CheckpointOnSignal`: the first of ``SOLVER.CHECKPOINT_ON_SIGNALS`` makes every process
  finish its iteration; rank 0 saves ``model_<iteration>.pth`` (atomically, and tagged as the
  last checkpoint), then all processes exit with
  :data:`~pointrend_sem.engine.stop_signals.STOPPED_EXIT_CODE`. An evaluation in progress is
  abandoned (:class:`AbandonOnStop`), its results not written.

What a checkpoint holds: the model, the optimizer, the LR scheduler, the iteration, the
step trainer's state (AMP's gradient scaler) and this hook's ``{"seed", "global_batch"}``. That
is all: the data loader and the generators have no state that the iteration does not give.
"""

import logging
import random
from typing import Optional, Sequence

import torch
import torch.distributed as dist
from detectron2.engine import HookBase
from detectron2.utils import comm

from ..data.resumable_loader import derived_seed, seed_global_generators
from .stop_signals import (
    STOPPED_EXIT_CODE,
    StopSignals,
    resume_command,
    start_resource_tracker,
)

logger = logging.getLogger(__name__)

# the stop request of the training running in this process (signals are the process's), read by
# the evaluation loaders; None outside training
_active_stop: Optional["CheckpointOnSignal"] = None


class TrainingStopped(SystemExit):
    """Training stopped on a signal after saving its checkpoint; the process exits with
    :data:`STOPPED_EXIT_CODE` (a ``SystemExit``, so detectron2's loop does not report it as a
    failure)."""

    def __init__(self):
        super().__init__(STOPPED_EXIT_CODE)


class EvaluationAbandoned(Exception):
    """An evaluation stopped half-way because training is stopping on a signal."""


class ExactResumption(HookBase):
    """Seeds the run and starts the train loader where the run is (see the module's doc).

    ``data_loader`` is the trainer's; it resumes exactly if it has ``start_at(iteration, seed)``
    (:class:`~pointrend_sem.data.resumable_loader.ResumableTrainLoader`). ``seed`` is
    ``cfg.SEED``: < 0 draws one at the start of the run, which the checkpoints keep. A resumed
    run uses its checkpoint's seed.
    """

    def __init__(self, data_loader, seed: int, global_batch: int):
        self._data_loader = data_loader
        self._seed_from_config = seed
        self._global_batch = global_batch
        self.seed: Optional[int] = None

    def state_dict(self):
        return {"seed": self.seed, "global_batch": self._global_batch}

    def load_state_dict(self, state):
        self.seed = state["seed"]
        if state.get("global_batch") != self._global_batch:
            logger.warning(
                f"The checkpoint was trained with SOLVER.IMS_PER_BATCH {state.get('global_batch')}"
                f", this run has {self._global_batch}: it goes on with other batches than the "
                "interrupted run would have had."
            )

    def before_train(self):
        if self.seed is None:
            seed = self._seed_from_config
            if seed < 0:
                seed = random.SystemRandom().randrange(2**31)
            self.seed = comm.all_gather(seed)[0]  # rank 0's
        elif 0 <= self._seed_from_config != self.seed:
            logger.warning(
                f"Resuming the run of seed {self.seed} (its checkpoint's), not SEED "
                f"{self._seed_from_config}."
            )
        start = self.trainer.start_iter
        if hasattr(self._data_loader, "start_at"):
            self._data_loader.start_at(start, self.seed)
            logger.info(
                f"Run seed {self.seed}: data order, augmentation and point sampling follow from it "
                f"and the iteration (training starts at iteration {start})."
            )
        else:
            logger.warning(
                f"The train loader ({type(self._data_loader).__name__}) cannot start at an "
                "iteration: a resumed run reads other batches than the interrupted one would have."
            )

    def before_step(self):
        seed_global_generators(derived_seed(self.seed, comm.get_rank(), self.trainer.iter))


class CheckpointOnSignal(HookBase):
    """Stops training with a checkpoint on the first of ``signals`` (see the module's doc).
    Register it after the hooks whose ``after_step`` must complete the iteration (LR scheduler,
    periodic checkpointer, evaluation) and before detectron2's ``PeriodicWriter``
    (``Trainer.build_hooks`` says why). The trainer stops the train loader's workers when
    training ends, whichever way (``Trainer.train``): they ignore the stop signals."""

    def __init__(self, signals: Sequence, checkpointer):
        self.stop = StopSignals(signals)
        self._checkpointer = checkpointer
        self._group = None
        self._handled = False
        self.abandoned_evaluation = False

    def before_train(self):
        global _active_stop
        if not self.stop.signals:
            return
        if comm.get_world_size() > 1 and dist.get_backend() != "gloo":
            self._group = dist.new_group(backend="gloo")  # the flag is a CPU tensor
        start_resource_tracker(self.stop.signals)
        self.stop.install()
        _active_stop = self

    def requested_everywhere(self) -> bool:
        """Whether any process received a stop signal (a collective: every process calls it at
        the same point)."""
        if comm.get_world_size() == 1:
            return self.stop.requested
        flag = torch.tensor([1 if self.stop.requested else 0])
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self._group)
        return bool(flag.item())

    def common_count(self, count: int) -> int:
        """The smallest ``count`` over the processes (a collective)."""
        if comm.get_world_size() == 1:
            return count
        value = torch.tensor([count])
        dist.all_reduce(value, op=dist.ReduceOp.MIN, group=self._group)
        return int(value.item())

    def after_step(self):
        if not self.stop.signals or self.trainer.iter + 1 >= self.trainer.max_iter:
            return  # the last iteration: training ends normally
        if not self.requested_everywhere():
            return
        iteration = self.trainer.iter
        name = f"model_{iteration:07d}"
        if comm.is_main_process():
            self._checkpointer.save(name, iteration=iteration)
        self._finish_stop(f"stopped at iteration {iteration}, saved {name}.pth")

    def after_train(self):
        global _active_stop
        _active_stop = None
        if self.stop.requested and not self._handled and self.abandoned_evaluation:
            self._finish_stop("training had ended; the final evaluation was abandoned")
        self.stop.uninstall()

    def _finish_stop(self, what: str) -> None:
        """Log, wait for every process (all checkpoints written), let a launcher's own handler
        of the signal run (submitit: requeue the job), and exit with the stopped status."""
        self._handled = True
        if comm.is_main_process():
            received = self.stop.received.name if self.stop.received else "A stop signal"
            logger.info(
                f"{received} (in one process or more): {what}. Exit status "
                f"{STOPPED_EXIT_CODE}. Resume with: {resume_command()}"
            )
        comm.synchronize()  # every checkpoint is written
        self.stop.run_previous_handler()
        # the signals' own handling again: when one process has exited, torch's
        # start_processes terminates the others with SIGTERM, which must end them now
        self.stop.uninstall()
        raise TrainingStopped()


class AbandonOnStop:
    """An evaluation data loader that ends the evaluation (:class:`EvaluationAbandoned`) when a
    process of the training received a stop signal. All processes check at the same batches
    (the first ``min`` over processes of their batch counts), so they abandon together."""

    def __init__(self, loader):
        self.loader = loader

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        stop = _active_stop
        if stop is None:
            yield from self.loader
            return
        checked = stop.common_count(len(self.loader))
        for index, batch in enumerate(self.loader):
            if index < checked and stop.requested_everywhere():
                stop.abandoned_evaluation = True
                raise EvaluationAbandoned()
            yield batch


def active_stop_signals() -> Sequence:
    """The signals that stop the training running in this process (none outside training)."""
    return _active_stop.stop.signals if _active_stop is not None else []
