#!/usr/bin/env python
"""Export a model's whole inference at a fixed input size to ONNX, torch.export or AOTInductor.

    python tools/export_model.py --config-file configs/demo_synthetic.yaml --format onnx \
        --height 128 --width 128 --output out/demo.onnx MODEL.WEIGHTS model_final.pth
    python tools/export_model.py --config-file configs/cityscapes_r50.yaml --format pt2 \
        --height 1024 --width 2048 --output out/r50.pt2 MODEL.WEIGHTS model.pth

One graph (:class:`pointrend_sem.export.module.ExportableSegmentor`, which traces the inference
module the predictor runs): normalization, backbone, coarse head, the S subdivision steps with
min(M, H_k * W_k) points each, resize to H x W. TEST.PRECISION bf16/fp16 is exported as it runs
to pt2/aoti (the sidecar's "precision" says which) and refused for onnx.
Input "image": float32 (1, 3, H, W) in INPUT.FORMAT's channel order, values 0-255; output
"sem_seg": (1, C, H, W) scores. Formats: "onnx" (``torch.onnx.export(..., dynamo=True)``),
"pt2" (``torch.export.export`` + ``torch.export.save``), "aoti" (AOTInductor package, a .pt2
file for ``torch._inductor.aoti_load_package``). A JSON sidecar OUTPUT.json is written next to
the file for ``pointrend_sem.export.runner``.

--device {cpu,cuda} (default cpu, whatever MODEL.DEVICE says): the model is built there, the
graph traced there (the sidecar records it as "device") and the check's PyTorch side runs there.
A .pt2 ExportedProgram is saved with its weights on CPU and runs on any machine (the runner
moves it to the sidecar's device, or runs it on CPU where CUDA is absent); an AOTInductor
package is compiled for the device and runs only there; ONNX holds no device (onnxruntime on CPU
here).

Before reporting success the file is loaded and run (as the runner runs it) on a seeded random
image and compared with eager PyTorch: the same class on >= 99.99 % of pixels, and >= 99.99 % of
pixels with scores within 1e-4 of their largest magnitude (not all: where subdivision's top-k
meets cells of equal uncertainty up to rounding, another runtime may refine other cells), else
the command fails. Both latencies are printed.
--check-images GLOB (repeatable): also run the file through ``pointrend_sem.export.runner``
(resize to the export size, scores back at each image's size) on these images and compare its
classes with the PyTorch model's on the same resized input; fails below 99.9 % of pixels.
TEST.AUG.ENABLED and TEST.SLIDING_WINDOW.ENABLED are refused.
"""

import argparse
import logging
import os
import sys
import time
from typing import Dict, List, Optional, Sequence

import pointrend_sem  # noqa: F401  # isort: skip  (first: detectron2 imported quietly)
import cv2
import torch
from detectron2.modeling import build_model

from pointrend_sem import main_with_one_line_errors
from pointrend_sem.capabilities import device_available
from pointrend_sem.checkpoint import PointRendSemCheckpointer, check_weights_file
from pointrend_sem.cpu_memory import add_memory_argument, apply_memory_argument
from pointrend_sem.engine import setup
from pointrend_sem.errors import UserValueError
from pointrend_sem.export.module import (
    FORMATS,
    agreement,
    check_exportable,
    export_model,
    random_image,
)
from pointrend_sem.export.runner import ExportedPredictor, load_graph
from pointrend_sem.image_inputs import expand_image_inputs
from pointrend_sem.inference import build_inference_model, fp32_math

# the check before success: same class on at least this fraction of pixels, scores within this
# fraction of their largest magnitude
MIN_SAME_CLASS = 0.9999
MAX_REL_DIFF = 1e-4
# --check-images: same class as PyTorch on at least this fraction of the images' pixels
MIN_SAME_CLASS_ON_IMAGES = 0.999


def get_parser() -> argparse.ArgumentParser:
    """The command-line options."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", required=True, metavar="FILE", help="config file")
    parser.add_argument("--format", required=True, choices=FORMATS, help="what to write")
    parser.add_argument("--height", type=int, required=True, help="input height H")
    parser.add_argument("--width", type=int, required=True, help="input width W")
    parser.add_argument("--output", required=True, metavar="PATH", help="file to write")
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="device to trace the graph on, and to run PyTorch on in the check (default cpu, "
        "whatever MODEL.DEVICE says); recorded in the sidecar",
    )
    parser.add_argument("--runs", type=int, default=3, help="timed runs of each (default 3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the check's image")
    parser.add_argument(
        "--check-images",
        action="append",
        default=[],
        metavar="GLOB",
        help="also compare with PyTorch on these images, through the runner (a file, a folder or "
        "a quoted glob; repeat the option for more)",
    )
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="also show the exporter's own INFO logs (torch.onnx, onnxscript, onnx_ir)",
    )
    add_memory_argument(parser)
    parser.add_argument(
        "opts",
        default=[],
        nargs=argparse.REMAINDER,
        help="config overrides as KEY VALUE pairs, e.g. MODEL.WEIGHTS model.pth",
    )
    return parser


def median_latency(fn, runs: int) -> float:
    """Median seconds of ``runs`` calls of ``fn`` after one untimed call (CUDA work included:
    synchronized)."""

    def call():
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    call()
    times = []
    for _ in range(max(runs, 1)):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def check_exported(
    model, path: str, fmt: str, height: int, width: int, seed: int, runs: int
) -> Dict[str, float]:
    """Run the exported file (as the runner runs it: on the sidecar's device, see
    :func:`~pointrend_sem.export.runner.load_graph`) and the eager inference module ``model``
    (:class:`~pointrend_sem.inference.InferenceModel`, on its device) on one random image;
    their agreement, compared on CPU (:func:`~pointrend_sem.export.module.agreement`), and
    median latencies (s).

    Raises:
        UserValueError: they disagree beyond :data:`MIN_SAME_CLASS` / :data:`MAX_REL_DIFF`.
    """
    image = random_image(height, width, seed)
    run_graph = load_graph(path, fmt)
    expected = model.predict([image[0]])[0]["sem_seg"][None].cpu()
    # the graph's fp32 as the model's: IEEE fp32 on a GPU (cuDNN would take TF32 on Ampere+)
    with fp32_math("fp32", model.device):
        got = torch.from_numpy(run_graph(image.numpy()))  # on CPU
    result = agreement(expected, got, MAX_REL_DIFF)
    if result["same_class"] < MIN_SAME_CLASS or result["close_fraction"] < MIN_SAME_CLASS:
        raise UserValueError(
            f"The exported {path} does not reproduce PyTorch: same class on "
            f"{result['same_class']:.4%} of pixels, scores within {MAX_REL_DIFF:g} of the "
            f"largest on {result['close_fraction']:.4%} (need {MIN_SAME_CLASS:.2%} each)."
        )
    result["pytorch_s"] = median_latency(lambda: model.predict([image[0]]), runs)
    result["exported_s"] = median_latency(lambda: run_graph(image.numpy()), runs)
    return result


def check_on_images(model, path: str, files: Sequence[str]) -> float:
    """The fraction of the pixels of ``files`` where the exported ``path``, run by
    :class:`~pointrend_sem.export.runner.ExportedPredictor`, predicts the class that the PyTorch
    inference module ``model`` predicts from the same resized input.

    Raises:
        UserValueError: an image cannot be read, or the fraction is below
            :data:`MIN_SAME_CLASS_ON_IMAGES`.
    """
    predictor = ExportedPredictor(path)
    same = total = 0
    for file in files:
        image_bgr = cv2.imread(file, cv2.IMREAD_COLOR)
        if image_bgr is None:
            raise UserValueError(f"--check-images: cannot read {file} as an image.")
        got = predictor(image_bgr)["sem_seg"].argmax(0).cpu()
        graph_input = torch.from_numpy(predictor.model_input(image_bgr)[0])
        expected = model.predict([graph_input], [image_bgr.shape[:2]])[0]["sem_seg"]
        same += (got == expected.argmax(0).cpu()).sum().item()
        total += got.numel()
    fraction = same / total
    if fraction < MIN_SAME_CLASS_ON_IMAGES:
        raise UserValueError(
            f"The exported {path} gives PyTorch's class on {fraction:.4%} of the pixels of "
            f"{len(files)} --check-images (need {MIN_SAME_CLASS_ON_IMAGES:.1%})."
        )
    return fraction


def configure_logging(verbose: bool) -> None:
    """Log to stderr: this package's INFO lines, and the libraries' (torch.onnx, onnxscript,
    onnx_ir: dozens of INFO lines an export) only with ``verbose``, else their warnings."""
    level = logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, stream=sys.stderr)
    logging.getLogger().setLevel(level)
    logging.getLogger("pointrend_sem").setLevel(logging.INFO)


def main(argv: Optional[List[str]] = None) -> Dict[str, float]:
    """Parse ``argv``, export, check; return the check's numbers."""
    args = get_parser().parse_args(argv)
    configure_logging(args.verbose)
    if not device_available(args.device):
        raise UserValueError("--device cuda: CUDA is not available here: export with --device cpu.")
    args.opts = [*args.opts, "MODEL.DEVICE", args.device]  # after the user's: --device wins
    cfg = setup(args, log=False)
    apply_memory_argument(args, cfg.MODEL.DEVICE)
    check_exportable(cfg)
    if args.height < 1 or args.width < 1:
        raise UserValueError(f"--height and --width must be >= 1, got {args.height}x{args.width}.")
    if args.format == "aoti" and not args.output.endswith(".pt2"):
        raise UserValueError(f"An AOTInductor package is a .pt2 file; got --output {args.output}.")
    files = expand_image_inputs(args.check_images, "--check-images") if args.check_images else []
    check_weights_file(cfg.MODEL.WEIGHTS)
    model = build_model(cfg).eval()
    PointRendSemCheckpointer(model, strict_fit=True).load(cfg.MODEL.WEIGHTS)
    start = time.perf_counter()
    export_model(cfg, model, args.format, args.height, args.width, args.output)
    seconds = time.perf_counter() - start
    inference_model = build_inference_model(model, cfg)
    result = check_exported(
        inference_model, args.output, args.format, args.height, args.width, args.seed, args.runs
    )
    size_mb = os.path.getsize(args.output) / 2**20
    print(
        f"Exported {args.output} ({args.format}, {args.height}x{args.width}, {args.device}, "
        f"{size_mb:.1f} MiB, {seconds:.0f} s) and {args.output}.json\n"
        f"check on a random image: same class {result['same_class']:.4%}, scores within "
        f"{MAX_REL_DIFF:g} {result['close_fraction']:.4%}, largest score difference "
        f"{result['max_rel_diff']:.1e} of the largest score\n"
        f"latency (median of {args.runs}, {torch.get_num_threads()} threads): PyTorch "
        f"{result['pytorch_s'] * 1e3:.1f} ms, {args.format} {result['exported_s'] * 1e3:.1f} ms"
    )
    if files:
        result["same_class_on_images"] = check_on_images(inference_model, args.output, files)
        print(
            f"check on {len(files)} images (--check-images), through the runner: same class as "
            f"PyTorch on {result['same_class_on_images']:.4%} of pixels"
        )
    return result


if __name__ == "__main__":
    main_with_one_line_errors(main)()
