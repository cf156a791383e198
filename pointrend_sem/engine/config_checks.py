"""Config values that cannot work, refused before a run starts, with the fix."""

from detectron2.utils import comm

from ..errors import UserValueError
from .stop_signals import parse_signals


def check_config_values(cfg, training: bool) -> None:
    """Raise a :class:`UserValueError` naming the first config value that cannot work, and the
    fix. Always: ``MODEL.SEM_SEG_HEAD.NUM_CLASSES`` >= 1, ``DATALOADER.NUM_WORKERS`` >= 0. With
    ``training`` (the keys only training reads): ``SOLVER.IMS_PER_BATCH`` >= 1 and a multiple of
    the number of processes (of ``SOLVER.REFERENCE_WORLD_SIZE`` when set, which detectron2 scales
    it from), ``SOLVER.BASE_LR`` > 0, ``SOLVER.MAX_ITER`` >= 0, ``SOLVER.CHECKPOINT_PERIOD`` >= 1,
    ``TEST.EVAL_PERIOD`` >= 0, signal names in ``SOLVER.CHECKPOINT_ON_SIGNALS``."""
    problems = []
    if cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES < 1:
        problems.append(
            f"MODEL.SEM_SEG_HEAD.NUM_CLASSES is {cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES}: set it to "
            "the number of classes of the dataset (1 for a one-logit binary model)."
        )
    if cfg.DATALOADER.NUM_WORKERS < 0:
        problems.append(
            f"DATALOADER.NUM_WORKERS is {cfg.DATALOADER.NUM_WORKERS}: set it to 0 (load the data "
            "in the main process) or to a number of worker processes."
        )
    if training:
        solver = cfg.SOLVER
        processes = solver.REFERENCE_WORLD_SIZE or comm.get_world_size()
        if solver.REFERENCE_WORLD_SIZE:
            divisor = f"SOLVER.REFERENCE_WORLD_SIZE ({processes}, which detectron2 scales it from)"
        else:
            divisor = f"the number of processes ({processes})"
        if solver.IMS_PER_BATCH < 1:
            problems.append(
                f"SOLVER.IMS_PER_BATCH is {solver.IMS_PER_BATCH}: it is the number of images of "
                f"an iteration, all processes together; set it to 1 or more, a multiple of "
                f"{divisor}."
            )
        elif solver.IMS_PER_BATCH % processes:
            problems.append(
                f"SOLVER.IMS_PER_BATCH is {solver.IMS_PER_BATCH}, not a multiple of {divisor}: "
                "every process takes the same share of a batch; set it to a multiple of "
                f"{processes}, e.g. {-(-solver.IMS_PER_BATCH // processes) * processes}."
            )
        if solver.BASE_LR <= 0:
            problems.append(
                f"SOLVER.BASE_LR is {solver.BASE_LR}: the weights would not learn; set it to a "
                "positive learning rate (the recipes use 0.01)."
            )
        if solver.MAX_ITER < 0:
            problems.append(
                f"SOLVER.MAX_ITER is {solver.MAX_ITER}: set it to the number of training "
                "iterations, 0 or more."
            )
        if solver.CHECKPOINT_PERIOD < 1:
            problems.append(
                f"SOLVER.CHECKPOINT_PERIOD is {solver.CHECKPOINT_PERIOD}: set it to a number of "
                "iterations, 1 or more (a checkpoint is also saved at the end)."
            )
        if cfg.TEST.EVAL_PERIOD < 0:
            problems.append(
                f"TEST.EVAL_PERIOD is {cfg.TEST.EVAL_PERIOD}: set it to a number of iterations, "
                "or to 0 to evaluate only at the end of training."
            )
        parse_signals(solver.CHECKPOINT_ON_SIGNALS)  # raises, naming the key, on a wrong name
    if problems:
        raise UserValueError(problems[0])
