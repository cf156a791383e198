"""The training data loader, resumable at any iteration with no state of its own.

Everything a training batch holds is a function of (run seed, iteration): the images it takes
and their augmentation. So a run resumed at iteration ``i`` (from any checkpoint: one saved on a
signal, a periodic one, the last before a SIGKILL) reads exactly the batches the uninterrupted
run would have read, whatever the number of DataLoader workers.

* **Order.** The training images form an endless stream; epoch ``e`` of it is a permutation of the
  dataset drawn from ``(seed, e)``. Iteration ``i`` takes the ``G = SOLVER.IMS_PER_BATCH`` stream
  positions ``[i * G, (i + 1) * G)``, and process ``r`` of ``W`` the ``G / W`` consecutive ones
  starting at ``i * G + r * G / W``. The global batch is the same set of samples for any number
  of processes.
* **Augmentation.** Each sample is mapped with Python's, NumPy's and torch's global generators
  seeded from ``(seed, stream position)`` (:func:`sample_randomness`), the caller's generator
  states put back afterwards.
* **Workers.** With ``DATALOADER.NUM_WORKERS = N``, worker ``w`` builds the batches of iterations
  ``start + w, start + w + N, ...``; torch's DataLoader returns them in iteration order. Workers
  ignore the signals that stop training (:mod:`pointrend_sem.engine.stop_signals`): the main
  process decides when to stop.

detectron2's ``build_detection_train_loader`` keeps its order in a sampler's generator and its
augmentation randomness in each worker's NumPy state, so it cannot resume mid-run. This loader
batches in stream order (as mmsegmentation does): ``DATALOADER.ASPECT_RATIO_GROUPING`` is not used
(the recipes' training crops share one size) and ``DATALOADER.SAMPLER_TRAIN`` must be
``TrainingSampler``.
"""

import contextlib
import logging
import multiprocessing
import random
from typing import Callable, Iterator, List, Optional, Sequence

import numpy as np
import torch
from detectron2.data import get_detection_dataset_dicts
from detectron2.data.common import DatasetFromList
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..errors import UserValueError

# the only sampler this loader implements: every image once per epoch, in a shuffled order
SUPPORTED_SAMPLER = "TrainingSampler"


def derived_seed(*numbers: int) -> int:
    """A 63-bit seed that depends on every number of ``numbers`` (NumPy's SeedSequence mixes
    them, so nearby tuples give unrelated seeds)."""
    words = np.random.SeedSequence([int(n) for n in numbers]).generate_state(2, dtype=np.uint32)
    return (int(words[0]) << 31) ^ int(words[1])


def seed_global_generators(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (all of torch's devices) from
    ``seed``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def sample_randomness(seed: int, position: int) -> Iterator[None]:
    """Inside the block, the global generators are seeded from ``(seed, position)``; the states
    they had before come back after it (the main process's training randomness is untouched
    when there are no workers)."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        seed_global_generators(derived_seed(seed, position))
        try:
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)


class SampleOrder:
    """Which dataset index each position of the endless training stream holds: epoch ``e``
    (positions ``[e * n, (e + 1) * n)``) is a permutation of the ``n`` indices drawn from
    ``(seed, e)``."""

    def __init__(self, num_samples: int, seed: int):
        self.num_samples = num_samples
        self.seed = seed
        self._epoch, self._permutation = -1, None

    def __getitem__(self, position: int) -> int:
        epoch, offset = divmod(position, self.num_samples)
        if epoch != self._epoch:
            generator = np.random.default_rng(derived_seed(self.seed, epoch))
            self._epoch, self._permutation = epoch, generator.permutation(self.num_samples)
        return int(self._permutation[offset])


def process_positions(iteration: int, global_batch: int, rank: int, world_size: int) -> range:
    """The stream positions process ``rank`` of ``world_size`` reads at ``iteration``."""
    per_process = global_batch // world_size
    start = iteration * global_batch + rank * per_process
    return range(start, start + per_process)


class TrainingBatches(IterableDataset):
    """This process's batches (lists of mapped dataset dicts) from iteration ``start_iter`` on;
    each DataLoader worker builds every ``num_workers``-th of them."""

    def __init__(
        self,
        dataset,
        mapper: Callable,
        *,
        seed: int,
        start_iter: int,
        global_batch: int,
        rank: int,
        world_size: int,
    ):
        self.dataset = dataset
        self.mapper = mapper
        self.seed = seed
        self.start_iter = start_iter
        self.global_batch = global_batch
        self.rank = rank
        self.world_size = world_size

    def __iter__(self) -> Iterator[List[dict]]:
        worker = get_worker_info()
        worker_id, num_workers = (worker.id, worker.num_workers) if worker else (0, 1)
        order = SampleOrder(len(self.dataset), self.seed)
        iteration = self.start_iter + worker_id
        while True:
            positions = process_positions(iteration, self.global_batch, self.rank, self.world_size)
            yield [self._map(order, position) for position in positions]
            iteration += num_workers

    def _map(self, order: SampleOrder, position: int) -> dict:
        dataset_dict = self.dataset[order[position]]
        with sample_randomness(self.seed, position):
            mapped = self.mapper(dataset_dict)
        if mapped is None:
            raise UserValueError(
                f"The training mapper dropped {dataset_dict.get('file_name', dataset_dict)} "
                "(returned None); the resumable training loader needs every image mapped. "
                "Remove the image from the dataset."
            )
        return mapped


def worker_start_method() -> Optional[str]:
    """ "fork" where the platform has it, else the default. In the processes of detectron2's
    ``launch()`` (started by spawn, which then becomes their default) workers would otherwise be
    spawned too, each importing torch and this package again: 20 s before the first batch of a
    2-process run on 2 CPU cores, against 0.3 s forked, as in a single process."""
    return "fork" if "fork" in multiprocessing.get_all_start_methods() else None


def _batch_as_is(batch):
    return batch


class ResumableTrainLoader:
    """An endless iterable of this process's training batches (lists of dataset dicts, as
    detectron2's train loader yields) from iteration :attr:`start_iter` (0) of the run of
    :attr:`seed`. The trainer sets both (:meth:`start_at`) after resuming, before its first
    step takes ``iter()``."""

    def __init__(
        self,
        dataset_dicts: Sequence[dict],
        mapper: Callable,
        *,
        seed: int,
        global_batch: int,
        num_workers: int,
        rank: int,
        world_size: int,
        worker_init_fn: Optional[Callable[[int], None]] = None,
    ):
        self.dataset = DatasetFromList(list(dataset_dicts), copy=False, serialize=True)
        self.mapper = mapper
        self.global_batch = global_batch
        self.num_workers = num_workers
        self.rank = rank
        self.world_size = world_size
        self.worker_init_fn = worker_init_fn
        self.seed = seed
        self.start_iter = 0

    def start_at(self, iteration: int, seed: int) -> None:
        """Read the batches of ``iteration`` on, for the run of ``seed``."""
        self.start_iter, self.seed = iteration, seed

    def __iter__(self) -> Iterator[List[dict]]:
        batches = TrainingBatches(
            self.dataset,
            self.mapper,
            seed=self.seed,
            start_iter=self.start_iter,
            global_batch=self.global_batch,
            rank=self.rank,
            world_size=self.world_size,
        )
        loader = DataLoader(
            batches,
            batch_size=None,
            num_workers=self.num_workers,
            multiprocessing_context=worker_start_method() if self.num_workers > 0 else None,
            collate_fn=_batch_as_is,
            worker_init_fn=self.worker_init_fn,
            prefetch_factor=2 if self.num_workers > 0 else None,
            # the workers' base seed (unused: samples are seeded by position) is drawn from this
            # generator, not from torch's global one, whose state the training step owns
            generator=torch.Generator().manual_seed(self.seed),
        )
        return iter(loader)


def build_resumable_train_loader(
    cfg, mapper: Callable, *, rank: int, world_size: int, worker_init_fn=None
) -> ResumableTrainLoader:
    """The :class:`ResumableTrainLoader` of ``cfg.DATASETS.TRAIN`` (what
    ``build_detection_train_loader`` reads: the datasets, ``SOLVER.IMS_PER_BATCH``,
    ``DATALOADER.NUM_WORKERS``), for the run of ``cfg.SEED`` (of a random seed if < 0)."""
    sampler = cfg.DATALOADER.SAMPLER_TRAIN
    if sampler != SUPPORTED_SAMPLER:
        raise UserValueError(
            f"DATALOADER.SAMPLER_TRAIN is {sampler!r}; pointrend-sem's resumable training loader "
            f"samples every image once per epoch: set it to {SUPPORTED_SAMPLER!r}."
        )
    dataset_dicts = get_detection_dataset_dicts(cfg.DATASETS.TRAIN, filter_empty=False)
    if cfg.DATALOADER.ASPECT_RATIO_GROUPING:
        logging.getLogger(__name__).debug(
            "DATALOADER.ASPECT_RATIO_GROUPING is not used: batches follow the sample order."
        )
    return ResumableTrainLoader(
        dataset_dicts,
        mapper,
        seed=cfg.SEED if cfg.SEED >= 0 else random.SystemRandom().randrange(2**31),
        global_batch=cfg.SOLVER.IMS_PER_BATCH,
        num_workers=cfg.DATALOADER.NUM_WORKERS,
        rank=rank,
        world_size=world_size,
        worker_init_fn=worker_init_fn,
    )
