"""Training and evaluation engine."""

from .lr_schedule import build_poly_lr_scheduler, build_warmup_poly_multiplier
from .setup import setup
from .trainer import EVALUATOR_BUILDERS, Trainer

__all__ = [
    "build_poly_lr_scheduler",
    "build_warmup_poly_multiplier",
    "setup",
    "EVALUATOR_BUILDERS",
    "Trainer",
]
