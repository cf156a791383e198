"""The poly learning-rate schedule of the published recipes, on fvcore's parameter schedulers."""

import torch
from detectron2.solver import LRMultiplier
from fvcore.common.param_scheduler import (
    CompositeParamScheduler,
    LinearParamScheduler,
    ParamScheduler,
    PolynomialDecayParamScheduler,
)


class PolynomialDecayWithFloorParamScheduler(ParamScheduler):
    """fvcore's polynomial decay lifted onto a floor:
    ``floor + (base - floor) * (1 - where) ** power`` (mmengine's ``PolyLR`` with ``eta_min``),
    held at ``base * constant_ending`` once ``(1 - where) ** power`` falls below
    ``constant_ending`` (detectron2 DeepLab's ``POLY_LR_CONSTANT_ENDING``; 0: never).
    """

    def __init__(self, base_value: float, power: float, floor: float, constant_ending=0.0):
        self._poly = PolynomialDecayParamScheduler(base_value - floor, power)
        self._base, self._power = base_value, power
        self._floor, self._constant_ending = floor, constant_ending

    def __call__(self, where: float) -> float:
        if self._constant_ending > 0 and (1 - where) ** self._power < self._constant_ending:
            return self._base * self._constant_ending
        return self._floor + self._poly(where)


def build_warmup_poly_multiplier(
    max_iter: int,
    warmup_iters: int,
    warmup_factor: float,
    power: float,
    end_ratio: float,
    constant_ending: float = 0.0,
) -> ParamScheduler:
    """LR multiplier over training progress in [0, 1).

    Linear warm-up from ``warmup_factor`` to 1 over ``warmup_iters``, then poly decay from 1 to
    ``end_ratio`` (= min lr / base lr) over the remaining iterations, as mmsegmentation's
    ``LinearLR(start_factor, end=warmup_iters)`` followed by
    ``PolyLR(eta_min, begin=warmup_iters)``; ``constant_ending`` as
    :class:`PolynomialDecayWithFloorParamScheduler`.
    """
    poly = PolynomialDecayWithFloorParamScheduler(1.0, power, end_ratio, constant_ending)
    warmup_length = min(warmup_iters / max_iter, 1.0)
    if warmup_length == 0:
        return poly
    if warmup_length == 1:  # warm-up covers all of training
        return LinearParamScheduler(warmup_factor, 1.0)
    return CompositeParamScheduler(
        [LinearParamScheduler(warmup_factor, 1.0), poly],
        lengths=[warmup_length, 1 - warmup_length],
        interval_scaling=["rescaled", "rescaled"],
    )


def build_poly_lr_scheduler(cfg, optimizer: torch.optim.Optimizer) -> LRMultiplier:
    """``SOLVER.LR_SCHEDULER_NAME: "WarmupPolyLR"``: ``SOLVER.POLY_LR_POWER``,
    ``BASE_LR_END`` and DeepLab's ``POLY_LR_CONSTANT_ENDING`` (see ``pointrend_sem/config.py``)."""
    solver = cfg.SOLVER
    if solver.WARMUP_METHOD != "linear":
        raise ValueError(
            f"SOLVER.WARMUP_METHOD={solver.WARMUP_METHOD!r} is not supported by WarmupPolyLR; "
            "use 'linear'."
        )
    multiplier = build_warmup_poly_multiplier(
        solver.MAX_ITER,
        solver.WARMUP_ITERS,
        solver.WARMUP_FACTOR,
        solver.POLY_LR_POWER,
        solver.BASE_LR_END / solver.BASE_LR,
        solver.POLY_LR_CONSTANT_ENDING,
    )
    return LRMultiplier(optimizer, multiplier=multiplier, max_iter=solver.MAX_ITER)
