"""Config setup shared by train_net.py and the tools."""

import argparse
import contextlib
import difflib
import logging
import os
import re
from typing import Iterator, Optional, Tuple
from urllib.parse import urlparse
from urllib.request import url2pathname

import yaml
from detectron2.config import get_cfg
from detectron2.engine import default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..capabilities import runnable_device
from ..config import add_pointrend_sem_config
from ..errors import UserError, UserFileNotFoundError, UserKeyError, UserValueError
from ..modeling.precision import resolve_precision
from ..safe_load import TRUST_ENV, UntrustedCheckpointError, load_weights_file
from .amp import check_cpu_amp


def _all_keys(node, prefix: str = ""):
    for key, value in node.items():
        if isinstance(value, dict):
            yield from _all_keys(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"


_TYPE_MISMATCH = re.compile(
    r"Type mismatch \((?P<expected>.+?) vs\. (?P<given>.+?)\) with values \((?P<default>.*) vs\. "
    r"(?P<value>.*)\) for config key: (?P<key>\S+)$",
    re.DOTALL,
)


def _type_name(type_repr: str) -> str:
    """A type as yacs writes it, by name: int for "<class 'int'>", "group of keys" for a
    CfgNode."""
    if "CfgNode" in type_repr:
        return "group of keys"
    match = re.fullmatch(r"<class '(?:[\w.]+\.)?(\w+)'>", type_repr)
    return match[1] if match else type_repr


def _config_error(cfg, source: str, error: Exception) -> Optional[UserError]:
    """What a yacs error raised while merging ``source`` means for the user, as a UserError; None
    when it is not one of the mistakes a config file or command line can make."""
    message = str(error.args[0]) if error.args else ""
    if isinstance(error, (KeyError, AssertionError)) and message.startswith(
        ("Non-existent config key: ", "Non-existent key: ")
    ):
        key = message.split(": ", 1)[1]
        close = difflib.get_close_matches(key, list(_all_keys(cfg)), n=3, cutoff=0.6)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        return UserKeyError(
            f"Unknown config key {key} in {source}.{hint} Keys are defined by detectron2's "
            "config/defaults.py and pointrend_sem/config.py."
        )
    mismatch = _TYPE_MISMATCH.match(message) if isinstance(error, ValueError) else None
    if mismatch and _type_name(mismatch["expected"]) == "group of keys":
        return UserValueError(
            f"Config key {mismatch['key']} in {source} is a group of keys, not a value; set "
            f"one of its keys ({mismatch['key']}.<KEY> VALUE)."
        )
    if mismatch:
        return UserValueError(
            f"Config key {mismatch['key']} in {source} takes a value of type "
            f"{_type_name(mismatch['expected'])}, like its default {mismatch['default']}, not "
            f"{_type_name(mismatch['given'])} {mismatch['value']!r}; fix the value."
        )
    if isinstance(error, AssertionError) and message.startswith("Override list has odd length"):
        return UserValueError(
            f"The config overrides on {source} must be KEY VALUE pairs, but their number is odd: "
            "a key has no value (write a list as '[1, 2]' and an empty value as \"\")."
        )
    if isinstance(error, yaml.YAMLError):
        return UserValueError(
            f"Config file {source} is not valid YAML: {' '.join(str(error).split())}"
        )
    if isinstance(error, FileNotFoundError) and error.filename:
        return UserFileNotFoundError(
            f"Config file {source} inherits from {error.filename} (_BASE_), which does not "
            "exist; _BASE_ is relative to the folder of the file that names it."
        )
    return None


@contextlib.contextmanager
def explain_config_errors(cfg, source: str) -> Iterator[None]:
    """Turn yacs' errors for a config file or override list ``source`` (unknown keys, values of
    the wrong type, an override without a value, YAML syntax, a missing ``_BASE_``) into
    :class:`UserError` s that name the key and the fix (an unknown key: with similar keys)."""
    try:
        yield
    except (KeyError, AssertionError, ValueError, yaml.YAMLError, FileNotFoundError) as e:
        user_error = None if isinstance(e, UserError) else _config_error(cfg, source, e)
        if user_error is None:
            raise
        raise user_error from None


def check_weights_file(weights: str) -> None:
    """Raise when ``MODEL.WEIGHTS`` names a local file (a path, or a ``file://`` URL) that does
    not exist. Other URLs and ``detectron2://`` paths are left to the checkpointer, which
    downloads them (:mod:`pointrend_sem.safe_load`: https only, hash-checked)."""
    local = url2pathname(urlparse(weights).path) if weights.startswith("file://") else weights
    if local and "://" not in local and not os.path.isfile(local):
        raise UserFileNotFoundError(
            f"MODEL.WEIGHTS {weights} does not exist. Obtain it (README, 'Pretrained "
            "backbones'), point MODEL.WEIGHTS at another file, or train from scratch with "
            'MODEL.WEIGHTS "".'
        )


def checkpoint_read_problem(path: str) -> Optional[str]:
    """Why the checkpoint file ``path`` cannot be read as the checkpointer reads it
    (:func:`~pointrend_sem.safe_load.load_weights_file`: no code from the file runs), in a few
    words; None when it can be."""
    try:
        load_weights_file(path, trust=False)
    except UntrustedCheckpointError as e:
        return (
            f"it holds pickled Python objects besides tensors ({e.name}), which could run code; "
            f"set {TRUST_ENV}=1 if you trust it"
        )
    except Exception as e:  # torch and pickle raise errors of many kinds for a bad file
        message = str(e.args[0]) if e.args else ""
        if isinstance(e, EOFError):
            return "the file ends too early (EOFError)"
        first = message.split(". ")[0].strip().splitlines()[0] if message.strip() else ""
        if isinstance(e, KeyError) or not first:
            return f"its content is not a checkpoint's ({type(e).__name__})"
        return f"{first[:200]} ({type(e).__name__})"
    return None


def checkpoint_to_read(checkpointer, weights: str, resume: bool) -> Tuple[str, str]:
    """(file, where it comes from) that ``checkpointer.resume_or_load(weights, resume=resume)``
    reads: the last checkpoint of its folder when resuming from one, else ``weights``."""
    if resume and checkpointer.has_checkpoint():
        tag = os.path.join(checkpointer.save_dir, "last_checkpoint")
        return checkpointer.get_checkpoint_file(), f"the checkpoint named by {tag}"
    return weights, "MODEL.WEIGHTS"


@contextlib.contextmanager
def explain_unreadable_checkpoint(path: str, source: str = "MODEL.WEIGHTS") -> Iterator[None]:
    """Around loading the checkpoint file ``path`` (``source``: the key or file that names it):
    when loading fails and the file itself cannot be read (truncated, not a checkpoint, pickled
    objects), raise a :class:`UserValueError` naming it and the fix; any other error passes
    unchanged. URLs are left alone."""
    try:
        yield
    except Exception as e:
        if isinstance(e, UserError) or not path or "://" in path or not os.path.isfile(path):
            raise
        problem = checkpoint_read_problem(path)
        if problem is None:
            raise
        if source == "MODEL.WEIGHTS":
            fix = (
                "Copy or download it again if it is truncated, or convert a checkpoint of another "
                "code base with tools/convert_weights.py (README, 'Model zoo')."
            )
        else:
            fix = (
                "Start again without --resume, or write an earlier checkpoint's name into the tag."
            )
        raise UserValueError(
            f"Cannot read the checkpoint {path} ({source}): {problem}. {fix}"
        ) from e


def check_config_values(cfg, training: bool) -> None:
    """Raise a :class:`UserValueError` naming the first config value that cannot work, and the
    fix. Always: ``MODEL.SEM_SEG_HEAD.NUM_CLASSES`` >= 1, ``DATALOADER.NUM_WORKERS`` >= 0. With
    ``training`` (the keys only training reads): ``SOLVER.IMS_PER_BATCH`` >= 1 and a multiple of
    the number of processes (of ``SOLVER.REFERENCE_WORLD_SIZE`` when set, which detectron2 scales
    it from), ``SOLVER.BASE_LR`` > 0, ``SOLVER.MAX_ITER`` >= 0, ``SOLVER.CHECKPOINT_PERIOD`` >= 1,
    ``TEST.EVAL_PERIOD`` >= 0."""
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
    if problems:
        raise UserValueError(problems[0])


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
