"""Precision of inference (``TEST.PRECISION``): which dtype runs the backbone and the coarse head,
checked against what the device can run, and the pieces that keep the rest of PointRend in fp32.

Shape shorthand in this module: N: images, C_f x H_f x W_f: one backbone feature map, P: points.

What runs in which precision, and why (the inference copy of :mod:`.builder`):

* backbone and coarse head: reduced precision, their batch norms folded in fp32 before the
  cast (:mod:`.norm_folding`). They hold nearly all the FLOPs, and bf16 matrix units (AMX,
  tensor cores) run them several times faster; the padded input is cast as it enters
  (:class:`CastInputBackbone`);
* coarse logits: cast to fp32 as they leave the coarse head (:class:`Float32CoarseHead`), so
  that the subdivision's bilinear upsampling, the uncertainty ranking and the choice of points
  see fp32 logits;
* point head: fp32 on point features sampled from the reduced-precision feature maps
  (:func:`point_sample_as_float`: only the sampled values are cast, not the maps); it is a
  small MLP over a few thousand points per step, and it decides the class of exactly the
  pixels on the boundaries;
* final logits: fp32.

Which precisions a device runs is :mod:`pointrend_sem.capabilities`'s answer: a precision that
it cannot run is refused with one line, where it is only emulated it runs with a warning, and
"auto" picks bf16 only where the device has bf16 instructions.
"""

import contextlib
import functools
import logging
from typing import Dict, Iterator, Optional

import torch
from detectron2.modeling import Backbone
from torch import nn

from ..capabilities import cuda_has_ampere_math, onednn_enabled, precision_support
from ..errors import UserValueError

logger = logging.getLogger(__name__)

# TEST.PRECISION values and the dtype each runs the backbone and coarse head in (None: fp32)
PRECISIONS = {
    "fp32": None,
    "tf32": None,  # fp32 tensors; CUDA's convolutions and matmuls may use TF32 (see fp32_math)
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
    "auto": None,
}


def resolve_precision(precision: str, device) -> Optional[torch.dtype]:
    """The dtype of the backbone and coarse head for ``TEST.PRECISION`` on ``device``; None for
    fp32. What the device can run is decided by :mod:`pointrend_sem.capabilities`:

    * "auto": bf16 where the device has bf16 instructions (a CPU with AMX or avx512_bf16, a
      CUDA GPU with bf16), fp32 elsewhere; its choice is logged once per device;
    * "bf16" / "fp16" where oneDNN only emulates it (slower than fp32): runs, with a warning
      once per device;
    * "bf16" / "fp16" where the device cannot run it: refused;
    * "tf32": a CUDA GPU with compute capability 8.0 or later only (:func:`fp32_math`).

    Raises:
        UserValueError: an unknown precision, or one the device cannot run (naming what it
            lacks and the precision to use instead).
    """
    if precision not in PRECISIONS:
        raise UserValueError(f"TEST.PRECISION is {precision!r}; choose one of {list(PRECISIONS)}.")
    device_type = torch.device(device).type
    # the answers depend on oneDNN's switch too (a test may turn it off)
    if precision == "auto":
        return _auto_precision(device_type, onednn_enabled())
    if precision == "tf32" and not (device_type == "cuda" and cuda_has_ampere_math()):
        raise UserValueError(
            "TEST.PRECISION tf32 is a mode of CUDA GPUs with compute capability 8.0 or later "
            f"(TF32 units), which this {device_type.upper()} is not: use TEST.PRECISION fp32."
        )
    dtype = PRECISIONS[precision]
    if dtype is not None:
        _check_runs(precision, device_type, onednn_enabled())
    return dtype


# the fp32 matmul/convolution modes of torch's CUDA backends (torch >= 2.9's API), set together
_CUDA_FP32_BACKENDS = ("cudnn.conv", "cudnn.rnn", "cuda.matmul")


@contextlib.contextmanager
def fp32_math(precision: str, device) -> Iterator[None]:
    """Inside the block, fp32 on a CUDA device is what ``precision`` says: IEEE fp32 for "fp32"
    (and the fp32 parts of every other precision), TF32 for "tf32". cuDNN convolutions run in
    TF32 by default on Ampere and later GPUs (10 bits of mantissa instead of 23), so without
    this, ``TEST.PRECISION fp32`` would not be fp32 there. Restored after the block; does nothing
    on other devices."""
    if torch.device(device).type != "cuda":
        yield
        return
    mode = "tf32" if precision == "tf32" else "ieee"
    backends = [
        getattr(getattr(torch.backends, first), second)
        for first, second in (name.split(".") for name in _CUDA_FP32_BACKENDS)
    ]
    saved = [backend.fp32_precision for backend in backends]
    try:
        for backend in backends:
            backend.fp32_precision = mode
        yield
    finally:
        for backend, value in zip(backends, saved):
            backend.fp32_precision = value


@functools.lru_cache(maxsize=None)
def _check_runs(precision: str, device_type: str, onednn_on: bool) -> None:
    """Raise when ``device_type`` cannot run ``precision``; warn (once) where it is emulated."""
    support = precision_support(PRECISIONS[precision], device_type)
    if not support.runs:
        raise UserValueError(
            f"TEST.PRECISION {precision} cannot run on this {device_type.upper()}: "
            f"{support.detail}. Use TEST.PRECISION fp32, or auto (the fastest precision this "
            "machine runs)."
        )
    if not support.native:
        logger.warning(
            f"TEST.PRECISION {precision} runs emulated on this {device_type.upper()}: "
            f"{support.detail}. TEST.PRECISION fp32 is faster here."
        )


@functools.lru_cache(maxsize=None)
def _auto_precision(device_type: str, onednn_on: bool) -> Optional[torch.dtype]:
    support = precision_support(torch.bfloat16, device_type)
    choice = "bf16" if support.native else "fp32"
    logger.info(
        f"TEST.PRECISION auto: {choice} backbone and coarse head on this {device_type.upper()} "
        f"(bf16: {support.detail})."
    )
    return torch.bfloat16 if support.native else None


def point_sample_as_float(
    features: torch.Tensor, point_coords: torch.Tensor, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Bilinear samples of reduced-precision feature maps at fp32 points, in ``dtype``:
    ``point_sample(features.to(dtype), point_coords, align_corners=False)`` (zero padding)
    without casting the whole map, and without rounding the coordinates to the maps' dtype
    (``grid_sample`` wants them in the same dtype: bf16 coordinates are off by up to a cell).

    Args:
        features: (N, C_f, H_f, W_f) feature maps of any float dtype and memory layout.
        point_coords: (N, P, 2) (x, y) in [0, 1].

    Returns:
        (N, C_f, P) samples.
    """
    n, channels, height, width = features.shape
    points = point_coords.shape[1]
    x = point_coords[..., 0].float() * width - 0.5  # coordinates in fp32 whatever ``dtype``
    y = point_coords[..., 1].float() * height - 0.5
    x0, y0 = x.floor(), y.floor()
    fx, fy = x - x0, y - y0
    corners_x = torch.stack([x0, x0 + 1, x0, x0 + 1], dim=1)  # (N, 4, P)
    corners_y = torch.stack([y0, y0, y0 + 1, y0 + 1], dim=1)
    weights = torch.stack([(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy], dim=1)
    inside = (corners_x >= 0) & (corners_x < width) & (corners_y >= 0) & (corners_y < height)
    weights = (weights * inside).to(dtype)
    index = (corners_y.clamp(0, height - 1) * width + corners_x.clamp(0, width - 1)).long()
    if features.is_contiguous(memory_format=torch.channels_last):
        # (N, H_f * W_f, C_f) rows, a view: gather whole rows of channels
        rows = features.permute(0, 2, 3, 1).reshape(n, height * width, channels)
        batch = torch.arange(n, device=features.device)[:, None]
        gathered = rows[batch, index.reshape(n, 4 * points)].to(dtype)  # (N, 4P, C_f)
        gathered = gathered.reshape(n, 4, points, channels) * weights[..., None]
        return gathered.sum(dim=1).transpose(1, 2)
    flat = features.flatten(2)
    gathered = flat.gather(2, index.reshape(n, 1, 4 * points).expand(n, channels, 4 * points))
    gathered = gathered.to(dtype).reshape(n, channels, 4, points)
    return (gathered * weights[:, None]).sum(dim=2)


class CastInputBackbone(Backbone):
    """A backbone whose parameters are in a reduced dtype, taking the fp32 (N, 3, H, W) batch:
    it is cast as it enters. Size divisibility, padding constraints and output shapes are the
    wrapped backbone's."""

    def __init__(self, backbone: Backbone, dtype: torch.dtype):
        super().__init__()
        self.body = backbone
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        return self.body(x.to(self.dtype))

    @property
    def size_divisibility(self) -> int:
        return self.body.size_divisibility

    @property
    def padding_constraints(self) -> Dict[str, int]:
        return self.body.padding_constraints

    def output_shape(self):
        return self.body.output_shape()


class Float32CoarseHead(nn.Module):
    """A coarse head in a reduced dtype whose ``layers(features)`` (the coarse-head contract of
    :mod:`pointrend_sem.modeling.coarse_head`) returns fp32 logits (N, C, H_c, W_c)."""

    def __init__(self, coarse_head: nn.Module):
        super().__init__()
        self.body = coarse_head
        self.common_stride = coarse_head.common_stride

    def layers(self, features: Dict[str, torch.Tensor]) -> torch.Tensor:
        return self.body.layers(features).float()
