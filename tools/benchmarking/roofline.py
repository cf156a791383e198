"""A compute roofline: the machine's fp32 and bf16 ceilings next to the FLOP/s a model achieves.

FLOPs are counted as 2 per multiply-add (so a matmul of (M, K) by (K, N) is 2 M N K FLOPs), by
``torch.utils.flop_counter.FlopCounterMode`` over one inference pass: convolutions, matrix
products and the other ops it knows; elementwise ops, norms, sampling and sorting are not
counted (they are memory-bound, a few % of the FLOPs). fvcore's ``FlopCountAnalysis`` reports
multiply-adds, half this number. The oneDNN fused convolutions of a reduced-precision copy
(``pointrend_sem.inference.onednn_fusion``) are counted as the convolutions they are.
"""

import time
from typing import Any, Callable, Dict, Optional

import torch
from torch.nn import functional as F
from torch.utils.flop_counter import (
    FlopCounterMode,
    conv_flop_count,
    flop_registry,
    register_flop_formula,
)

from .measure import synchronize

# The ceilings' workloads: a square matmul, and a 3x3 conv 256 -> 256 channels over a
# 128 x 256 map in channels-last layout (a ResNet stage-2 / FPN-sized layer at 1024 x 2048).
MATMUL_SIZE = 2048
CONV_SHAPE = (1, 256, 128, 256)

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


# what FlopCounterMode does not know (registered once, also when this file is loaded twice: as
# tools.benchmarking.roofline and as benchmarking.roofline)
_FUSED_CONV = getattr(torch.ops.mkldnn, "_convolution_pointwise", None)
if _FUSED_CONV is not None and _FUSED_CONV not in flop_registry:

    @register_flop_formula(_FUSED_CONV)
    def _fused_conv_flops(x_shape, *args, out_shape=None, **kwargs) -> int:
        # .default: (X, W, B, padding, ..., 10 arguments); .binary: (X, other, W, B, ..., 13)
        w_shape = args[0] if len(args) < 12 else args[1]
        return conv_flop_count(x_shape, w_shape, out_shape)


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs (2 per multiply-add) of one call of ``fn``, run once under no_grad."""
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        fn()
    return int(counter.get_total_flops())


def best_flops_per_s(fn: Callable[[], Any], flops: float, device: str, repeats: int) -> float:
    """FLOP/s of the fastest of ``repeats`` calls of ``fn`` (after one untimed call)."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return flops / best


def measure_ceilings(device: str, repeats: int = 5, scale: float = 1.0) -> Dict[str, float]:
    """The machine's achievable FLOP/s per dtype, "ceiling_<dtype>_matmul_gflops" and
    "ceiling_<dtype>_conv_gflops" for fp32 and bf16: the fastest of ``repeats`` runs of a
    ``MATMUL_SIZE`` square matmul and of a 3x3 conv of ``CONV_SHAPE``. ``scale`` < 1 shrinks
    both workloads (tests). On CUDA "fp32" is IEEE fp32, not TF32. A dtype the device cannot
    run (:mod:`pointrend_sem.capabilities`) is not measured: "ceiling_<dtype>_skipped" says
    why."""
    from pointrend_sem.capabilities import precision_support
    from pointrend_sem.inference import fp32_math

    gen = torch.Generator().manual_seed(0)
    size = max(int(MATMUL_SIZE * scale), 16)
    n, channels, height, width = CONV_SHAPE
    height, width = max(int(height * scale), 8), max(int(width * scale), 8)
    fields = {}
    # fp32 is IEEE fp32 on a GPU too (cuDNN would take TF32 on Ampere+), as inference runs it
    with torch.no_grad(), fp32_math("fp32", device):
        for name, dtype in DTYPES.items():
            support = precision_support(dtype, device)
            if not support.runs:
                fields[f"ceiling_{name}_skipped"] = f"not measured: {support.detail}"
                continue
            a = torch.randn(size, size, generator=gen).to(device, dtype)
            b = torch.randn(size, size, generator=gen).to(device, dtype)
            gflops = best_flops_per_s(lambda: a @ b, 2.0 * size**3, device, repeats) / 1e9
            fields[f"ceiling_{name}_matmul_gflops"] = gflops
            x = torch.randn(n, channels, height, width, generator=gen).to(device, dtype)
            x = x.contiguous(memory_format=torch.channels_last)
            w = torch.randn(channels, channels, 3, 3, generator=gen).to(device, dtype)
            w = w.contiguous(memory_format=torch.channels_last)
            flops = 2.0 * n * channels * channels * 9 * height * width
            gflops = best_flops_per_s(lambda: F.conv2d(x, w, padding=1), flops, device, repeats)
            fields[f"ceiling_{name}_conv_gflops"] = gflops / 1e9
    return fields


def roofline_fields(
    prefix: str, flops: int, median_ms: float, precision: str, ceilings: Dict[str, float]
) -> Dict[str, Any]:
    """A model's FLOPs, achieved GFLOP/s at its median latency, and the fraction of the conv
    ceiling of ``precision`` ("fp32" or "bf16"; fp16 is compared with the bf16 ceiling)."""
    achieved = flops / (median_ms / 1000.0) / 1e9
    key = "fp32" if precision == "fp32" else "bf16"
    return {
        f"{prefix}gflop": flops / 1e9,
        f"{prefix}precision": precision,
        f"{prefix}achieved_gflops": achieved,
        f"{prefix}ceiling_fraction": achieved / ceilings[f"ceiling_{key}_conv_gflops"],
    }


def effective_precision(cfg) -> str:
    """The precision the backbone and coarse head run in: ``TEST.PRECISION`` with "auto"
    resolved on the config's device."""
    from pointrend_sem.inference import resolve_precision

    dtype: Optional[torch.dtype] = resolve_precision(cfg.TEST.PRECISION, cfg.MODEL.DEVICE)
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
