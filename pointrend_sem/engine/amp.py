"""Mixed-precision training (``SOLVER.AMP.ENABLED``): bf16 autocast on CPU, and resuming across
AMP on/off on either device.

detectron2's :class:`AMPTrainer` asserts CUDA at its first step (fp16 autocast with a gradient
scaler). On CPU, :class:`CPUAMPTrainer` runs each step under ``torch.autocast("cpu",
torch.bfloat16)`` instead; bf16 has fp32's exponent range, so no gradient scaler is needed.
Parameters, gradients, optimizer state and checkpoints stay fp32.

The Trainer builds its step trainer with :func:`build_step_trainer` (through the
``build_step_trainer`` hook of :class:`~pointrend_sem.engine.defaults.DefaultTrainerWithHooks`):
with AMP, a :class:`CPUAMPTrainer` for a CPU model, and for a CUDA model a
:class:`ResumableAMPTrainer`: detectron2's fp16 step with its gradient scaler, which also resumes
from a checkpoint saved without AMP (no ``grad_scaler`` state: the scaler starts afresh).
The reverse needs nothing: a checkpoint of an AMP run loaded by a trainer without AMP (or by
:class:`CPUAMPTrainer`, which has no scaler) leaves its ``grad_scaler`` entry unread, as
detectron2's ``SimpleTrainer.load_state_dict`` reads only the keys it knows.

A CPU that cannot run bf16 convolutions (:mod:`pointrend_sem.capabilities`: below AVX-512, or
oneDNN off) refuses ``SOLVER.AMP.ENABLED`` with one line; one that only emulates bf16 trains
with a warning that fp32 is faster there.
"""

import logging

import torch
from detectron2.engine import AMPTrainer, SimpleTrainer

from ..capabilities import precision_support
from ..errors import UserValueError

logger = logging.getLogger(__name__)


class CPUAMPTrainer(SimpleTrainer):
    """detectron2's :class:`SimpleTrainer` step (forward, backward, optimizer step) under CPU
    autocast in ``precision`` (bf16), without a gradient scaler."""

    def __init__(self, model, data_loader, optimizer, precision: torch.dtype = torch.bfloat16):
        super().__init__(model, data_loader, optimizer)
        self.precision = precision

    def run_step(self):
        # Autocast changes only the ops it lists (convs, matmuls run in bf16, losses and norms in
        # fp32); backward runs each op in the dtype of its forward, the optimizer in fp32.
        with torch.autocast("cpu", dtype=self.precision):
            super().run_step()


class ResumableAMPTrainer(AMPTrainer):
    """detectron2's :class:`AMPTrainer` (CUDA, fp16 autocast with a gradient scaler) that also
    resumes from a checkpoint saved without ``SOLVER.AMP.ENABLED``, where detectron2's
    ``load_state_dict`` fails with ``KeyError: 'grad_scaler'``."""

    def __init__(self, model, data_loader, optimizer, grad_scaler=None, **kwargs):
        """As :class:`AMPTrainer`; without ``grad_scaler``, a new ``torch.amp.GradScaler("cuda")``
        (detectron2 builds the deprecated ``torch.cuda.amp.GradScaler``)."""
        if grad_scaler is None:
            grad_scaler = torch.amp.GradScaler("cuda")
        super().__init__(model, data_loader, optimizer, grad_scaler=grad_scaler, **kwargs)

    def load_state_dict(self, state_dict):
        if "grad_scaler" in state_dict:
            super().load_state_dict(state_dict)
            return
        SimpleTrainer.load_state_dict(self, state_dict)  # iteration, hooks, optimizer
        logger.info(
            "The checkpoint has no gradient scaler state (saved without SOLVER.AMP.ENABLED): "
            "the scaler starts afresh, and its first steps may be skipped while it finds its "
            "scale, as at the start of an AMP run."
        )


def on_cpu(model) -> bool:
    """Whether ``model`` (or the module a DistributedDataParallel wraps) is on the CPU."""
    param = next(model.parameters(), None)
    return param is None or param.device.type == "cpu"


def build_step_trainer(model, data_loader, optimizer, amp: bool) -> SimpleTrainer:
    """The step trainer over ``model`` (or the DistributedDataParallel around it), ``data_loader``
    and ``optimizer``: detectron2's :class:`SimpleTrainer` without ``amp``
    (``SOLVER.AMP.ENABLED``), else a :class:`CPUAMPTrainer` for a CPU model (once
    :func:`check_cpu_amp` allows it) or a :class:`ResumableAMPTrainer` for a CUDA one."""
    if not amp:
        return SimpleTrainer(model, data_loader, optimizer)
    if on_cpu(model):
        check_cpu_amp()
        logger.info("SOLVER.AMP.ENABLED on CPU: bf16 autocast without a gradient scaler.")
        return CPUAMPTrainer(model, data_loader, optimizer)
    return ResumableAMPTrainer(model, data_loader, optimizer)


def check_cpu_amp() -> None:
    """Raise when this CPU cannot train in bf16; warn when it only emulates bf16.

    Raises:
        UserValueError: naming what the CPU lacks and ``SOLVER.AMP.ENABLED False``.
    """
    support = precision_support(torch.bfloat16, "cpu")
    if not support.runs:
        raise UserValueError(
            f"SOLVER.AMP.ENABLED trains in bf16 on a CPU, which this one cannot run: "
            f"{support.detail}. Set SOLVER.AMP.ENABLED False to train in fp32."
        )
    if not support.native:
        logger.warning(
            f"SOLVER.AMP.ENABLED on this CPU runs emulated bf16: {support.detail}. "
            "SOLVER.AMP.ENABLED False (fp32) is faster here."
        )
