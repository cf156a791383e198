#!/usr/bin/env python
"""Measure a PointRend config's speed and memory, optionally next to a reference implementation.

    python tools/benchmark.py --config-file configs/cityscapes_r50.yaml --runs 10 --warmup 2
    python tools/benchmark.py --config-file configs/demo_synthetic.yaml --height 128 --width 128 \
        --train --data-loader --json out.json
    python tools/benchmark.py --config-file configs/cityscapes_r101_detectron2.yaml \
        --compare detectron2 --threads 2 --runs 3 --warmup 1 MODEL.RESNETS.DEPTH 50
    python tools/benchmark.py --config-file configs/cityscapes_r50.yaml --compare mmseg \
        MODEL.RESNETS.NORM BN MODEL.SEM_SEG_HEAD.NORM BN
    python tools/benchmark.py --config-file configs/cityscapes_r50.yaml --device cuda --train \
        SOLVER.AMP.ENABLED True
    python tools/benchmark.py --config-file configs/cityscapes_r50.yaml --threads 2 \
        --memory-under-load 120
    python tools/benchmark.py --config-file configs/cityscapes_r50.yaml --weights model.pth \
        --exported fp32.onnx --exported int8.onnx --threads 2

Device: ``--device cpu`` or ``--device cuda``; without it, ``MODEL.DEVICE`` when given among the
command line's overrides, else cpu (a config file's MODEL.DEVICE, detectron2's default "cuda"
included, is not read). The config's MODEL.DEVICE is set to it; cuda without CUDA stops with one
line. The table and the JSON say which device ran ("device", and on CUDA "device_name").
Everything runs there: ours, the reference of --compare, --train and --roofline; --data-loader
and --pipeline measure CPU work (the input side) wherever the model runs. On CUDA every timed
region ends with ``torch.cuda.synchronize``.

What is measured, on one seeded random uint8 image of --height x --width, repeated --batch-size
times (the same image for every run):

* inference latency: median, min and max of --runs forward passes (eval mode, no_grad) after
  --warmup untimed ones;
* host memory on CPU: ours runs with glibc's allocator as it is (blocks over 32 MiB mapped and
  unmapped at every pass), or keeping freed memory for the next pass with --keep-freed-memory
  (the flag of our commands, ``pointrend_sem/cpu_memory.py``); --both-memory-settings also times
  ours in the other setting, as a third contender (the same model, alternating). The reference
  runs with glibc's large-allocation behaviour, as detectron2's and mmsegmentation's tools run,
  or with freed memory kept with --reference-memory kept. A contender without kept memory
  after one with it runs with the values glibc's thresholds settle at
  (``release_freed_memory``). Each timed pass follows an untimed pass of the same model in the
  same setting, as any pass after the first in a real run; the minor page faults of the timed
  passes are reported;
* peak memory of a forward pass, the largest over the runs (on CPU, over the untimed passes,
  which start from a trimmed heap). CUDA:
  ``torch.cuda.max_memory_allocated`` (absolute: weights and input included). CPU: the peak
  resident set size (``getrusage`` ``ru_maxrss``) minus the resident set size before the pass.
  Before each pass glibc's retained free memory is released (``malloc_trim``), so the pass's
  allocations show up as growth, and the peak is reset by writing 5 to ``/proc/self/clear_refs``
  (Linux >= 4.0). Where that file cannot be written the peak is not reset and the number is only
  a lower bound ("memory_method" in the output says which);
* point head share: in one extra forward pass, the time spent in
  ``model.sem_seg_head.point_logits`` (point feature sampling + point head MLP) and in the
  selection of uncertain points (``select_uncertain_grid_points``), as a fraction of that pass
  (timed through Python's profiler hook; the run stops with an error if either is not called).
  On CUDA each call's GPU time comes from a pair of CUDA events recorded on the stream, read
  after one synchronize at the end of the pass (no synchronize per call, which would inflate
  the share);
* --roofline: the machine's fp32 and bf16 ceilings (GFLOP/s of a large matmul and of a 3x3
  conv 256 -> 256 channels at 128 x 256, best of 5), each model's FLOPs in one pass (2 per
  multiply-add, ``torch.utils.flop_counter``), the GFLOP/s its median latency achieves and that
  as a fraction of the conv ceiling of its precision (``TEST.PRECISION``; references run fp32);
* --train: training iteration time (forward, backward, optimizer step; model.train(), in an
  EventStorage) on --batch-size random images with random labels at the config's crop size;
  with SOLVER.AMP.ENABLED as the trainer runs it: bf16 autocast on CPU, fp16 autocast with
  ``torch.amp.GradScaler`` on CUDA (detectron2's AMPTrainer);
* --data-loader: images/s of the config's train loader (``Trainer.build_train_loader``) over
  --loader-batches batches after the first one, when the config's dataset is available;
* --pipeline: images/s of one loader worker running the config's training mapper on
  --pipeline-samples synthetic --height x --width image + label PNGs, alternating with
  mmsegmentation's train pipeline with the same transforms (``benchmarking/pipeline.py``);
* --compare detectron2|mmseg: the reference PointRend built with our config's depth, classes
  and subdivision points, holding the same weights as ours; both are timed alternately (ours,
  theirs, ours, ...) on the same image; reported: its latency, the latency ratio (ours / theirs,
  of the medians), and the fraction of pixels whose predicted class agrees. Both references run
  on --device, taking the image from host memory at each pass as ours does; mmsegmentation's
  model is run through ``mmseg_logits``, one image after the other;
* --exported PATH (repeatable): each file of ``tools/export_model.py`` (fp32 or int8 ONNX, ...)
  run as ``pointrend_sem.export.runner`` runs it, alternating with ours, eager bf16 (on a CPU
  with bf16 units, when ours runs fp32) and the --compare reference; a second table gives each
  one's latency, its time relative to ours and to the reference, and its pixels with our class
  (``benchmarking/exported.py``);
* --memory-under-load N (alone, CPU): the resident memory of a ``SemSegPredictor`` of the config
  fed N random images of random sizes, per allocator setting (--memory-settings), each in a
  process of its own (``benchmarking/memory_under_load.py``).

Weights: random initialisation unless --weights is given; the config's MODEL.WEIGHTS is not
loaded (latency does not depend on the values, and nothing is downloaded). With --compare,
--weights is a checkpoint of the reference (detectron2's .pkl/.pth, mmsegmentation's .pth); it is
loaded into the reference and the same tensors are given to ours. Without --weights the
reference's random weights, with random normalization statistics, are copied into ours.

The table goes to stdout; progress bars and log messages go to stderr. The measurements live
in ``tools/benchmarking/``; this file is the command line and the order of the measurements.
"""

import argparse
import importlib
import json
from typing import Any, Dict, List, Optional

import pointrend_sem  # noqa: F401  # isort: skip  (first: detectron2 imported quietly)
import torch
from detectron2.modeling import build_model

from pointrend_sem import cpu_memory
from pointrend_sem.capabilities import device_available
from pointrend_sem.checkpoint import PointRendSemCheckpointer
from pointrend_sem.engine import setup
from pointrend_sem.errors import UserValueError, main_with_one_line_errors
from pointrend_sem.inference import build_inference_model

# tools/benchmarking beside this file: "tools.benchmarking" when imported (the tests),
# "benchmarking" when run as ``python tools/benchmark.py`` (tools/ is first on sys.path)
_PARTS = f"{__package__}.benchmarking" if __package__ else "benchmarking"
(
    exported,
    inputs,
    measure,
    memory_under_load,
    pipeline,
    point_share,
    references,
    report,
    roofline,
    training,
) = (
    importlib.import_module(f"{_PARTS}.{name}")
    for name in (
        "exported",
        "inputs",
        "measure",
        "memory_under_load",
        "pipeline",
        "point_share",
        "references",
        "report",
        "roofline",
        "training",
    )
)


DEVICE_CHOICES = ("cpu", "cuda")


def get_parser() -> argparse.ArgumentParser:
    """The command-line options."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", required=True, metavar="FILE", help="config file")
    parser.add_argument("--weights", default="", metavar="FILE", help="checkpoint to load")
    parser.add_argument(
        "--device",
        choices=DEVICE_CHOICES,
        help="where the models run (default: MODEL.DEVICE when given among the overrides, "
        "else cpu)",
    )
    parser.add_argument("--height", type=int, default=1024, help="input height (default 1024)")
    parser.add_argument("--width", type=int, default=2048, help="input width (default 2048)")
    parser.add_argument("--batch-size", type=int, default=1, help="images per pass (default 1)")
    parser.add_argument("--runs", type=int, default=10, help="timed passes (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed passes first (default 2)")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)"
    )
    parser.add_argument(
        "--compare", choices=references.COMPARE_CHOICES, help="reference to compare with"
    )
    parser.add_argument(
        "--exported",
        action="append",
        default=[],
        metavar="PATH",
        help="also time this file of tools/export_model.py (repeat for more: fp32 and int8 "
        "ONNX, ...) side by side with ours, eager bf16 where the CPU has it, and the --compare "
        "reference (benchmarking/exported.py)",
    )
    parser.add_argument("--train", action="store_true", help="also time training iterations")
    parser.add_argument(
        "--roofline",
        action="store_true",
        help="also measure the fp32/bf16 FLOP/s ceilings and each model's FLOPs and share of them",
    )
    parser.add_argument(
        "--data-loader", action="store_true", help="also measure the train loader's throughput"
    )
    parser.add_argument(
        "--loader-batches", type=int, default=20, help="batches timed by --data-loader"
    )
    parser.add_argument(
        "--pipeline",
        action="store_true",
        help="also time the training input pipeline per worker next to mmsegmentation's",
    )
    parser.add_argument(
        "--pipeline-samples", type=int, default=8, help="synthetic samples timed by --pipeline"
    )
    cpu_memory.add_memory_argument(parser)
    parser.add_argument(
        "--both-memory-settings",
        action="store_true",
        help="on CPU, also time ours in the other allocator setting (with --keep-freed-memory "
        "when it is not given, without when it is)",
    )
    parser.add_argument(
        "--reference-memory",
        choices=("glibc", "kept"),
        default="glibc",
        help="on CPU, how the reference's passes allocate: glibc's defaults, as detectron2 and "
        "mmsegmentation run (default), or keeping freed memory (as --keep-freed-memory)",
    )
    parser.add_argument(
        "--memory-under-load",
        type=int,
        nargs="?",
        const=120,
        metavar="N",
        help="only measure the resident memory of the config's predictor over N (default 120) "
        "random images of random sizes, per allocator setting, each in a fresh process",
    )
    parser.add_argument(
        "--memory-settings",
        nargs="+",
        choices=list(memory_under_load.SETTINGS),
        help="the settings of --memory-under-load (default: all that this machine has: "
        f"{', '.join(memory_under_load.available_settings())})",
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


def resolve_device(args) -> str:
    """The device to run on: ``--device``; without it ``MODEL.DEVICE`` when given among
    ``args.opts`` (the last one), else "cpu".

    Raises:
        UserValueError: MODEL.DEVICE is neither cpu nor cuda, --device and MODEL.DEVICE
            disagree, or the device is CUDA and this machine has none.
    """
    given = [value for key, value in zip(args.opts[::2], args.opts[1::2]) if key == "MODEL.DEVICE"]
    device, source = "cpu", "the default device"
    if given:
        device, source = str(given[-1]), f"MODEL.DEVICE {given[-1]}"
        try:
            device_type = torch.device(device).type
        except RuntimeError:
            device_type = None
        if device_type not in DEVICE_CHOICES:
            raise UserValueError(f"{source}: the benchmark runs on cpu or cuda (cuda:N).")
    if args.device:
        if given and torch.device(device).type != args.device:
            raise UserValueError(
                f"--device {args.device} contradicts MODEL.DEVICE {device} among the overrides; "
                "give one of them."
            )
        if not given:
            device = args.device
        source = f"--device {args.device}"
    if not device_available(device):
        raise UserValueError(
            f"{source}: CUDA is not available here (torch.cuda.is_available() is False): "
            "benchmark with --device cpu."
        )
    return device


def setup_on_device(args, device: str):
    """The frozen config of ``args`` (:func:`pointrend_sem.engine.setup`) with MODEL.DEVICE
    ``device``; ``args.opts`` is left as the user gave it (the results' "opts")."""
    return setup(
        argparse.Namespace(**{**vars(args), "opts": [*args.opts, "MODEL.DEVICE", device]}),
        log=False,
    )


def memory_reuse(keeps_freed_memory: bool, device: str) -> str:
    """How a contender's passes allocate host memory, for the table."""
    if device != "cpu":
        return "n/a (not on CPU)"
    if keeps_freed_memory:
        return "freed memory kept for reuse (--keep-freed-memory)"
    return "glibc defaults (large blocks mapped and unmapped each pass)"


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    """Parse ``argv``, measure, print the table (and write the JSON file); return the results."""
    args = get_parser().parse_args(argv)
    if args.runs < 1 or args.warmup < 0 or args.batch_size < 1:
        raise SystemExit("--runs and --batch-size must be >= 1, --warmup >= 0.")
    device = resolve_device(args)
    if args.memory_under_load is not None:
        return run_memory_under_load(args, device)
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = setup_on_device(args, device)
    results = report.describe_run(args, cfg)
    if device.startswith("cuda"):
        results["device_name"] = torch.cuda.get_device_name(device)
    results["precision"] = roofline.effective_precision(cfg)

    torch.manual_seed(args.seed)
    model = build_model(cfg).eval()
    image_rgb = inputs.random_image(args.height, args.width, args.seed)
    batch = inputs.detectron2_inputs(inputs.in_format(image_rgb, cfg.INPUT.FORMAT), args.batch_size)
    images = [x["image"] for x in batch]
    sizes = [(x["height"], x["width"]) for x in batch]
    reference = None
    if args.compare:
        reference = references.build_reference(args.compare, cfg, model, image_rgb, args)
    elif args.weights:
        PointRendSemCheckpointer(model, strict_fit=True).load(args.weights)
    # built once the weights are in the model (a reference copies its weights into ours)
    inference_model = build_inference_model(model, cfg)
    results["inference"] = inference_model.describe()
    ours = measure.Contender(
        "ours",
        lambda: inference_model.predict(images, sizes),
        inputs.sem_seg_labels,
        keeps_freed_memory=cpu_memory.apply_memory_argument(args, device),
    )
    results["memory_reuse"] = memory_reuse(ours.keeps_freed_memory, device)
    contenders = [ours]
    if args.both_memory_settings and device == "cpu":
        keeps = not ours.keeps_freed_memory
        contenders.append(measure.Contender("ours_other_memory", ours.forward, ours.labels, keeps))
        results["other_memory_reuse"] = memory_reuse(keeps, device)
    if reference is not None:
        reference.keeps_freed_memory = args.reference_memory == "kept" and device == "cpu"
        contenders.append(reference)
        results["reference"] = args.compare
        results["reference_memory_reuse"] = memory_reuse(reference.keeps_freed_memory, device)
    descriptions = {}  # the side-by-side table's contenders: name -> what it is
    if args.exported:
        descriptions["ours"] = f"ours, eager PyTorch ({results['precision']})"
        if results["precision"] == "fp32":
            bf16, results["eager_bf16"] = exported.bf16_contender(
                model, cfg, images, sizes, device, ours.keeps_freed_memory
            )
            if bf16 is not None:
                contenders.append(bf16)
                descriptions[bf16.name] = "ours, eager PyTorch (bf16)"
        image = inputs.in_format(image_rgb, cfg.INPUT.FORMAT)
        for index, path in enumerate(args.exported):
            name = exported.exported_name(index)
            contenders.append(
                exported.build_exported_contender(
                    path, image, args.batch_size, name, torch.get_num_threads()
                )
            )
            descriptions[name] = exported.describe_exported(path)
        if reference is not None:
            descriptions["reference"] = f"{args.compare} (reference, fp32)"

    records = measure.time_alternating(contenders, args.runs, args.warmup, device)
    if device == "cpu":  # ours' setting again for what follows (another contender ran last)
        measure.use_memory_setting(ours.keeps_freed_memory)
    results.update(report.inference_fields(records, args.batch_size))
    if descriptions:
        results["side_by_side"] = exported.side_by_side(records, descriptions, references.agreement)
    results.update(point_share.measure_point_share(inference_model.model, ours.forward, device))
    if args.roofline:
        results.update(roofline.measure_ceilings(device))
        for contender in (c for c in contenders if c.name in ("ours", "reference")):
            prefix = "" if contender is ours else "reference_"
            results.update(
                roofline.roofline_fields(
                    prefix,
                    roofline.count_flops(contender.forward),
                    results[f"{prefix}latency_median_ms"],
                    results["precision"] if contender is ours else "fp32",
                    results,
                )
            )
    if args.train:
        results.update(training.measure_training(cfg, model, args))
    if args.data_loader:
        results.update(training.measure_data_loader(cfg, args.loader_batches))
    if args.pipeline:
        results.update(
            pipeline.measure_pipeline(
                cfg, args.pipeline_samples, args.height, args.width, args.seed
            )
        )

    print(report.format_table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return results


def run_memory_under_load(args, device: str) -> Dict[str, Any]:
    """--memory-under-load: the curves and the summary table of each setting (stdout, and the
    JSON file); returns the results by setting."""
    if device != "cpu":
        raise UserValueError("--memory-under-load measures host memory: run it with --device cpu.")
    if args.memory_under_load < 1:
        raise UserValueError("--memory-under-load N needs N >= 1 images.")
    settings = args.memory_settings or memory_under_load.available_settings()
    results = memory_under_load.measure_settings(
        args.config_file,
        args.memory_under_load,
        settings,
        seed=args.seed,
        threads=args.threads,
        opts=args.opts,
    )
    print(memory_under_load.format_report(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main_with_one_line_errors(main)()
