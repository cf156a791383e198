"""Config setup shared by train_net.py and the tools."""

import logging

import torch
from detectron2.config import get_cfg
from detectron2.engine import default_setup

from ..config import add_pointrend_sem_config


def setup(args, *, log: bool = True):
    """Config from ``args.config_file`` and ``args.opts``; frozen.

    Without CUDA, ``MODEL.DEVICE`` falls back to "cpu" so every command runs on a CPU-only
    machine with no extra flag. With ``log``, detectron2's ``default_setup`` prepares
    OUTPUT_DIR, logging and seeding.
    """
    cfg = get_cfg()
    add_pointrend_sem_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logging.getLogger(__name__).info("CUDA is not available: MODEL.DEVICE set to cpu.")
        cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    if log:
        default_setup(cfg, args)
    return cfg
