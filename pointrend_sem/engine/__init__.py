"""Training and evaluation engine."""

from .lr_schedule import build_poly_lr_scheduler, build_warmup_poly_multiplier
from .setup import check_weights_file, setup
from .trainer import EVALUATOR_BUILDERS, Trainer

__all__ = [
    "build_poly_lr_scheduler",
    "build_warmup_poly_multiplier",
    "check_weights_file",
    "setup",
    "EVALUATOR_BUILDERS",
    "Trainer",
]
