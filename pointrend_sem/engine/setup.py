"""Config setup shared by train_net.py and the tools."""

import contextlib
import difflib
import logging
import os

import torch
from detectron2.config import get_cfg
from detectron2.engine import default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..config import add_pointrend_sem_config


def _all_keys(node, prefix: str = ""):
    for key, value in node.items():
        if isinstance(value, dict):
            yield from _all_keys(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"


@contextlib.contextmanager
def explain_unknown_keys(cfg, source: str):
    """Turn yacs' "Non-existent (config) key" errors into a KeyError naming the source and
    similar keys."""
    try:
        yield
    except (KeyError, AssertionError) as e:
        message = str(e.args[0]) if e.args else ""
        if not message.startswith(("Non-existent config key: ", "Non-existent key: ")):
            raise
        key = message.split(": ", 1)[1]
        close = difflib.get_close_matches(key, list(_all_keys(cfg)), n=3, cutoff=0.6)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise KeyError(
            f"Unknown config key {key} in {source}.{hint} Keys are defined by detectron2's "
            "config/defaults.py and pointrend_sem/config.py."
        ) from None


def check_weights_file(weights: str) -> None:
    """Raise when ``MODEL.WEIGHTS`` names a local file that does not exist (URLs and
    ``detectron2://`` paths are left to detectron2's checkpointer, which downloads them)."""
    if weights and "://" not in weights and not os.path.isfile(weights):
        raise FileNotFoundError(
            f"MODEL.WEIGHTS {weights} does not exist. Obtain it (README, 'Pretrained "
            "backbones'), point MODEL.WEIGHTS at another file, or train from scratch with "
            'MODEL.WEIGHTS "".'
        )


def setup(args, *, log: bool = True):
    """Config from ``args.config_file`` and ``args.opts``; frozen.

    Without CUDA, ``MODEL.DEVICE`` falls back to "cpu" so every command runs on a CPU-only
    machine with no extra flag. With ``log``, detectron2's ``default_setup`` prepares
    OUTPUT_DIR, logging and seeding.
    """
    cfg = get_cfg()
    add_pointrend_sem_config(cfg)
    if not os.path.isfile(args.config_file):
        raise FileNotFoundError(
            f"Config file {args.config_file} does not exist; the recipes are in configs/."
        )
    with explain_unknown_keys(cfg, args.config_file):
        cfg.merge_from_file(args.config_file)
    with explain_unknown_keys(cfg, "the command line"):
        cfg.merge_from_list(args.opts)
    notes = []
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        notes.append("CUDA is not available: MODEL.DEVICE set to cpu.")
        cfg.MODEL.DEVICE = "cpu"
    if cfg.MODEL.DEVICE == "cpu" and comm.get_world_size() > 1:
        # torch's SyncBatchNorm needs GPUs; detectron2's NaiveSyncBatchNorm all-reduces the
        # batch statistics over any backend (gloo on CPU) with the same result.
        nodes = (cfg.MODEL.RESNETS, cfg.MODEL.FPN, cfg.MODEL.SEM_SEG_HEAD)
        if any(node.NORM == "SyncBN" for node in nodes):
            for node in nodes:
                node.NORM = "naiveSyncBN" if node.NORM == "SyncBN" else node.NORM
            notes.append("CPU multi-process run: SyncBN replaced by naiveSyncBN.")
    cfg.freeze()
    if log:
        default_setup(cfg, args)
        # detectron2 sets up its own loggers; this package's messages go to the same places
        setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="pointrend_sem")
    for note in notes:
        logging.getLogger(__name__).info(note)
    return cfg
