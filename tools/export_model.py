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

--quantize int8 (with --format onnx) --calibration-images GLOB (repeatable; a few dozen images):
the fp32 graph, exported and checked as above, is quantized by onnxruntime's static
quantization (``pointrend_sem.export.quantize``: QDQ, u8 activations, per-channel s8 weights in
7 bits, the backbone, FPN and coarse head; the point part stays fp32), calibrated on the images
through the runner's pre-processing. The int8 file is then run through the runner on the
--check-images (default: the calibration images) and compared with fp32 PyTorch on the same
resized input: below --min-same-class (default 0.98) of the pixels with PyTorch's class the
command fails in one line and writes nothing to OUTPUT. The sidecar records "precision": "int8",
the "quantization" and the "calibration" images.
"""

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import pointrend_sem  # noqa: F401  # isort: skip  (first: detectron2 imported quietly)
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
    sidecar_path,
)
from pointrend_sem.export.quantize import read_images, write_int8
from pointrend_sem.export.runner import ExportedPredictor, load_graph
from pointrend_sem.image_inputs import expand_image_inputs
from pointrend_sem.inference import build_inference_model, fp32_math

# the check before success: same class on at least this fraction of pixels, scores within this
# fraction of their largest magnitude
MIN_SAME_CLASS = 0.9999
MAX_REL_DIFF = 1e-4
# --check-images: same class as PyTorch on at least this fraction of the images' pixels
MIN_SAME_CLASS_ON_IMAGES = 0.999
# --quantize int8: the default of --min-same-class (the trained demo model gives 99.9 % on its
# validation images; a random model 75-93 %: near-ties everywhere)
DEFAULT_MIN_SAME_CLASS_INT8 = 0.98


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
        "--quantize",
        choices=("int8",),
        help="with --format onnx: write an int8 graph (static quantization of the backbone, FPN "
        "and coarse head, calibrated on --calibration-images)",
    )
    parser.add_argument(
        "--calibration-images",
        action="append",
        default=[],
        metavar="GLOB",
        help="--quantize: the images whose activation ranges set the quantization (a file, a "
        "folder or a quoted glob; repeat the option for more; a few dozen of your images)",
    )
    parser.add_argument(
        "--min-same-class",
        type=float,
        default=DEFAULT_MIN_SAME_CLASS_INT8,
        metavar="FRACTION",
        help="--quantize: refuse the int8 file below this fraction of pixels with fp32 "
        "PyTorch's class on the --check-images, or the calibration images (default "
        f"{DEFAULT_MIN_SAME_CLASS_INT8})",
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


def same_class_on_images(model, path: str, files: Sequence[str], option: str) -> float:
    """The fraction of the pixels of ``files`` where the exported ``path``, run by
    :class:`~pointrend_sem.export.runner.ExportedPredictor`, predicts the class that the PyTorch
    inference module ``model`` predicts from the same resized input.

    Raises:
        UserValueError: an image cannot be read (named, with ``option``).
    """
    predictor = ExportedPredictor(path)
    same = total = 0
    for image_bgr in read_images(files, option):
        got = predictor(image_bgr)["sem_seg"].argmax(0)
        graph_input = torch.from_numpy(predictor.model_input(image_bgr)[0])
        expected = model.predict([graph_input], [image_bgr.shape[:2]])[0]["sem_seg"]
        same += int((got == expected.argmax(0).cpu().numpy()).sum())
        total += got.size
    return same / total


def check_on_images(model, path: str, files: Sequence[str]) -> float:
    """:func:`same_class_on_images` of the --check-images ``files``.

    Raises:
        UserValueError: an image cannot be read, or the fraction is below
            :data:`MIN_SAME_CLASS_ON_IMAGES`.
    """
    fraction = same_class_on_images(model, path, files, "--check-images")
    if fraction < MIN_SAME_CLASS_ON_IMAGES:
        raise UserValueError(
            f"The exported {path} gives PyTorch's class on {fraction:.4%} of the pixels of "
            f"{len(files)} --check-images (need {MIN_SAME_CLASS_ON_IMAGES:.1%})."
        )
    return fraction


def quantize_checked(model, fp32_path: str, output: str, args, calibration, check) -> Dict:
    """--quantize int8: quantize the checked fp32 ``fp32_path`` (in a temporary folder) on the
    ``calibration`` files, write its sidecar, compare it with the PyTorch inference module
    ``model`` on the ``check`` files, and move it to ``output`` only if it reaches
    ``args.min_same_class``; returns the check's numbers.

    Raises:
        UserValueError: the int8 file falls below --min-same-class (nothing is written to
            ``output``), or an image cannot be read.
    """
    int8_path = os.path.join(os.path.dirname(fp32_path), "int8.onnx")
    start = time.perf_counter()
    write_int8(fp32_path, int8_path, calibration)
    seconds = time.perf_counter() - start
    option = "--check-images" if args.check_images else "--calibration-images"
    share = same_class_on_images(model, int8_path, check, option)
    which = "--check-images" if args.check_images else "calibration images"
    print(
        f"int8: quantized in {seconds:.0f} s; same class as fp32 PyTorch on {share:.4%} of the "
        f"pixels of {len(check)} {which} (--min-same-class {args.min_same_class:.2%})"
    )
    if share < args.min_same_class:
        raise UserValueError(
            f"The int8 graph gives fp32 PyTorch's class on {share:.4%} of the pixels of "
            f"{len(check)} {which}, below --min-same-class {args.min_same_class:g}: nothing was "
            f"written to {output} (calibrate on more of your images, or lower --min-same-class)."
        )
    image = random_image(args.height, args.width, args.seed).numpy()
    run_int8 = load_graph(int8_path, "onnx")
    int8_s = median_latency(lambda: run_int8(image), args.runs)
    os.replace(int8_path, output)
    os.replace(sidecar_path(int8_path), sidecar_path(output))
    return {"same_class_int8": share, "int8_s": int8_s}


def configure_logging(verbose: bool) -> None:
    """Log to stderr: this package's INFO lines, and the libraries' (torch.onnx, onnxscript,
    onnx_ir: dozens of INFO lines an export) only with ``verbose``, else their warnings."""
    level = logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, stream=sys.stderr)
    logging.getLogger().setLevel(level)
    logging.getLogger("pointrend_sem").setLevel(logging.INFO)


def check_quantize_arguments(args) -> List[str]:
    """The calibration files of --quantize (none without it).

    Raises:
        UserValueError: --quantize with another format than onnx, without calibration images,
            or with --min-same-class outside [0, 1]; --calibration-images without --quantize.
    """
    if not args.quantize:
        if args.calibration_images:
            raise UserValueError(
                "--calibration-images is for --quantize int8; add it or drop them."
            )
        return []
    if args.format != "onnx":
        raise UserValueError(
            f"--quantize {args.quantize} writes an ONNX graph for onnxruntime: use --format onnx, "
            f"not {args.format}."
        )
    if not args.calibration_images:
        raise UserValueError(
            "--quantize int8 needs --calibration-images GLOB: a few dozen of your images."
        )
    if not 0.0 <= args.min_same_class <= 1.0:
        raise UserValueError(
            f"--min-same-class is a fraction of pixels in [0, 1], got {args.min_same_class:g}."
        )
    return expand_image_inputs(args.calibration_images, "--calibration-images")


def main(argv: Optional[List[str]] = None) -> Dict[str, float]:
    """Parse ``argv``, export, check (and quantize); return the check's numbers."""
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
    calibration = check_quantize_arguments(args)
    files = expand_image_inputs(args.check_images, "--check-images") if args.check_images else []
    check_weights_file(cfg.MODEL.WEIGHTS)
    model = build_model(cfg).eval()
    PointRendSemCheckpointer(model, strict_fit=True).load(cfg.MODEL.WEIGHTS)
    if not args.quantize:
        return export_and_check(cfg, model, args, args.output, files)[0]
    # the fp32 graph and the int8 one are written next to OUTPUT, which gets the int8 graph
    # only once it has passed its check
    folder = os.path.dirname(os.path.abspath(args.output))
    os.makedirs(folder, exist_ok=True)
    scratch = tempfile.mkdtemp(prefix=".export-int8-", dir=folder)
    try:
        fp32_path = os.path.join(scratch, "fp32.onnx")
        result, inference_model = export_and_check(
            cfg, model, args, fp32_path, [], written="the fp32 graph to quantize"
        )
        check = files or calibration
        result.update(
            quantize_checked(inference_model, fp32_path, args.output, args, calibration, check)
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(
        f"Wrote {args.output} (int8) and {args.output}.json; latency (median of {args.runs}, "
        f"{torch.get_num_threads()} threads): PyTorch fp32 {result['pytorch_s'] * 1e3:.1f} ms, "
        f"onnx fp32 {result['exported_s'] * 1e3:.1f} ms, onnx int8 {result['int8_s'] * 1e3:.1f} ms"
    )
    return result


def export_and_check(
    cfg, model, args, path: str, files: Sequence[str], written: str = ""
) -> Tuple[Dict, Any]:
    """Export ``model`` as ``args`` say to ``path``, check it against PyTorch on a random image
    (and on the --check-images ``files``), print what was written (``written``, by default
    "PATH and PATH.json") and the check; return the check's numbers and the PyTorch inference
    module checked against."""
    written = written or f"{path} and {path}.json"
    start = time.perf_counter()
    export_model(cfg, model, args.format, args.height, args.width, path)
    seconds = time.perf_counter() - start
    inference_model = build_inference_model(model, cfg)
    result = check_exported(
        inference_model, path, args.format, args.height, args.width, args.seed, args.runs
    )
    size_mb = os.path.getsize(path) / 2**20
    print(
        f"Exported {written} ({args.format}, {args.height}x{args.width}, {args.device}, "
        f"{size_mb:.1f} MiB, {seconds:.0f} s)\n"
        f"check on a random image: same class {result['same_class']:.4%}, scores within "
        f"{MAX_REL_DIFF:g} {result['close_fraction']:.4%}, largest score difference "
        f"{result['max_rel_diff']:.1e} of the largest score\n"
        f"latency (median of {args.runs}, {torch.get_num_threads()} threads): PyTorch "
        f"{result['pytorch_s'] * 1e3:.1f} ms, {args.format} {result['exported_s'] * 1e3:.1f} ms"
    )
    if files:
        result["same_class_on_images"] = check_on_images(inference_model, path, files)
        print(
            f"check on {len(files)} images (--check-images), through the runner: same class as "
            f"PyTorch on {result['same_class_on_images']:.4%} of pixels"
        )
    return result, inference_model


if __name__ == "__main__":
    main_with_one_line_errors(main)()
