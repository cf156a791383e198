#!/usr/bin/env python
"""Measure a PointRend config's speed and memory, optionally next to a reference implementation.

    python tools/benchmark.py --config-file configs/cityscapes_r50.yaml --runs 10 --warmup 2
    python tools/benchmark.py --config-file configs/demo_synthetic.yaml --height 128 --width 128 \
        --train --data-loader --json out.json
    python tools/benchmark.py --config-file configs/cityscapes_r101_detectron2.yaml \
        --compare detectron2 --threads 2 --runs 3 --warmup 1 MODEL.RESNETS.DEPTH 50
    python tools/benchmark.py --config-file configs/cityscapes_r50.yaml --compare mmseg \
        MODEL.RESNETS.NORM BN MODEL.SEM_SEG_HEAD.NORM BN

What is measured, on one seeded random uint8 image of --height x --width, repeated --batch-size
times (the same image for every run):

* inference latency: median, min and max of --runs forward passes (eval mode, no_grad) after
  --warmup untimed ones;
* peak memory of a forward pass, the largest over the timed runs. CUDA:
  ``torch.cuda.max_memory_allocated`` (absolute: weights and input included). CPU: the peak
  resident set size (``getrusage`` ``ru_maxrss``) minus the resident set size before the pass.
  Before each pass glibc's retained free memory is released (``malloc_trim``), so the pass's
  allocations show up as growth, and the peak is reset by writing 5 to ``/proc/self/clear_refs``
  (Linux >= 4.0). Where that file cannot be written the peak is not reset and the number is only
  a lower bound ("memory_method" in the output says which);
* point head share: in one extra forward pass, the time spent in
  ``model.sem_seg_head.point_logits`` (point feature sampling + point head MLP) and in the
  selection of uncertain points (``select_uncertain_grid_points``), as a fraction of that pass;
* --train: training iteration time (forward, backward, optimizer step; model.train(), in an
  EventStorage) on --batch-size random images with random labels at the config's crop size;
* --data-loader: images/s of the config's train loader (``Trainer.build_train_loader``) over
  --loader-batches batches after the first one, when the config's dataset is available;
* --compare detectron2|mmseg: the reference PointRend built with our config's depth, classes
  and subdivision points, holding the same weights as ours; both are timed alternately (ours,
  theirs, ours, ...) on the same image; reported: its latency, the latency ratio (ours / theirs,
  of the medians), and the fraction of pixels whose predicted class agrees. mmsegmentation's
  model (CPU only here) is run through ``mmseg_logits``, one image after the other.

Weights: random initialisation unless --weights is given; the config's MODEL.WEIGHTS is not
loaded (latency does not depend on the values, and nothing is downloaded). With --compare,
--weights is a checkpoint of the reference (detectron2's .pkl/.pth, mmsegmentation's .pth); it is
loaded into the reference and the same tensors are given to ours. Without --weights the
reference's random weights, with random normalization statistics, are copied into ours.

The table goes to stdout; progress bars and log messages go to stderr.
"""

import argparse
import contextlib
import ctypes
import json
import os
import resource
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple, Union

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage
from tabulate import tabulate
from torch import nn
from tqdm import tqdm

from pointrend_sem.engine import Trainer, setup
from pointrend_sem.reference_models import randomize_norms

COMPARE_CHOICES = ("detectron2", "mmseg")
CLEAR_REFS = "/proc/self/clear_refs"


def get_parser() -> argparse.ArgumentParser:
    """The command-line options."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", required=True, metavar="FILE", help="config file")
    parser.add_argument("--weights", default="", metavar="FILE", help="checkpoint to load")
    parser.add_argument("--height", type=int, default=1024, help="input height (default 1024)")
    parser.add_argument("--width", type=int, default=2048, help="input width (default 2048)")
    parser.add_argument("--batch-size", type=int, default=1, help="images per pass (default 1)")
    parser.add_argument("--runs", type=int, default=10, help="timed passes (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed passes first (default 2)")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)"
    )
    parser.add_argument("--compare", choices=COMPARE_CHOICES, help="reference to compare with")
    parser.add_argument("--train", action="store_true", help="also time training iterations")
    parser.add_argument(
        "--data-loader", action="store_true", help="also measure the train loader's throughput"
    )
    parser.add_argument(
        "--loader-batches", type=int, default=20, help="batches timed by --data-loader"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the image and weights")
    parser.add_argument("--json", metavar="FILE", help="also write the numbers to this file")
    parser.add_argument(
        "opts",
        default=[],
        nargs=argparse.REMAINDER,
        help="config overrides as KEY VALUE pairs, e.g. MODEL.RESNETS.DEPTH 50",
    )
    return parser


# ---------------------------------------------------------------------------------------------
# timing and memory


def synchronize(device: str) -> None:
    """Wait for queued CUDA work, so that wall-clock times cover it."""
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def release_free_heap() -> None:
    """Hand memory that glibc's allocator keeps after ``free`` back to the system
    (``malloc_trim``), so that a pass's allocations show up as resident set growth; a no-op
    without glibc."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def reset_peak_rss() -> bool:
    """Reset the kernel's resident set size high-water mark (``ru_maxrss``) to the current size;
    False where ``/proc/self/clear_refs`` cannot be written."""
    try:
        with open(CLEAR_REFS, "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def current_rss_mib() -> float:
    """This process's resident set size now, in MiB (``/proc/self/statm``)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def memory_method(device: str) -> str:
    """How :func:`measure_call` measures memory on ``device`` in this process."""
    if device.startswith("cuda"):
        return "torch.cuda.max_memory_allocated"
    if os.access(CLEAR_REFS, os.W_OK):
        return "peak RSS increase (ru_maxrss reset through /proc/self/clear_refs)"
    return "peak RSS increase (ru_maxrss, not resettable here: lower bound)"


def start_memory(device: str) -> float:
    """Reset the memory peak before a pass; returns the baseline to subtract, in MiB."""
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)
        return 0.0
    release_free_heap()
    reset_peak_rss()
    return current_rss_mib()


def peak_memory(device: str, baseline: float) -> float:
    """Peak memory (MiB) since :func:`start_memory` returned ``baseline``."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated(device) / 2**20
    return max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - baseline, 0.0)


def measure_call(fn: Callable[[], Any], device: str) -> Tuple[float, float, Any]:
    """Call ``fn`` once.

    Returns:
        (seconds, peak memory in MiB as :func:`memory_method` describes, fn's result).
    """
    baseline = start_memory(device)
    synchronize(device)
    start = time.perf_counter()
    result = fn()
    synchronize(device)
    seconds = time.perf_counter() - start
    return seconds, peak_memory(device, baseline), result


@dataclass
class Contender:
    """A model under test: ``forward()`` runs one pass on the benchmark batch; ``labels(output)``
    turns its result into per-image (H, W) class ids."""

    name: str
    forward: Callable[[], Any]
    labels: Callable[[Any], List[torch.Tensor]]


def time_alternating(
    contenders: List[Contender], runs: int, warmup: int, device: str
) -> Dict[str, Dict[str, Any]]:
    """Run the contenders in turn, ``warmup + runs`` rounds, under no_grad.

    Returns:
        per contender name: "seconds" and "peak_mib" of the timed rounds (lists), and "labels"
        of the last round.
    """
    records = {c.name: {"seconds": [], "peak_mib": [], "labels": None} for c in contenders}
    with torch.no_grad():
        for round_index in tqdm(range(warmup + runs), desc="inference", file=sys.stderr):
            for contender in contenders:
                seconds, peak, output = measure_call(contender.forward, device)
                record = records[contender.name]
                record["labels"] = contender.labels(output)
                if round_index >= warmup:
                    record["seconds"].append(seconds)
                    record["peak_mib"].append(peak)
    return records


def latency_fields(prefix: str, seconds: List[float]) -> Dict[str, Any]:
    """Median, min, max (ms) and the individual runs of a list of timings."""
    ms = [1000.0 * s for s in seconds]
    return {
        f"{prefix}latency_median_ms": statistics.median(ms),
        f"{prefix}latency_min_ms": min(ms),
        f"{prefix}latency_max_ms": max(ms),
        f"{prefix}latency_runs_ms": ms,
    }


def agreement(ours: List[torch.Tensor], theirs: List[torch.Tensor]) -> float:
    """Fraction of pixels, over all images, where two predictions have the same class."""
    same = sum(int((a == b.to(a.device)).sum()) for a, b in zip(ours, theirs))
    return same / sum(a.numel() for a in ours)


# ---------------------------------------------------------------------------------------------
# inputs


def random_image(height: int, width: int, seed: int) -> torch.Tensor:
    """A seeded random (3, H, W) uint8 RGB image."""
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.integers(0, 256, (3, height, width), dtype=np.uint8))


def in_format(image_rgb: torch.Tensor, input_format: str) -> torch.Tensor:
    """The (3, H, W) RGB image in a model's INPUT.FORMAT ("RGB" or "BGR")."""
    return image_rgb.flip(0).contiguous() if input_format == "BGR" else image_rgb


def detectron2_inputs(image: torch.Tensor, batch_size: int) -> List[Dict[str, Any]]:
    """detectron2 model inputs: the (3, H, W) image ``batch_size`` times, output at its size."""
    height, width = image.shape[-2:]
    return [{"image": image, "height": height, "width": width} for _ in range(batch_size)]


def sem_seg_labels(outputs: List[Dict[str, torch.Tensor]]) -> List[torch.Tensor]:
    """Class ids (H, W) of detectron2-style outputs with "sem_seg" (C, H, W) logits."""
    return [output["sem_seg"].argmax(0) for output in outputs]


# ---------------------------------------------------------------------------------------------
# reference models


def reference_opts(cfg) -> List[Any]:
    """Overrides of detectron2's PointRend config that match our config's architecture size."""
    num_classes = cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES
    return [
        "MODEL.RESNETS.DEPTH", cfg.MODEL.RESNETS.DEPTH,
        "MODEL.RESNETS.RES2_OUT_CHANNELS", cfg.MODEL.RESNETS.RES2_OUT_CHANNELS,
        "MODEL.SEM_SEG_HEAD.NUM_CLASSES", num_classes,
        "MODEL.POINT_HEAD.NUM_CLASSES", num_classes,
        "MODEL.POINT_HEAD.SUBDIVISION_STEPS", cfg.MODEL.POINTREND_SEM.SUBDIVISION_STEPS,
        "MODEL.POINT_HEAD.SUBDIVISION_NUM_POINTS", cfg.MODEL.POINTREND_SEM.SUBDIVISION_NUM_POINTS,
        "MODEL.DEVICE", cfg.MODEL.DEVICE,
    ]  # fmt: skip


def detectron2_reference(cfg, weights: str, seed: int) -> Tuple[nn.Module, str]:
    """detectron2's PointRend semantic model sized like ``cfg``, with ``weights`` or random
    weights (random normalization statistics included).

    Returns:
        (model in eval mode, its INPUT.FORMAT).
    """
    import detectron2

    from pointrend_sem.reference_models import (
        build_detectron2_pointrend,
        detectron2_pointrend_config,
        randomize_norms,
    )

    root = os.path.dirname(os.path.dirname(detectron2.__file__))
    opts = reference_opts(cfg)
    reference = build_detectron2_pointrend(root, opts)
    if weights:
        DetectionCheckpointer(reference).load(weights)
    else:
        randomize_norms(reference, seed)
    return reference, detectron2_pointrend_config(root, opts).INPUT.FORMAT


def mmseg_reference(cfg, weights: str, seed: int) -> nn.Module:
    """mmsegmentation's PointRend sized like ``cfg`` (BN), with ``weights`` (an mmseg
    checkpoint) or random weights (random normalization statistics included), on CPU."""
    from pointrend_sem.reference_models import build_mmseg_pointrend

    steps = cfg.MODEL.POINTREND_SEM.SUBDIVISION_STEPS
    if steps != 2:
        raise SystemExit(f"--compare mmseg: mmseg's recipe has 2 subdivision steps, ours {steps}.")
    reference = build_mmseg_pointrend(
        depth=cfg.MODEL.RESNETS.DEPTH,
        num_classes=cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES,
        norm="BN",
        subdivision_num_points=cfg.MODEL.POINTREND_SEM.SUBDIVISION_NUM_POINTS,
    )
    if weights:
        from mmengine.runner import load_checkpoint

        load_checkpoint(reference, weights, map_location="cpu")
    else:
        randomize_norms(reference, seed)
    return reference


def load_reference_weights(kind: str, reference: nn.Module, ours: nn.Module) -> None:
    """Give ``ours`` every tensor of ``reference`` (renamed from mmseg's keys for "mmseg").

    Raises:
        SystemExit: when our config's model cannot hold the reference's weights.
    """
    state = reference.state_dict()
    if kind == "mmseg":
        from pointrend_sem.convert.mmseg import convert_mmseg_pointrend

        state = convert_mmseg_pointrend(state)
    hint = {
        "detectron2": "a config with detectron2's architecture, e.g. "
        "configs/cityscapes_r101_detectron2.yaml",
        "mmseg": "an mmseg-recipe config such as configs/cityscapes_r50.yaml with "
        "MODEL.RESNETS.NORM BN MODEL.SEM_SEG_HEAD.NORM BN (and MODEL.RESNETS.RES2_OUT_CHANNELS "
        "64 below depth 50)",
    }[kind]
    try:
        incompatible = ours.load_state_dict(state, strict=False)
    except RuntimeError as e:
        raise SystemExit(f"--compare {kind} needs {hint}:\n{e}") from None
    missing = [k for k in incompatible.missing_keys if not k.endswith("num_batches_tracked")]
    if missing or incompatible.unexpected_keys:
        raise SystemExit(
            f"--compare {kind} needs {hint}. Not in the reference: {missing[:5]}; "
            f"not in ours: {incompatible.unexpected_keys[:5]}"
        )


def build_reference(kind: str, cfg, ours: nn.Module, image_rgb: torch.Tensor, args) -> Contender:
    """The reference model of ``kind`` as a :class:`Contender`, its weights copied into ours."""
    if kind == "detectron2":
        reference, input_format = detectron2_reference(cfg, args.weights, args.seed)
        load_reference_weights(kind, reference, ours)
        inputs = detectron2_inputs(in_format(image_rgb, input_format), args.batch_size)
        return Contender("reference", lambda: reference(inputs), sem_seg_labels)

    from pointrend_sem.reference_models import mmseg_logits

    if cfg.MODEL.DEVICE != "cpu":
        raise SystemExit("--compare mmseg runs on CPU (mmseg_logits normalizes on the CPU).")
    reference = mmseg_reference(cfg, args.weights, args.seed)
    load_reference_weights(kind, reference, ours)
    images = [image_rgb] * args.batch_size
    return Contender(
        "reference",
        lambda: mmseg_logits(reference, images),
        lambda logits: [x.argmax(0) for x in logits],
    )


# ---------------------------------------------------------------------------------------------
# point head share, training, data loading


@contextlib.contextmanager
def timed_attribute(owner: Any, name: str, totals: Dict[str, float], device: str) -> Iterator:
    """Replace ``owner.name`` (a function or bound method) by a wrapper that adds the seconds
    of each call to ``totals[name]`` and counts calls in ``totals[name + "_calls"]``; restored
    on exit. Does nothing when ``owner`` has no such attribute."""
    if not hasattr(owner, name):
        yield
        return
    own = name in vars(owner)
    original = getattr(owner, name)
    totals.setdefault(name, 0.0)
    totals.setdefault(name + "_calls", 0)

    def wrapper(*args, **kwargs):
        synchronize(device)
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            synchronize(device)
            totals[name] += time.perf_counter() - start
            totals[name + "_calls"] += 1

    setattr(owner, name, wrapper)
    try:
        yield
    finally:
        if own:
            setattr(owner, name, original)
        else:
            delattr(owner, name)


def measure_point_share(model: nn.Module, forward: Callable[[], Any], device: str) -> Dict:
    """Time of the point head (``sem_seg_head.point_logits``) and of the point selection
    (``select_uncertain_grid_points`` as the head's module calls it) in one extra pass."""
    head = model.sem_seg_head
    head_module = sys.modules[type(head).__module__]
    totals: Dict[str, float] = {}
    with contextlib.ExitStack() as stack, torch.no_grad():
        stack.enter_context(timed_attribute(head, "point_logits", totals, device))
        stack.enter_context(
            timed_attribute(head_module, "select_uncertain_grid_points", totals, device)
        )
        seconds, _, _ = measure_call(forward, device)
    point = totals.get("point_logits", 0.0)
    select = totals.get("select_uncertain_grid_points", 0.0)
    return {
        "point_pass_ms": 1000.0 * seconds,
        "point_head_ms": 1000.0 * point,
        "point_selection_ms": 1000.0 * select,
        "point_head_calls": totals.get("point_logits_calls", 0),
        "point_share": (point + select) / seconds,
    }


def crop_size(cfg, height: int, width: int) -> Tuple[int, int]:
    """The training crop (h, w) of an "absolute" crop config, else (height, width)."""
    crop = cfg.INPUT.CROP
    if crop.ENABLED and crop.TYPE == "absolute":
        return tuple(crop.SIZE)
    return height, width


def measure_training(cfg, model: nn.Module, args) -> Dict[str, Any]:
    """Median/min/max time of a training iteration (forward, backward, optimizer step) on
    --batch-size random images with random labels at the config's crop size.

    Updates ``model``'s weights: run it after the inference measurements.
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

    def step():
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
    return {"train_crop": f"{height}x{width}", **fields}


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


# ---------------------------------------------------------------------------------------------
# report

# (key, label, format) of the table's rows, in order; rows whose key is missing from the results
# are left out. A format is a str.format pattern for results[key] or a function of all results.
ROWS: List[Tuple[str, str, Union[str, Callable[[Dict[str, Any]], str]]]] = [
    ("config", "config", "{}"),
    ("opts", "config overrides", "{}"),
    ("weights", "weights", "{}"),
    ("device", "device", "{}"),
    ("height", "resolution (H x W)", lambda r: f"{r['height']}x{r['width']}"),
    ("batch_size", "batch size", "{}"),
    ("threads", "torch threads", "{}"),
    ("runs", "timed runs (+ warm-up)", lambda r: f"{r['runs']} (+ {r['warmup']})"),
    ("latency_median_ms", "inference latency, median (ms)", "{:.1f}"),
    ("latency_min_ms", "inference latency, min (ms)", "{:.1f}"),
    ("latency_max_ms", "inference latency, max (ms)", "{:.1f}"),
    ("images_per_s", "inference throughput (images/s)", "{:.3f}"),
    ("peak_memory_mib", "peak memory (MiB)", "{:.0f}"),
    ("memory_method", "memory measured as", "{}"),
    ("point_head_ms", "point head, point_logits (ms)", "{:.1f}"),
    ("point_selection_ms", "point selection (ms)", "{:.1f}"),
    ("point_share", "point head + selection share of inference", "{:.1%}"),
    ("reference", "reference", "{}"),
    ("reference_latency_median_ms", "reference latency, median (ms)", "{:.1f}"),
    ("reference_latency_min_ms", "reference latency, min (ms)", "{:.1f}"),
    ("reference_latency_max_ms", "reference latency, max (ms)", "{:.1f}"),
    ("reference_peak_memory_mib", "reference peak memory (MiB)", "{:.0f}"),
    ("time_ratio", "time ratio ours / reference (medians)", "{:.3f}"),
    ("agreement", "pixels with the same class as the reference", "{:.6f}"),
    ("train_crop", "training crop (H x W)", "{}"),
    ("train_iter_median_ms", "training iteration, median (ms)", "{:.1f}"),
    ("train_iter_min_ms", "training iteration, min (ms)", "{:.1f}"),
    ("train_iter_max_ms", "training iteration, max (ms)", "{:.1f}"),
    ("loader_status", "train data loader", "{}"),
    ("loader_workers", "data loader workers", "{}"),
    ("loader_images_per_s", "data loader throughput (images/s)", "{:.1f}"),
]


def format_table(results: Dict[str, Any]) -> str:
    """The results as a two-column (quantity, value) table."""
    rows = [
        (label, fmt(results) if callable(fmt) else fmt.format(results[key]))
        for key, label, fmt in ROWS
        if key in results
    ]
    return tabulate(rows, headers=["quantity", "value"], tablefmt="pipe")


def describe_run(args, cfg) -> Dict[str, Any]:
    """What is measured, where: the first fields of the results."""
    return {
        "config": args.config_file,
        "opts": " ".join(args.opts),
        "weights": args.weights or "random",
        "device": cfg.MODEL.DEVICE,
        "height": args.height,
        "width": args.width,
        "batch_size": args.batch_size,
        "threads": torch.get_num_threads(),
        "runs": args.runs,
        "warmup": args.warmup,
        "torch_version": torch.__version__,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "memory_method": memory_method(cfg.MODEL.DEVICE),
    }


def inference_fields(records: Dict[str, Dict[str, Any]], batch_size: int) -> Dict[str, Any]:
    """Latency, throughput and memory of ours, and with a reference its latency, memory, the
    time ratio and the agreement, from :func:`time_alternating`'s records."""
    ours = records["ours"]
    fields = latency_fields("", ours["seconds"])
    fields["images_per_s"] = batch_size * 1000.0 / fields["latency_median_ms"]
    fields["peak_memory_mib"] = max(ours["peak_mib"])
    if "reference" in records:
        theirs = records["reference"]
        fields.update(latency_fields("reference_", theirs["seconds"]))
        fields["reference_peak_memory_mib"] = max(theirs["peak_mib"])
        fields["time_ratio"] = fields["latency_median_ms"] / fields["reference_latency_median_ms"]
        fields["agreement"] = agreement(ours["labels"], theirs["labels"])
    return fields


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    """Parse ``argv``, measure, print the table (and write the JSON file); return the results."""
    args = get_parser().parse_args(argv)
    if args.runs < 1 or args.warmup < 0 or args.batch_size < 1:
        raise SystemExit("--runs and --batch-size must be >= 1, --warmup >= 0.")
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = setup(args, log=False)
    device = cfg.MODEL.DEVICE
    results = describe_run(args, cfg)

    torch.manual_seed(args.seed)
    model = build_model(cfg).eval()
    image_rgb = random_image(args.height, args.width, args.seed)
    inputs = detectron2_inputs(in_format(image_rgb, cfg.INPUT.FORMAT), args.batch_size)
    ours = Contender("ours", lambda: model(inputs), sem_seg_labels)
    contenders = [ours]
    if args.compare:
        contenders.append(build_reference(args.compare, cfg, model, image_rgb, args))
        results["reference"] = args.compare
    elif args.weights:
        DetectionCheckpointer(model).load(args.weights)

    records = time_alternating(contenders, args.runs, args.warmup, device)
    results.update(inference_fields(records, args.batch_size))
    results.update(measure_point_share(model, ours.forward, device))
    if args.train:
        results.update(measure_training(cfg, model, args))
    if args.data_loader:
        results.update(measure_data_loader(cfg, args.loader_batches))

    print(format_table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()
