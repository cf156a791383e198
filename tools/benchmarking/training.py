"""Training iteration time and the train loader's throughput."""

import sys
import time
from typing import Any, Dict, Tuple

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


def measure_training(cfg, model: nn.Module, args) -> Dict[str, Any]:
    """Median/min/max time of a training iteration (forward, backward, optimizer step) on
    --batch-size random images with random labels at the config's crop size, the step
    under autocast when ``SOLVER.AMP.ENABLED``.

    ``args``: the command line's ``height``, ``width``, ``batch_size``, ``seed``, ``warmup``
    and ``runs``. Updates ``model``'s weights: run it after the inference measurements.
    """
    device = cfg.MODEL.DEVICE
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

    # SOLVER.AMP.ENABLED: the step under autocast, as the trainer runs it (bf16 on CPU,
    # pointrend_sem.engine.amp; fp16 on CUDA, whose gradient scaler does not change the time)
    amp = cfg.SOLVER.AMP.ENABLED
    amp_dtype = torch.bfloat16 if torch.device(device).type == "cpu" else torch.float16
    if amp and amp_dtype == torch.bfloat16:
        check_cpu_amp()  # refused (one line) where the CPU cannot run bf16

    def step():
        with torch.autocast(torch.device(device).type, dtype=amp_dtype, enabled=amp):
            losses = model(batch)
            optimizer.zero_grad()
            sum(losses.values()).backward()
            optimizer.step()

    seconds = []
    with EventStorage():
        for index in tqdm(range(args.warmup + args.runs), desc="training", file=sys.stderr):
            elapsed, _, _ = measure_call(step, device)
            if index >= args.warmup:
                seconds.append(elapsed)
    fields = {k.replace("latency", "train_iter"): v for k, v in latency_fields("", seconds).items()}
    precision = ("bf16" if amp_dtype == torch.bfloat16 else "fp16") if amp else "fp32"
    return {"train_crop": f"{height}x{width}", "train_precision": precision, **fields}


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
