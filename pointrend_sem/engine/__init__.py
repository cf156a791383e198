"""Training and evaluation engine."""

from ..checkpoint import check_weights_file, checkpoint_to_read, explain_unreadable_checkpoint
from .config_errors import explain_config_errors
from .lr_schedule import build_poly_lr_scheduler, build_warmup_poly_multiplier
from .setup import add_opts_argument, setup
from .trainer import EVALUATOR_BUILDERS, TTA_SUFFIX, Trainer, merge_results

__all__ = [
    "add_opts_argument",
    "build_poly_lr_scheduler",
    "build_warmup_poly_multiplier",
    "check_weights_file",
    "checkpoint_to_read",
    "explain_config_errors",
    "explain_unreadable_checkpoint",
    "setup",
    "EVALUATOR_BUILDERS",
    "TTA_SUFFIX",
    "Trainer",
    "merge_results",
]
