"""What a user gets on each kind of CPU (pointrend_sem/capabilities.py): every precision runs or
is refused in one line, "auto" never picks an emulated one, the fused oneDNN path only where it
runs. The CPUs that are not this machine are simulated by their flags and probe answers; this
machine's real answers are checked against what the commands do."""

import logging
import os
import sys

import pytest
import torch
from conftest import clear_precision_caches, load_config, run_script
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from pointrend_sem import capabilities
from pointrend_sem.engine import amp
from pointrend_sem.errors import UserValueError
from pointrend_sem.inference import build_inference_model, builder, precision

# (flags, oneDNN runs bf16, oneDNN runs fp16) of the CPUs users have
SAPPHIRE_RAPIDS = ({"avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16"}, True, True)
EPYC_GENOA = ({"avx2", "avx512f", "avx512_bf16"}, True, False)
SKYLAKE_XEON = ({"avx2", "avx512f", "avx512bw"}, True, False)  # bf16 emulated, no fp16
AVX2_ONLY = ({"avx2"}, False, False)


@pytest.fixture
def cpu(monkeypatch):
    """Makes this process answer as a CPU with the given flags and oneDNN probe results."""

    def simulate(flags, bf16_runs, fp16_runs, max_isa=None):
        runs = {torch.bfloat16: bf16_runs, torch.float16: fp16_runs, torch.float32: True}
        monkeypatch.setattr(capabilities, "cpu_flags", lambda: frozenset(flags))
        monkeypatch.setattr(capabilities, "_probe_onednn_conv", lambda dtype: runs[dtype])
        monkeypatch.setattr(capabilities, "onednn_enabled", lambda: True)
        monkeypatch.setattr(precision, "onednn_enabled", lambda: True)
        if max_isa is None:
            monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
        else:
            monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", max_isa)
        monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
        clear_precision_caches()

    yield simulate
    clear_precision_caches()


@pytest.mark.parametrize(
    "machine, bf16, fp16",
    [
        (SAPPHIRE_RAPIDS, "native", "native"),
        (EPYC_GENOA, "native", "refused"),
        (SKYLAKE_XEON, "emulated", "refused"),
        (AVX2_ONLY, "refused", "refused"),
    ],
    ids=["amx", "avx512_bf16", "avx512_no_bf16", "avx2"],
)
def test_each_cpu_kind_gets_the_right_answer(cpu, machine, bf16, fp16):
    cpu(*machine)
    for dtype, expected in ((torch.bfloat16, bf16), (torch.float16, fp16)):
        support = capabilities.precision_support(dtype, "cpu")
        state = "native" if support.native else ("emulated" if support.runs else "refused")
        assert state == expected, (dtype, support)
        assert support.detail


def test_onednn_capped_at_avx2_is_not_native_bf16(cpu):
    """ONEDNN_MAX_CPU_ISA=AVX2 on an AMX CPU: the flags say AMX, oneDNN does not use it."""
    flags, _, _ = SAPPHIRE_RAPIDS
    cpu(flags, True, True, max_isa="AVX2")
    support = capabilities.precision_support(torch.bfloat16, "cpu")
    assert support.runs and not support.native and "ONEDNN_MAX_CPU_ISA=AVX2" in support.detail
    cpu(flags, True, True, max_isa="AVX512_CORE_AMX")
    assert capabilities.precision_support(torch.bfloat16, "cpu").native


def test_onednn_switched_off_refuses_reduced_precision(monkeypatch):
    monkeypatch.setattr(torch.backends.mkldnn, "enabled", False)
    clear_precision_caches()
    try:
        support = capabilities.precision_support(torch.bfloat16, "cpu")
        assert not support.runs and "torch.backends.mkldnn.enabled is False" in support.detail
        assert not capabilities.fused_conv_runs(torch.float32)
        with pytest.raises(UserValueError, match="TEST.PRECISION bf16 cannot run on this CPU"):
            precision.resolve_precision("bf16", "cpu")
        assert precision.resolve_precision("auto", "cpu") is None
    finally:
        clear_precision_caches()


@pytest.mark.parametrize("name", ["bf16", "fp16"])
def test_refused_precision_stops_the_inference_build_in_one_line(cpu, name):
    cpu(*AVX2_ONLY)
    cfg = load_config("demo_synthetic.yaml", ["TEST.PRECISION", name])
    with pytest.raises(UserValueError) as error:
        build_inference_model(build_model(cfg), cfg)
    message = str(error.value)
    assert message.startswith(f"TEST.PRECISION {name} cannot run on this CPU: ")
    assert "Use TEST.PRECISION fp32" in message and "\n" not in message


def test_emulated_bf16_runs_with_one_warning_and_auto_keeps_fp32(cpu, caplog):
    cpu(*SKYLAKE_XEON)
    with caplog.at_level(logging.INFO, logger=precision.__name__):
        for _ in range(3):
            assert precision.resolve_precision("bf16", "cpu") is torch.bfloat16
        assert precision.resolve_precision("auto", "cpu") is None
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "emulated" in warnings[0] and "fp32 is faster" in warnings[0]


@pytest.mark.parametrize(
    "machine, expected", [(SAPPHIRE_RAPIDS, torch.bfloat16), (EPYC_GENOA, torch.bfloat16)]
)
def test_auto_picks_bf16_only_with_bf16_instructions(cpu, machine, expected):
    cpu(*machine)
    assert precision.resolve_precision("auto", "cpu") is expected
    cpu(*AVX2_ONLY)
    assert precision.resolve_precision("auto", "cpu") is None


def test_amp_training_refused_where_bf16_cannot_run(cpu, tmp_path):
    from pointrend_sem.engine import Trainer

    cpu(*AVX2_ONLY)
    opts = ["SOLVER.AMP.ENABLED", True, "OUTPUT_DIR", str(tmp_path), "DATALOADER.NUM_WORKERS", 0]
    with pytest.raises(UserValueError, match="SOLVER.AMP.ENABLED trains in bf16 on a CPU"):
        Trainer(load_config("demo_synthetic.yaml", opts))


def test_amp_on_emulated_bf16_warns(cpu, caplog):
    cpu(*SKYLAKE_XEON)
    with caplog.at_level(logging.WARNING, logger=amp.__name__):
        amp.check_cpu_amp()
    assert "SOLVER.AMP.ENABLED False (fp32) is faster here" in caplog.text


def test_eval_only_with_a_precision_this_cpu_cannot_run_is_one_line(cpu, tmp_path):
    """train_net.py --eval-only TEST.PRECISION fp16 on a CPU without fp16: one line, exit 1."""
    cpu(*AVX2_ONLY)
    torch.manual_seed(0)
    model = build_model(load_config())
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("weights")
    cmd = [sys.executable, "train_net.py", "--config-file", "configs/demo_synthetic.yaml"]
    cmd += ["--eval-only", "MODEL.WEIGHTS", str(tmp_path / "weights.pth")]
    cmd += ["TEST.PRECISION", "fp16", "OUTPUT_DIR", str(tmp_path / "out")]
    proc = run_script(cmd, env=dict(os.environ, DETECTRON2_DATASETS=str(tmp_path)))
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: TEST.PRECISION fp16 cannot run on this CPU: ")


def test_this_machine_runs_or_refuses_each_precision():
    """Not simulated: what this CPU answers, and a model in each precision it says it runs
    gives finite fp32 logits."""
    image = torch.randint(0, 256, (3, 40, 56), dtype=torch.uint8)
    for name in ("bf16", "fp16"):
        support = capabilities.precision_support(precision.PRECISIONS[name], "cpu")
        cfg = load_config("demo_synthetic.yaml", ["TEST.PRECISION", name])
        model = build_model(cfg).eval()
        if not support.runs:
            with pytest.raises(UserValueError, match=f"TEST.PRECISION {name} cannot run"):
                build_inference_model(model, cfg)
            continue
        (output,) = build_inference_model(model, cfg).predict([image])
        assert output["sem_seg"].dtype == torch.float32
        assert torch.isfinite(output["sem_seg"]).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_inference_copy_is_fused_only_where_the_fused_op_runs(monkeypatch, dtype):
    """Where oneDNN's fused convolution does not run in the copy's dtype the copy keeps the
    plain modules, with one log line, and computes the same."""
    if not capabilities.precision_support(dtype, "cpu").runs:
        pytest.skip(f"{dtype} convolutions do not run here (refused: see the tests above)")
    torch.manual_seed(0)
    model = build_model(load_config()).eval()
    x = torch.randn(1, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    name = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
    fused = build_inference_model(model, load_config(), precision=name)
    clear_precision_caches()
    monkeypatch.setattr(builder, "fused_conv_runs", lambda dtype: False)
    plain = build_inference_model(model, load_config(), precision=name)
    assert plain.fused_convs == 0
    assert (fused.fused_convs > 0) == capabilities.fused_conv_runs(dtype)
    with torch.no_grad():
        expected, got = plain.model.backbone(x), fused.model.backbone(x)
    for name, value in expected.items():
        value, other = value.float(), got[name].float()
        if dtype == torch.float32:  # fp32 rounding only
            assert (other - value).abs().max() <= 1e-5 * value.abs().max(), name
        else:  # a bf16/fp16 rounding per layer more or less: close on average; a missing
            # ReLU or sum is far off
            assert (other - value).abs().mean() <= 2e-2 * value.abs().mean(), name


def test_describe_names_every_precision():
    text = capabilities.describe("cpu")
    for line in ("bf16: ", "fp16: ", "oneDNN fused convolution: ", "C++ compiler for AOTInductor"):
        assert line in text


def test_aoti_export_without_a_compiler_is_one_line(monkeypatch, tmp_path):
    from pointrend_sem.export import module as export_module

    monkeypatch.setenv("CXX", "no-such-compiler-here")
    assert capabilities.cpp_compiler() is None
    with pytest.raises(UserValueError, match="no C\\+\\+ compiler was found"):
        export_module.export_graph(torch.nn.Identity(), torch.zeros(1), "aoti", str(tmp_path / "m"))
