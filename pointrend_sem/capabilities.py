"""What this machine can run, decided in one place: reduced-precision convolutions (bf16, fp16)
on each device, oneDNN's fused convolution, and a C++ compiler for AOTInductor. Everything
hardware-dependent in this package (``TEST.PRECISION``, ``SOLVER.AMP.ENABLED`` on CPU, the fused
inference copy, ``--format aoti``) asks here, and the answers are cached per process.

How each answer is found:

* CPU flags (``/proc/cpuinfo``) say what the silicon has: ``amx_bf16`` / ``avx512_bf16`` (bf16
  dot products), ``amx_fp16`` / ``avx512_fp16`` (fp16 arithmetic). They are reliable for what
  the hardware has, but not for what oneDNN will use: ``ONEDNN_MAX_CPU_ISA`` caps it, and
  ``torch.backends.mkldnn.enabled = False`` turns it off. Both are taken into account.
* A probe (one 1x1 convolution on a 1x2x2 input, cached per dtype and per oneDNN switch) says
  whether oneDNN runs the dtype at all: it refuses bf16 below AVX-512 (or ``avx_ne_convert``)
  and fp16 below ``avx512_fp16`` (or ``avx_ne_convert``). Where it refuses, PyTorch's own CPU
  convolution still accepts the dtype, but is a scalar fallback: a 64-channel 3x3 convolution on
  a 128x128 map took 5.5 s in bf16 against 0.025 s in fp32 on an AVX2 CPU. This package never
  runs that: it refuses the precision with one line.
* On CUDA, bf16 (and TF32) need compute capability 8.0 or later; ``torch.cuda.is_bf16_supported``
  also says yes on older GPUs, where bf16 is emulated, so the capability is read instead.
* Where oneDNN runs the dtype without the instructions for it (bf16 on AVX-512 without
  ``avx512_bf16``), it emulates: correct, but measured 3.9x slower than fp32 on such a Xeon. It
  runs, with a warning, and ``auto`` never picks it.

Summary of a machine: ``python -m pointrend_sem`` (:func:`describe`).
"""

import functools
import logging
import os
import shutil
from dataclasses import dataclass
from typing import FrozenSet, List, Optional

import torch
from torch.nn import functional as F

logger = logging.getLogger(__name__)

# TEST.PRECISION names of the reduced dtypes
DTYPE_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}

# oneDNN's CPU ISA levels, lowest first (the values ONEDNN_MAX_CPU_ISA takes), and the lowest one
# whose kernels use each dtype's instructions
_ONEDNN_ISAS = (
    "SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI",
    "AVX512_CORE_BF16", "AVX10_1_512", "AVX512_CORE_FP16", "AVX10_1_512_AMX",
    "AVX512_CORE_AMX", "AVX10_1_512_AMX_FP16", "AVX512_CORE_AMX_FP16",
)  # fmt: skip
_NATIVE_ISA = {torch.bfloat16: "AVX512_CORE_BF16", torch.float16: "AVX10_1_512"}
# CPU flags that carry each dtype's arithmetic (any one is enough)
_NATIVE_FLAGS = {
    torch.bfloat16: ("amx_bf16", "avx512_bf16"),
    torch.float16: ("amx_fp16", "avx512_fp16"),
}


@dataclass(frozen=True)
class PrecisionSupport:
    """Whether convolutions run in a dtype on a device, and how.

    Attributes:
        runs: they run correctly at a usable speed (natively or emulated by oneDNN).
        native: the device has instructions for the dtype: expected faster than fp32, and
            what ``TEST.PRECISION auto`` may choose.
        detail: what the device has or lacks, for a log line or an error message.
    """

    runs: bool
    native: bool
    detail: str


@functools.lru_cache(maxsize=None)
def cpu_flags() -> FrozenSet[str]:
    """The CPU's feature flags (Linux ``/proc/cpuinfo``); empty where that cannot be read."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def onednn_max_isa() -> Optional[str]:
    """The cap ``ONEDNN_MAX_CPU_ISA`` (or its old name ``DNNL_MAX_CPU_ISA``) puts on oneDNN's
    kernels, upper case; None when unset or ``ALL``/``DEFAULT``."""
    value = os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or ""
    value = value.strip().upper()
    return None if value in ("", "ALL", "DEFAULT") else value


def _isa_allows(isa: str) -> bool:
    cap = onednn_max_isa()
    if cap is None or cap not in _ONEDNN_ISAS:
        return True
    return _ONEDNN_ISAS.index(cap) >= _ONEDNN_ISAS.index(isa)


def onednn_enabled() -> bool:
    """Whether this torch has oneDNN and it is switched on (``torch.backends.mkldnn.enabled``)."""
    return torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled


def onednn_runs(dtype: torch.dtype) -> bool:
    """Whether oneDNN runs a convolution in ``dtype`` on this CPU (natively or emulated): a
    probe, cached per dtype and oneDNN switch."""
    return onednn_enabled() and _probe_onednn_conv(dtype)


@functools.lru_cache(maxsize=None)
def _probe_onednn_conv(dtype: torch.dtype) -> bool:
    x = torch.ones(1, 1, 2, 2, dtype=dtype)
    w = torch.ones(1, 1, 1, 1, dtype=dtype)
    try:
        out = torch.mkldnn_convolution(x, w, None, [0, 0], [1, 1], [1, 1], 1)
    except RuntimeError:  # "mkldnn_convolution: bf16 path needs the cpu support ..."
        return False
    return bool((out.float() == 1).all())


def fused_conv_runs(dtype: torch.dtype) -> bool:
    """Whether oneDNN's fused convolution (``torch.ops.mkldnn._convolution_pointwise``, see
    :mod:`.inference.onednn_fusion`) exists in this torch and gives ``relu(conv(x))`` in
    ``dtype`` on this CPU: a probe, cached per dtype and oneDNN switch."""
    return onednn_enabled() and _probe_fused_conv(dtype)


@functools.lru_cache(maxsize=None)
def _probe_fused_conv(dtype: torch.dtype) -> bool:
    op = getattr(torch.ops.mkldnn, "_convolution_pointwise", None)
    if op is None:
        return False
    x = torch.tensor([[[[1.0, -2.0], [3.0, -4.0]]]], dtype=dtype)
    w = torch.full((1, 1, 1, 1), 2.0, dtype=dtype)
    bias = torch.tensor([1.0], dtype=dtype)
    try:
        out = op(x, w, bias, [0, 0], [1, 1], [1, 1], 1, "relu", [], "")
    except RuntimeError:
        return False
    return torch.equal(out.float(), F.relu(F.conv2d(x.float(), w.float(), bias.float())))


def _cpu_support(dtype: torch.dtype) -> PrecisionSupport:
    name = DTYPE_NAMES[dtype]
    if dtype == torch.float32:
        return PrecisionSupport(True, True, "fp32")
    if not onednn_enabled():
        why = (
            "oneDNN is switched off (torch.backends.mkldnn.enabled is False)"
            if torch.backends.mkldnn.is_available()
            else "this PyTorch build has no oneDNN"
        )
        detail = f"{why}; without it {name} convolutions run a fallback many times slower than fp32"
        return PrecisionSupport(False, False, detail)
    flags = cpu_flags()
    native_flags = [flag for flag in _NATIVE_FLAGS[dtype] if flag in flags]
    capped = f" (ONEDNN_MAX_CPU_ISA={onednn_max_isa()})" if onednn_max_isa() else ""
    if not _probe_onednn_conv(dtype):
        needs = {
            torch.bfloat16: "AVX-512 (avx512bw/vl/dq) or avx_ne_convert",
            torch.float16: "avx512_fp16, AMX-FP16 or avx_ne_convert",
        }[dtype]
        detail = (
            f"oneDNN has no {name} convolution on this CPU{capped}: it needs {needs}, and "
            "PyTorch's fallback is many times slower than fp32"
        )
        return PrecisionSupport(False, False, detail)
    if native_flags and _isa_allows(_NATIVE_ISA[dtype]):
        return PrecisionSupport(True, True, f"{name} instructions ({', '.join(native_flags)})")
    lacking = " or ".join(_NATIVE_FLAGS[dtype])
    detail = (
        f"this CPU has no {lacking}{capped if native_flags else ''}: oneDNN emulates {name}, "
        "which is slower than fp32 (3.9x slower for bf16 on an AVX-512 Xeon)"
    )
    return PrecisionSupport(True, False, detail)


def precision_support(dtype: torch.dtype, device="cpu") -> PrecisionSupport:
    """How convolutions run in ``dtype`` (fp32, bf16, fp16) on ``device`` (a torch device or
    its name); see the module's doc. CUDA: fp16 always natively, bf16 where the GPU has it
    (compute capability 8.0 and later)."""
    device_type = torch.device(device).type
    if device_type == "cpu":
        return _cpu_support(dtype)
    if device_type == "cuda":
        name = DTYPE_NAMES[dtype]
        if dtype == torch.bfloat16 and not cuda_has_ampere_math():
            # torch.cuda.is_bf16_supported() also says yes where bf16 is only emulated (T4, V100)
            return PrecisionSupport(
                False, False, "this GPU has no bf16 units (compute capability below 8.0)"
            )
        return PrecisionSupport(True, True, f"{name} on a CUDA GPU")
    return PrecisionSupport(dtype == torch.float32, dtype == torch.float32, f"device {device_type}")


def runnable_precisions(device="cpu") -> List[str]:
    """The ``TEST.PRECISION`` values that run on ``device`` (a torch device or its name), in this
    order: "fp32" always, "tf32" on a CUDA GPU with TF32 units, "bf16" and "fp16" where
    :func:`precision_support` says they run (natively or emulated). "auto" is left out: it
    picks one of these."""
    names = ["fp32"]
    if torch.device(device).type == "cuda" and cuda_has_ampere_math():
        names.append("tf32")
    for dtype in (torch.bfloat16, torch.float16):
        if precision_support(dtype, device).runs:
            names.append(DTYPE_NAMES[dtype])
    return names


def device_available(device) -> bool:
    """Whether ``device`` (a torch device or its name) can run here: always for the CPU, for
    "cuda" / "cuda:N" when torch sees a GPU (N among them)."""
    device = torch.device(device)
    if device.type == "cpu":
        return True
    if device.type == "cuda":
        return torch.cuda.is_available() and (device.index or 0) < torch.cuda.device_count()
    return False


def runnable_device(device: str) -> str:
    """``device``, or "cpu" when it names a CUDA device this machine does not have (so that
    every command runs on a CPU-only machine with no extra flag); the caller says so."""
    return device if device_available(device) or not device.startswith("cuda") else "cpu"


def cuda_has_ampere_math() -> bool:
    """Whether the current CUDA GPU has bf16 and TF32 units: compute capability 8.0 (Ampere)
    or later. False without CUDA."""
    return torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 0)


def cpp_compiler() -> Optional[str]:
    """The C++ compiler AOTInductor would use (``$CXX``, else ``g++``) when it is on PATH;
    None otherwise."""
    return shutil.which(os.environ.get("CXX") or "g++")


def describe(device="cpu") -> str:
    """Lines a person reads: what this machine runs in each precision, and the extras."""
    lines = [
        f"torch {torch.__version__} (CUDA {torch.version.cuda}, GPU visible: "
        f"{torch.cuda.is_available()})",
        f"device: {torch.device(device).type}",
    ]
    if torch.device(device).type == "cpu":
        wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_fp16")
        has = [flag for flag in wanted if flag in cpu_flags()]
        lines.append(f"cpu flags: {' '.join(has) or 'none of ' + ' '.join(wanted)}")
        cap = f", ONEDNN_MAX_CPU_ISA={onednn_max_isa()}" if onednn_max_isa() else ""
        lines.append(f"oneDNN: {'on' if onednn_enabled() else 'off'}{cap}")
    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        lines.append(f"GPU: {torch.cuda.get_device_name()}, compute capability {major}.{minor}")
    for dtype in (torch.bfloat16, torch.float16):
        support = precision_support(dtype, device)
        state = "native" if support.native else ("emulated" if support.runs else "refused")
        lines.append(f"{DTYPE_NAMES[dtype]}: {state} ({support.detail})")
    if torch.device(device).type == "cpu":
        fused = [DTYPE_NAMES[d] for d in DTYPE_NAMES if fused_conv_runs(d)]
        lines.append(f"oneDNN fused convolution: {', '.join(fused) or 'not available'}")
    lines.append(f"C++ compiler for AOTInductor: {cpp_compiler() or 'not found'}")
    return "\n".join(lines)
