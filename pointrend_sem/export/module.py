"""The whole inference of a PointRend semantic segmentor at one fixed input size, as one graph.

:class:`ExportableSegmentor` traces the inference module that every other prediction runs
(:func:`pointrend_sem.inference.build_inference_model`): its
:meth:`~pointrend_sem.inference.InferenceModel.predict` on one image, at a size fixed when it is
built, so the exported graph and eager PyTorch share one forward. What depends on the image's
size (padding to the backbone's size divisibility, points per subdivision step
``min(M, H_k * W_k)``) becomes a constant of the graph.

What the config asks for is exported or refused: ``TEST.PRECISION`` bf16/fp16 is exported as it
runs (backbone and coarse head in that dtype) to ``.pt2`` and AOTInductor, and refused for ONNX
(ONNX Runtime's CPU provider has no bf16 or fp16 convolutions); batch norms are folded
(``MODEL.FOLD_NORMS``). oneDNN's fused convolutions are an eager CPU kernel choice, not part of
the graph: ONNX Runtime and Inductor fuse on their own. The sidecar records the precision.

:func:`export_model` writes the graph as ONNX (``torch.onnx.export(..., dynamo=True)``), as a
``torch.export`` ExportedProgram (``.pt2``), or as an AOTInductor package (``.pt2``), with a
JSON sidecar ``PATH.json`` that :mod:`.runner` reads. The graph is traced on the model's device,
which the sidecar records ("device"); a ``.pt2`` ExportedProgram is saved with its weights on CPU
(``move_to_device_pass``) so that it loads on any machine, an AOTInductor package is compiled for
that device, an ONNX graph holds no device.

Shape shorthand: H x W: the export size, C: the model's output channels (max(classes, 2)).
"""

import json
import logging
import os
from typing import Any, Dict

import torch
from torch import nn
from torch.export.passes import move_to_device_pass

from ..capabilities import DTYPE_NAMES, cpp_compiler
from ..errors import UserFileNotFoundError, UserValueError
from ..inference import InferenceModel, build_inference_model
from ..modeling.binary import num_output_channels
from .runner import SIDECAR_SUFFIX

logger = logging.getLogger(__name__)

# --format values of tools/export_model.py, and the file each writes
FORMATS = ("onnx", "pt2", "aoti")
# config keys whose inference the exported graph does not reproduce: (key, value it must have)
UNSUPPORTED_OPTIONS = (("TEST.AUG.ENABLED", False), ("TEST.SLIDING_WINDOW.ENABLED", False))
# the graph's input and output names (ONNX) and the sidecar's keys
INPUT_NAME, OUTPUT_NAME = "image", "sem_seg"


class UnsupportedExportOption(UserValueError):
    """A config option whose inference cannot be exported; the message names the key."""


def _config_value(cfg, key: str):
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def check_exportable(cfg) -> None:
    """Raise :class:`UnsupportedExportOption` (one line naming the key) for an option whose
    inference the exported graph does not reproduce (test-time augmentation, sliding windows)."""
    for key, required in UNSUPPORTED_OPTIONS:
        value = _config_value(cfg, key)
        if value != required:
            raise UnsupportedExportOption(
                f"{key} {value} cannot be exported: the exported graph runs one whole-image "
                f"inference at a fixed size; set {key} {required}."
            )


def check_precision_exportable(dtype: torch.dtype, fmt: str) -> None:
    """Raise :class:`UnsupportedExportOption` (one line) for a reduced precision in a format
    whose runtime cannot run it (ONNX: ONNX Runtime's CPU provider)."""
    if fmt == "onnx" and dtype != torch.float32:
        name = DTYPE_NAMES[dtype]
        raise UnsupportedExportOption(
            f"TEST.PRECISION {name} cannot be exported to ONNX: ONNX Runtime's CPU provider has "
            f"no {name} convolutions; export --format pt2 (or aoti), or set TEST.PRECISION fp32."
        )


class ExportableSegmentor(nn.Module):
    """One (1, 3, H, W) float image in the input format (``INPUT.FORMAT``, values 0-255) ->
    (1, C, H, W) fp32 logits: the inference module's
    :meth:`~pointrend_sem.inference.InferenceModel.predict` at a size fixed when built.

    It runs in eager PyTorch too, with ``predict``'s results (tests/test_export.py).
    """

    def __init__(self, inference_model: InferenceModel, height: int, width: int):
        """
        Args:
            inference_model: of a model with whole-image inference (``sliding_window`` None).
            height, width: H x W, the one input size of the graph.
        """
        super().__init__()
        if inference_model.model.sliding_window is not None:
            raise UnsupportedExportOption(
                "TEST.SLIDING_WINDOW.ENABLED True cannot be exported: the exported graph runs "
                "one whole-image inference at a fixed size; set TEST.SLIDING_WINDOW.ENABLED "
                "False."
            )
        if height < 1 or width < 1:
            raise ValueError(f"The export size must be positive, got {height}x{width}.")
        self.inference_model = inference_model
        self.height, self.width = int(height), int(width)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """
        Args:
            image: (1, 3, H, W) float32, input format, values 0-255.

        Returns:
            (1, C, H, W) float32 logits.
        """
        (prediction,) = self.inference_model.predict([image[0]])
        return prediction["sem_seg"].unsqueeze(0).float()


def sidecar_path(path: str) -> str:
    """The JSON file next to an exported file: ``PATH.json``."""
    return path + SIDECAR_SUFFIX


def check_exported_file(path: str, option: str) -> None:
    """Raise :class:`~pointrend_sem.errors.UserFileNotFoundError` (one line naming ``option``)
    when the exported ``path`` or its sidecar ``PATH.json`` is missing."""
    for file in (path, sidecar_path(path)):
        if not os.path.isfile(file):
            raise UserFileNotFoundError(
                f"{option}: {file} not found; write it with tools/export_model.py (the model "
                "and its JSON sidecar)."
            )


def sidecar(
    cfg, fmt: str, height: int, width: int, device: str = "cpu", precision: str = "fp32"
) -> Dict[str, Any]:
    """What :mod:`.runner` needs to run an exported file like
    :class:`~pointrend_sem.predictor.SemSegPredictor`; ``device``: the device type the graph
    was traced on ("cpu", "cuda"), where the runner runs it by default; ``precision``: the
    dtype its backbone and coarse head run in ("fp32", "bf16", "fp16")."""
    return {
        "format": fmt,
        "input_name": INPUT_NAME,
        "output_name": OUTPUT_NAME,
        "input_format": cfg.INPUT.FORMAT,
        "height": int(height),
        "width": int(width),
        "num_outputs": num_output_channels(cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES),
        "resize_backend": cfg.INPUT.RESIZE_BACKEND,
        "device": torch.device(device).type,
        "precision": precision,
        "torch_version": torch.__version__,
    }


def export_graph(module: ExportableSegmentor, example: torch.Tensor, fmt: str, path: str) -> None:
    """Write ``module`` traced on ``example`` (1, 3, H, W), on the module's device, to ``path``
    in format ``fmt`` (one of :data:`FORMATS`). A "pt2" ExportedProgram is saved with its weights
    moved to CPU (``torch.export.load`` has no ``map_location``: CUDA weights would need CUDA to
    load); :mod:`.runner` moves it to the sidecar's device."""
    if fmt not in FORMATS:
        raise ValueError(f"Unknown export format {fmt!r}; choose one of {list(FORMATS)}.")
    if fmt == "aoti" and cpp_compiler() is None:
        raise UserValueError(
            "An AOTInductor package (--format aoti) is compiled C++, and no C++ compiler was "
            "found ($CXX, else g++, on PATH): install one (e.g. apt-get install g++) or export "
            "--format pt2 or onnx."
        )
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with torch.no_grad():
        if fmt == "onnx":
            program = torch.onnx.export(
                module,
                (example,),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamo=True,
                optimize=True,
                verbose=False,
            )
            program.save(path)
            return
        exported = torch.export.export(module, (example,))
        if fmt == "pt2":
            if example.device.type != "cpu":
                exported = move_to_device_pass(exported, "cpu")
            torch.export.save(exported, path)
        else:
            torch._inductor.aoti_compile_and_package(exported, package_path=path)


def export_model(
    cfg, model: nn.Module, fmt: str, height: int, width: int, path: str
) -> ExportableSegmentor:
    """Export the inference module of ``model`` (built from ``cfg``, weights loaded) at H x W,
    traced on the model's device, to ``path`` in format ``fmt`` and write the sidecar
    ``PATH.json`` (which records that device and the precision); return the exported module
    (for checks).

    Raises:
        UnsupportedExportOption: see :func:`check_exportable`, :func:`check_precision_exportable`.
    """
    check_exportable(cfg)
    inference_model = build_inference_model(model, cfg, fuse_convs=False)
    check_precision_exportable(inference_model.dtype, fmt)
    logger.info(f"Exporting {path} at {height}x{width}: {inference_model.describe()}.")
    module = ExportableSegmentor(inference_model, height, width).eval()
    device = inference_model.device
    example = torch.zeros(1, 3, height, width, dtype=torch.float32, device=device)
    export_graph(module, example, fmt, path)
    with open(sidecar_path(path), "w") as f:
        precision = DTYPE_NAMES[inference_model.dtype]
        json.dump(sidecar(cfg, fmt, height, width, device.type, precision), f, indent=2)
    return module


def agreement(expected: torch.Tensor, got: torch.Tensor, rel_tol: float = 1e-4) -> Dict[str, float]:
    """How well ``got`` reproduces ``expected``, both (N, C, H, W) scores: "same_class", the
    fraction of pixels with the same argmax; "max_rel_diff", the largest absolute difference
    divided by the largest magnitude of ``expected``; "close_fraction", the fraction of pixels
    whose every score is within ``rel_tol`` of that magnitude.

    Subdivision picks the M most uncertain cells by ``topk``: where two cells' uncertainties are
    equal up to float rounding, another runtime may pick the other one, and the few pixels it
    re-predicts differ by a lot (seen at 1024 x 2048 with random weights). "close_fraction"
    counts them; "max_rel_diff" shows them."""
    expected, got = expected.float().cpu(), got.float().cpu()
    if expected.shape != got.shape:
        raise ValueError(f"Shapes differ: {tuple(expected.shape)} vs {tuple(got.shape)}")
    same = (expected.argmax(1) == got.argmax(1)).float().mean().item()
    scale = expected.abs().max().clamp(min=1e-12)
    rel = (got - expected).abs().amax(1) / scale
    return {
        "same_class": same,
        "max_rel_diff": rel.max().item(),
        "close_fraction": (rel <= rel_tol).float().mean().item(),
    }


def random_image(height: int, width: int, seed: int = 0) -> torch.Tensor:
    """A seeded random (1, 3, H, W) float32 image, integer values 0-255."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (1, 3, height, width), generator=generator).float()
