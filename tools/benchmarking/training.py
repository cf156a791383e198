"""Training iteration time and the train loader's throughput."""

import contextlib
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from detectron2.utils.events import EventStorage
from torch import nn
from tqdm import tqdm

from pointrend_sem.engine import Trainer
from pointrend_sem.engine.amp import check_cpu_amp

from .measure import latency_fields, measure_call


def crop_size(cfg, height: int, width: int) -> Tuple[int, int]:
    """The training crop (h, w) of an "absolute" crop config, else (height, width)."""
    crop = cfg.INPUT.CROP
    if crop.ENABLED and crop.TYPE == "absolute":
        return tuple(crop.SIZE)
    return height, width


def grad_scaler(device_type: str, amp: bool) -> Optional[torch.amp.GradScaler]:
    """The gradient scaler of a training step: fp16 autocast on CUDA (``SOLVER.AMP.ENABLED``)
    needs one, as detectron2's ``AMPTrainer`` runs it; None otherwise (fp32, or bf16 on CPU,
    whose exponent range is fp32's)."""
    return torch.amp.GradScaler("cuda") if amp and device_type == "cuda" else None


def build_train_step(
    model: nn.Module,
    batch: List[Dict[str, Any]],
    optimizer: torch.optim.Optimizer,
    device_type: str,
    amp_dtype: Optional[torch.dtype],
    scaler: Optional[Any] = None,
) -> Callable[[], None]:
    """One training iteration on ``batch`` (forward, backward, optimizer step) as a function.

    Without ``scaler``: the whole step under ``torch.autocast(device_type, amp_dtype)`` when
    ``amp_dtype`` is given, as :class:`pointrend_sem.engine.amp.CPUAMPTrainer` runs it (bf16 on
    CPU), or in fp32. With ``scaler`` (a ``torch.amp.GradScaler``): detectron2's
    ``AMPTrainer.run_step``: the forward under autocast, then the loss scaled for backward,
    ``scaler.step(optimizer)`` (unscales; skips the step on inf/NaN gradients) and
    ``scaler.update()``.
    """

    def autocast():
        if amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type, dtype=amp_dtype)

    def step() -> None:
        with autocast():
            losses = model(batch)
            optimizer.zero_grad()
            sum(losses.values()).backward()
            optimizer.step()

    def scaled_step() -> None:
        with autocast():
            loss = sum(model(batch).values())
        optimizer.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    return step if scaler is None else scaled_step


def measure_training(cfg, model: nn.Module, args) -> Dict[str, Any]:
    """Median/min/max time of a training iteration (forward, backward, optimizer step) on
    --batch-size random images with random labels at the config's crop size, with
    ``SOLVER.AMP.ENABLED`` as the trainer runs it: bf16 autocast on CPU, fp16 autocast and a
    gradient scaler on CUDA (:func:`build_train_step`).

    ``args``: the command line's ``height``, ``width``, ``batch_size``, ``seed``, ``warmup``
    and ``runs``. Updates ``model``'s weights: run it after the inference measurements.
    """
    device = cfg.MODEL.DEVICE
    device_type = torch.device(device).type
    height, width = crop_size(cfg, args.height, args.width)
    gen = torch.Generator().manual_seed(args.seed)
    batch = [
        {
            "image": torch.randint(0, 256, (3, height, width), generator=gen, dtype=torch.uint8),
            "sem_seg": torch.randint(
                0, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, (height, width), generator=gen
            ),
        }
        for _ in range(args.batch_size)
    ]
    optimizer = Trainer.build_optimizer(cfg, model)
    model.train()

    # SOLVER.AMP.ENABLED: the step as the trainer runs it (bf16 on CPU, pointrend_sem.engine.amp;
    # fp16 with a gradient scaler on CUDA, detectron2's AMPTrainer)
    amp = cfg.SOLVER.AMP.ENABLED
    amp_dtype = (torch.bfloat16 if device_type == "cpu" else torch.float16) if amp else None
    if amp_dtype == torch.bfloat16:
        check_cpu_amp()  # refused (one line) where the CPU cannot run bf16
    scaler = grad_scaler(device_type, amp)
    step = build_train_step(model, batch, optimizer, device_type, amp_dtype, scaler)

    seconds = []
    with EventStorage():
        for index in tqdm(range(args.warmup + args.runs), desc="training", file=sys.stderr):
            elapsed, _, _ = measure_call(step, device)
            if index >= args.warmup:
                seconds.append(elapsed)
    fields = {k.replace("latency", "train_iter"): v for k, v in latency_fields("", seconds).items()}
    precision = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[amp_dtype]
    return {
        "train_crop": f"{height}x{width}",
        "train_precision": precision,
        "train_grad_scaler": scaler is not None,
        **fields,
    }


def measure_data_loader(cfg, num_batches: int) -> Dict[str, Any]:
    """Images/s of the config's train loader over ``num_batches`` batches after the first one
    (which includes starting the workers); "loader_status" says why when it cannot be built."""
    try:
        loader = Trainer.build_train_loader(cfg)
    except (FileNotFoundError, KeyError) as e:
        return {"loader_status": f"unavailable: {type(e).__name__}: {e}"}
    iterator = iter(loader)
    start = time.perf_counter()
    next(iterator)
    first = time.perf_counter() - start
    images = 0
    start = time.perf_counter()
    for _ in tqdm(range(num_batches), desc="data loader", file=sys.stderr):
        images += len(next(iterator))
    seconds = time.perf_counter() - start
    del iterator  # stops the workers
    return {
        "loader_status": "ok",
        "loader_workers": cfg.DATALOADER.NUM_WORKERS,
        "loader_first_batch_s": first,
        "loader_batches": num_batches,
        "loader_images_per_s": images / seconds,
    }
