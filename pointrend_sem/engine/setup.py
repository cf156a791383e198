"""Config setup shared by train_net.py and the tools: :func:`setup` (merge, CPU fallback,
checks, logging) and the ``--opts`` argument it reads."""

import argparse
import logging
import os

from detectron2.config import get_cfg
from detectron2.engine import default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..capabilities import runnable_device
from ..config import add_pointrend_sem_config
from ..errors import UserFileNotFoundError
from ..inference import resolve_precision
from .amp import check_cpu_amp
from .config_checks import check_config_values
from .config_errors import explain_config_errors


def add_opts_argument(parser) -> None:
    """``--opts KEY VALUE ...``: config overrides of a script that takes its other options as
    flags (demo/demo.py, tools/visualize_points.py); read by :func:`setup` as ``args.opts``."""
    parser.add_argument(
        "--opts",
        default=[],
        nargs=argparse.REMAINDER,
        help="config overrides as KEY VALUE pairs, e.g. MODEL.WEIGHTS model.pth",
    )


def setup(args, *, log: bool = True):
    """Config from ``args.config_file`` and ``args.opts``; frozen.

    Without CUDA, ``MODEL.DEVICE`` falls back to "cpu" so every command runs on a CPU-only
    machine with no extra flag. With ``log``, detectron2's ``default_setup`` prepares
    OUTPUT_DIR, logging and seeding. A ``TEST.PRECISION`` (or ``SOLVER.AMP.ENABLED`` for
    training) that this machine cannot run stops it (:mod:`pointrend_sem.capabilities`), and so
    do values that cannot work with a
    :class:`UserValueError` naming the key (:func:`check_config_values`; the keys only training
    reads are checked when ``args.eval_only`` is False, as for train_net.py without --eval-only).
    """
    cfg = get_cfg()
    add_pointrend_sem_config(cfg)
    if not os.path.isfile(args.config_file):
        raise UserFileNotFoundError(
            f"Config file {args.config_file} does not exist; the recipes are in configs/."
        )
    with explain_config_errors(cfg, args.config_file):
        cfg.merge_from_file(args.config_file)
    with explain_config_errors(cfg, "the command line"):
        cfg.merge_from_list(args.opts)
    notes = []
    if runnable_device(cfg.MODEL.DEVICE) != cfg.MODEL.DEVICE:
        notes.append(f"{cfg.MODEL.DEVICE} is not available: MODEL.DEVICE set to cpu.")
        cfg.MODEL.DEVICE = "cpu"
    if cfg.MODEL.DEVICE == "cpu" and comm.get_world_size() > 1:
        # torch's SyncBatchNorm needs GPUs; detectron2's NaiveSyncBatchNorm all-reduces the
        # batch statistics over any backend (gloo on CPU) with the same result.
        nodes = (cfg.MODEL.RESNETS, cfg.MODEL.FPN, cfg.MODEL.SEM_SEG_HEAD)
        if any(node.NORM == "SyncBN" for node in nodes):
            for node in nodes:
                node.NORM = "naiveSyncBN" if node.NORM == "SyncBN" else node.NORM
            notes.append("CPU multi-process run: SyncBN replaced by naiveSyncBN.")
    # train_net.py's arguments tell training from evaluation; the tools only evaluate or predict
    check_config_values(cfg, training=not getattr(args, "eval_only", True))
    cfg.freeze()
    if log:
        default_setup(cfg, args)
        # detectron2 sets up its own loggers; this package's messages go to the same places
        setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="pointrend_sem")
    for note in notes:
        logging.getLogger(__name__).info(note)
    # a precision this machine cannot run stops here, before any data or weights are read
    resolve_precision(cfg.TEST.PRECISION, cfg.MODEL.DEVICE)
    if (
        cfg.SOLVER.AMP.ENABLED
        and cfg.MODEL.DEVICE == "cpu"
        and not getattr(args, "eval_only", True)
    ):
        check_cpu_amp()
    return cfg
