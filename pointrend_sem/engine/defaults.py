"""The one adapter between this package and detectron2's :class:`DefaultTrainer`.

``DefaultTrainer.__init__`` (detectron2 v0.6, engine/defaults.py) builds three things with no hook
to override: the DistributedDataParallel wrapper (``create_ddp_model(model,
broadcast_buffers=False)``), the step trainer (``AMPTrainer if cfg.SOLVER.AMP.ENABLED else
SimpleTrainer``) and the checkpointer (a ``DetectionCheckpointer``). The Trainer needs other ones:
on a CPU, DistributedDataParallel refuses the ``device_ids`` detectron2 gives it, and
:class:`AMPTrainer` asserts CUDA at its first step. :class:`DefaultTrainerWithHooks` is
``DefaultTrainer`` whose constructor builds those three through methods a subclass overrides,
as it overrides ``build_model`` or ``build_hooks``; their defaults build what detectron2 builds.

Its ``__init__`` is ``DefaultTrainer.__init__`` step for step (same order, same attributes), and
the one place this package sets a private attribute of detectron2's: ``_trainer``, the step
trainer that ``DefaultTrainer.run_step``, ``state_dict``, ``load_state_dict`` and the ``model``,
``data_loader``, ``optimizer`` properties read. Keep it in step with the installed detectron2:
tests/test_trainer.py checks that it builds the attributes ``DefaultTrainer`` builds.
"""

import logging
import weakref

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import (
    AMPTrainer,
    DefaultTrainer,
    SimpleTrainer,
    TrainerBase,
    create_ddp_model,
)
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger


class DefaultTrainerWithHooks(DefaultTrainer):
    """:class:`DefaultTrainer` with three more hooks: :meth:`build_ddp_model`,
    :meth:`build_step_trainer` and :meth:`build_checkpointer` (see the module's doc)."""

    def __init__(self, cfg):
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        model = self.build_ddp_model(cfg, model)
        self._trainer = self.build_step_trainer(cfg, model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = self.build_checkpointer(cfg, model)
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    @classmethod
    def build_ddp_model(cls, cfg, model):
        """``model`` wrapped for several processes (returned as it is for one), as detectron2
        wraps it."""
        return create_ddp_model(model, broadcast_buffers=False)

    @classmethod
    def build_step_trainer(cls, cfg, model, data_loader, optimizer):
        """The trainer of one step (forward, backward, optimizer step), as detectron2 chooses
        it."""
        return (AMPTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer)(
            model, data_loader, optimizer
        )

    def build_checkpointer(self, cfg, model):
        """The checkpointer of ``model`` and of this trainer's state (iteration, optimizer,
        scheduler, ...), saving into ``cfg.OUTPUT_DIR``, as detectron2 builds it."""
        return DetectionCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
