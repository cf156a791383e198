"""The whole inference of a PointRend semantic segmentor at one fixed input size, as one graph.

:class:`ExportableSegmentor` calls the pieces of
:meth:`~pointrend_sem.modeling.PointRendSemanticSegmentor.predict`'s whole-image inference
(``normalize_images``, the backbone, the head's adaptive subdivision ``inference``,
:func:`~pointrend_sem.modeling.meta_arch.postprocess_logits`,
:func:`~pointrend_sem.modeling.binary.as_two_channels`) on one image, so the exported graph and
eager PyTorch share their code. What depends on the image's size is settled when it is built:
the padded size (bottom/right padding to the backbone's size divisibility, worked out by the
model's own ``pad_images``), the fraction of it the image covers, the points per subdivision step
``min(M, H_k * W_k)``; and batch norms are folded into the convolutions once and for all, as
``MODEL.FOLD_NORMS`` folds them at each eager call.

:func:`export_model` writes the graph as ONNX (``torch.onnx.export(..., dynamo=True)``), as a
``torch.export`` ExportedProgram (``.pt2``), or as an AOTInductor package (``.pt2``), with a
JSON sidecar ``PATH.json`` that :mod:`.runner` reads. The graph is traced on the model's device,
which the sidecar records ("device"); a ``.pt2`` ExportedProgram is saved with its weights on CPU
(``move_to_device_pass``) so that it loads on any machine, an AOTInductor package is compiled for
that device, an ONNX graph holds no device.

Shape shorthand: H x W: the export size, H_p x W_p: H x W padded to the backbone's size
divisibility, C: the model's output channels (max(classes, 2)).
"""

import copy
import json
import os
from typing import Any, Dict, Optional, Tuple

import torch
from detectron2.layers import Conv2d
from torch import nn
from torch.export.passes import move_to_device_pass
from torch.nn import functional as F

from ..capabilities import cpp_compiler
from ..errors import UserValueError
from ..modeling.binary import as_two_channels, num_output_channels
from ..modeling.conv_norm_folding import (
    NormFoldedConv2d,
    NormFoldedPointFC,
    fold_norm_into,
    is_foldable,
)
from ..modeling.meta_arch import postprocess_logits
from ..modeling.point_head import PointFC
from .runner import SIDECAR_SUFFIX

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


def bake_folded_norms_(model: nn.Module) -> int:
    """Fold, in place and for good, the batch norm of every layer of ``model`` that
    ``MODEL.FOLD_NORMS`` folds at each inference call (:mod:`~.modeling.conv_norm_folding`):
    the layer gets the folded weight and bias (same arithmetic,
    :func:`~.modeling.conv_norm_folding.fold_norm_into`) and no norm. Call it on a copy of an
    eval-mode model; return the number of layers folded."""
    count = 0
    with torch.no_grad():
        for module in model.modules():
            if not isinstance(module, (NormFoldedConv2d, NormFoldedPointFC)):
                continue
            norm = module.norm
            if not is_foldable(norm):
                continue
            weight, bias = fold_norm_into(module.weight, module.bias, norm)
            module.weight = nn.Parameter(weight, requires_grad=False)
            module.bias = nn.Parameter(bias, requires_grad=False)
            module.norm = None
            module.__class__ = Conv2d if isinstance(module, NormFoldedConv2d) else PointFC
            count += 1
    return count


class ExportableSegmentor(nn.Module):
    """One (1, 3, H, W) float image in the input format (``INPUT.FORMAT``, values 0-255) ->
    (1, C, H, W) logits, :meth:`~pointrend_sem.modeling.PointRendSemanticSegmentor.predict`'s
    whole-image inference with output size H x W at a size fixed when built.

    It runs in eager PyTorch too, with ``predict``'s results (tests/test_export.py).
    """

    def __init__(self, model: nn.Module, height: int, width: int):
        """
        Args:
            model: a :class:`~pointrend_sem.modeling.PointRendSemanticSegmentor` with
                whole-image inference (``sliding_window`` None); it is copied (in eval mode,
                norms folded when ``MODEL.FOLD_NORMS`` folds them), not changed.
            height, width: H x W, the one input size of the graph.
        """
        super().__init__()
        if getattr(model, "sliding_window", None) is not None:
            raise UnsupportedExportOption(
                "TEST.SLIDING_WINDOW.ENABLED True cannot be exported: the exported graph runs "
                "one whole-image inference at a fixed size; set TEST.SLIDING_WINDOW.ENABLED "
                "False."
            )
        if height < 1 or width < 1:
            raise ValueError(f"The export size must be positive, got {height}x{width}.")
        self.model = copy.deepcopy(model).eval()
        bake_folded_norms_(self.model)
        self.height, self.width = int(height), int(width)
        # the padding of the seam's own pad_images, learnt on an image of the export size
        with torch.no_grad():
            probe = torch.zeros(3, self.height, self.width, device=self.model.device)
            self.padded_size: Tuple[int, int] = tuple(
                int(s) for s in self.model.pad_images([probe]).tensor.shape[-2:]
            )
        fraction = (self.height / self.padded_size[0], self.width / self.padded_size[1])
        # None when the image fills the padded tensor: the head then skips its padding mask
        self.valid_fraction: Optional[Tuple[float, float]] = (
            None if fraction == (1.0, 1.0) else fraction
        )
        self.direct = self.model.output_resize == "direct"
        self.eval()

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """
        Args:
            image: (1, 3, H, W) float32, input format, values 0-255.

        Returns:
            (1, C, H, W) float32 logits.
        """
        model = self.model
        (normalized,) = model.normalize_images([image[0]])
        pad_h, pad_w = self.padded_size[0] - self.height, self.padded_size[1] - self.width
        batch = F.pad(normalized, (0, pad_w, 0, pad_h), value=0.0).unsqueeze(0)
        if model.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        features = model.backbone(batch)
        valid_fraction = None
        if self.valid_fraction is not None:
            valid_fraction = torch.tensor(
                [self.valid_fraction], dtype=torch.float32, device=batch.device
            )
        refined, _ = model.sem_seg_head.inference(features, valid_fraction)
        logits = postprocess_logits(
            refined[0],
            self.padded_size,
            (self.height, self.width),
            self.height,
            self.width,
            direct=self.direct,
        )
        return as_two_channels(logits, dim=0).unsqueeze(0).float()


def sidecar_path(path: str) -> str:
    """The JSON file next to an exported file: ``PATH.json``."""
    return path + SIDECAR_SUFFIX


def sidecar(cfg, fmt: str, height: int, width: int, device: str = "cpu") -> Dict[str, Any]:
    """What :mod:`.runner` needs to run an exported file like
    :class:`~pointrend_sem.predictor.SemSegPredictor`; ``device``: the device type the graph
    was traced on ("cpu", "cuda"), where the runner runs it by default."""
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
    """Export ``model`` (built from ``cfg``, weights loaded) at H x W, traced on its device, to
    ``path`` in format ``fmt`` and write the sidecar ``PATH.json`` (which records that device);
    return the exported module (for checks).

    Raises:
        UnsupportedExportOption: see :func:`check_exportable`.
    """
    check_exportable(cfg)
    module = ExportableSegmentor(model, height, width).eval()
    device = torch.device(module.model.device)
    example = torch.zeros(1, 3, height, width, dtype=torch.float32, device=device)
    export_graph(module, example, fmt, path)
    with open(sidecar_path(path), "w") as f:
        json.dump(sidecar(cfg, fmt, height, width, device.type), f, indent=2)
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
