"""tools/benchmark.py runs end to end at tiny sizes and reports what it promises.

Smoke tests only: the numbers' presence, consistency and the agreement with the reference
implementations are checked, never their speed.
"""

import argparse
import json
import os
import sys
import warnings

import detectron2
import pytest
import torch
from conftest import REPO_ROOT, load_config, needs_precision, one_line_error, run_script, run_tool
from detectron2.modeling import build_model
from torch import nn

from pointrend_sem.capabilities import precision_support
from pointrend_sem.errors import UserValueError
from tools import benchmark
from tools.benchmarking import pipeline, report, roofline, training
from tools.benchmarking.point_share import CallTimer, EventClock, PerfCounterClock, new_clock
from tools.benchmarking.reference_models import DETECTRON2_POINTREND_CONFIG


def run_benchmark(tmp_path, config: str, height: int, width: int, *flags: str):
    """Run the CLI on ``configs/<config>``, one thread; returns (JSON results, stdout)."""
    out = tmp_path / "results.json"
    cmd = [
        sys.executable, "tools/benchmark.py", "--config-file", f"configs/{config}",
        "--height", str(height), "--width", str(width), "--threads", "1",
        "--json", str(out), *flags,
    ]  # fmt: skip
    proc = run_script(cmd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out) as f:
        return json.load(f), proc.stdout


def table_rows(stdout: str):
    """{label: value} of the printed table (a pipe table with a header and a rule)."""
    lines = stdout.strip().splitlines()
    assert all(line.startswith("|") and line.endswith("|") for line in lines), stdout
    cells = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]
    return dict(cells)


def detectron2_source_or_skip() -> None:
    pytest.importorskip("detectron2.projects.point_rend")
    root = os.path.dirname(os.path.dirname(detectron2.__file__))
    if not os.path.isfile(os.path.join(root, DETECTRON2_POINTREND_CONFIG)):
        pytest.skip("detectron2's source checkout (with projects/PointRend/configs) not found")


def test_demo_inference_training_and_loader(tmp_path):
    flags = ["--runs", "2", "--warmup", "1", "--train", "--data-loader", "--loader-batches", "2"]
    results, stdout = run_benchmark(tmp_path, "demo_synthetic.yaml", 64, 96, *flags)

    assert results["config"] == "configs/demo_synthetic.yaml" and results["device"] == "cpu"
    assert (results["height"], results["width"], results["batch_size"]) == (64, 96, 1)
    assert (results["threads"], results["runs"], results["warmup"]) == (1, 2, 1)
    assert results["weights"] == "random"
    for prefix in ("latency", "train_iter"):
        runs = results[f"{prefix}_runs_ms"]
        assert len(runs) == 2 and min(runs) > 0
        assert results[f"{prefix}_min_ms"] <= results[f"{prefix}_median_ms"]
        assert results[f"{prefix}_median_ms"] <= results[f"{prefix}_max_ms"]
    assert results["images_per_s"] == pytest.approx(1000 / results["latency_median_ms"])
    assert results["peak_memory_mib"] >= 0 and "RSS" in results["memory_method"]
    assert results["point_head_calls"] == 2  # one per subdivision step
    assert 0 < results["point_share"] < 1
    assert results["point_head_ms"] + results["point_selection_ms"] <= results["point_pass_ms"]
    assert results["train_crop"] == "96x96" and results["train_precision"] == "fp32"
    assert results["loader_status"] == "ok" and results["loader_images_per_s"] > 0
    assert "agreement" not in results

    rows = table_rows(stdout)
    assert rows["config"] == "configs/demo_synthetic.yaml"
    assert rows["resolution (H x W)"] == "64x96" and rows["torch threads"] == "1"
    assert rows["inference latency, median (ms)"] == f"{results['latency_median_ms']:.1f}"
    assert rows["training iteration, median (ms)"] == f"{results['train_iter_median_ms']:.1f}"
    assert rows["point head + selection share of inference"].endswith("%")
    assert rows["train data loader"] == "ok"
    assert "reference" not in rows


def test_compare_with_detectron2_same_weights_same_prediction(tmp_path):
    detectron2_source_or_skip()
    flags = ["--compare", "detectron2", "--runs", "1", "--warmup", "0", "--both-memory-settings"]
    flags += ["MODEL.RESNETS.DEPTH", "50"]
    results, stdout = run_benchmark(tmp_path, "cityscapes_r101_detectron2.yaml", 64, 128, *flags)

    assert results["reference"] == "detectron2" and results["opts"] == "MODEL.RESNETS.DEPTH 50"
    assert results["agreement"] == 1.0
    # ours with glibc as it is, and (--both-memory-settings) with --keep-freed-memory; detectron2
    # with glibc's defaults (--reference-memory)
    assert results["memory_reuse"].startswith("glibc defaults")
    assert results["other_memory_reuse"].startswith("freed memory kept for reuse")
    assert len(results["other_memory_latency_runs_ms"]) == 1
    assert results["other_memory_peak_memory_mib"] >= 0
    assert results["reference_memory_reuse"].startswith("glibc defaults")
    assert len(results["reference_latency_runs_ms"]) == 1
    ratio = results["latency_median_ms"] / results["reference_latency_median_ms"]
    assert results["time_ratio"] == pytest.approx(ratio)
    rows = table_rows(stdout)
    assert rows["pixels with the same class as the reference"] == "1.000000"
    assert rows["reference"] == "detectron2"


def test_compare_with_mmseg_same_weights_same_prediction(tmp_path):
    pytest.importorskip("mmseg", reason="mmsegmentation is not installed")
    opts = ["MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64"]
    opts += ["MODEL.RESNETS.NORM", "BN", "MODEL.SEM_SEG_HEAD.NORM", "BN"]
    flags = ["--compare", "mmseg", "--runs", "1", "--warmup", "0", "--reference-memory", "kept"]
    flags += ["--keep-freed-memory"]
    results, stdout = run_benchmark(tmp_path, "cityscapes_r50.yaml", 64, 128, *flags, *opts)

    assert results["reference"] == "mmseg" and results["agreement"] == 1.0
    assert results["reference_memory_reuse"] == results["memory_reuse"]
    assert results["memory_reuse"].startswith("freed memory kept for reuse")
    assert table_rows(stdout)["pixels with the same class as the reference"] == "1.000000"


def test_compare_refuses_a_config_of_another_architecture():
    detectron2_source_or_skip()
    argv = ["--config-file", os.path.join(REPO_ROOT, "configs", "demo_synthetic.yaml")]
    argv += ["--compare", "detectron2", "--height", "32", "--width", "32", "--runs", "1"]
    with pytest.raises(SystemExit, match="needs a config with detectron2's architecture"):
        benchmark.main(argv)


def test_roofline_and_reduced_precision_inference(tmp_path):
    """bf16 inference and both ceilings where this CPU runs bf16; elsewhere fp32, and the bf16
    ceiling reported as not measured, with the reason."""
    bf16 = precision_support(torch.bfloat16, "cpu")
    name = "bf16" if bf16.runs else "fp32"
    flags = ["--runs", "1", "--warmup", "0", "--roofline", "TEST.PRECISION", name]
    results, stdout = run_benchmark(tmp_path, "demo_synthetic.yaml", 64, 96, *flags)

    assert results["precision"] == name and results["opts"] == f"TEST.PRECISION {name}"
    for dtype in ("fp32", "bf16") if bf16.runs else ("fp32",):
        for workload in ("matmul", "conv"):
            assert results[f"ceiling_{dtype}_{workload}_gflops"] > 0
    if not bf16.runs:
        assert "ceiling_bf16_conv_gflops" not in results
        assert table_rows(stdout)["ceiling bf16"] == f"not measured: {bf16.detail}"
    assert results["gflop"] > 0 and results["achieved_gflops"] > 0
    assert results["ceiling_fraction"] > 0
    expected = results["gflop"] / (results["latency_median_ms"] / 1000)
    assert results["achieved_gflops"] == pytest.approx(expected)
    rows = table_rows(stdout)
    assert rows["inference precision (TEST.PRECISION)"] == name
    assert rows["ours: fraction of its precision's conv ceiling"].endswith("%")


@needs_precision("bf16")
def test_flops_of_the_fused_bf16_copy_are_the_models():
    """The oneDNN fused convolutions of a bf16 inference copy are counted as convolutions."""
    image = torch.randint(0, 256, (3, 64, 96), dtype=torch.uint8)
    flops = {}
    for precision in ("fp32", "bf16"):
        model = build_model(load_config("demo_synthetic.yaml", ["TEST.PRECISION", precision]))
        flops[precision] = roofline.count_flops(lambda: model.eval().predict([image]))
    assert flops["bf16"] == flops["fp32"] > 0


def test_input_pipeline_ours_and_mmseg_with_the_config_transforms():
    pytest.importorskip("mmseg", reason="mmsegmentation is not installed")
    # the Cityscapes recipe at 1/8 of its scale and a smaller crop: mmsegmentation's pipeline must
    # take them from the config too
    opts = ["INPUT.RANDOM_RESIZE.SCALE", "(256, 128)", "INPUT.CROP.SIZE", "(64, 96)"]
    fields = pipeline.measure_pipeline(load_config("cityscapes_r50.yaml", opts), 2, 128, 256, 0)

    assert fields["pipeline_reference"] == "mmsegmentation"
    assert fields["pipeline_crop"] == fields["pipeline_reference_crop"] == "64x96"
    assert fields["pipeline_same_labels"] == 1.0  # same resize, crop and flip on both sides
    for prefix in ("pipeline", "pipeline_reference"):
        assert len(fields[f"{prefix}_runs_ms"]) == 2 and fields[f"{prefix}_images_per_s"] > 0
    ratio = fields["pipeline_images_per_s"] / fields["pipeline_reference_images_per_s"]
    assert fields["pipeline_speed_ratio"] == pytest.approx(ratio)
    rows = table_rows(report.format_table(fields))
    assert rows["input pipeline: samples (H x W), one worker"] == "2 (128x256)"
    assert rows["input pipeline: crops (H x W)"] == "64x96"


@needs_precision("bf16")
def test_training_iteration_with_amp_runs_under_bf16_autocast():
    cfg = load_config("demo_synthetic.yaml", ["SOLVER.AMP.ENABLED", "True"])
    model = build_model(cfg)
    seen = []
    model.register_forward_pre_hook(lambda *_: seen.append(torch.is_autocast_enabled("cpu")))
    args = argparse.Namespace(height=64, width=64, batch_size=1, seed=0, warmup=0, runs=1)
    fields = training.measure_training(cfg, model, args)
    assert fields["train_precision"] == "bf16" and fields["train_iter_median_ms"] > 0
    assert seen == [True]


needs_no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")


@needs_no_cuda
def test_device_cuda_without_cuda_is_one_line(tmp_path):
    config = "configs/demo_synthetic.yaml"
    proc = run_tool(tmp_path, "tools/benchmark.py", "--config-file", config, "--device", "cuda")
    assert one_line_error(proc) == (
        "error: --device cuda: CUDA is not available here (torch.cuda.is_available() is False): "
        "benchmark with --device cpu."
    )


@needs_no_cuda
def test_device_rule_flag_then_overrides_then_cpu():
    def device(*argv):
        args = benchmark.get_parser().parse_args(["--config-file", "x.yaml", *argv])
        return benchmark.resolve_device(args)

    assert device() == "cpu"  # a config file's MODEL.DEVICE (detectron2's "cuda") is not read
    assert device("--device", "cpu") == device("MODEL.DEVICE", "cpu") == "cpu"
    assert device("--device", "cpu", "MODEL.DEVICE", "cpu") == "cpu"
    with pytest.raises(UserValueError, match="^MODEL.DEVICE cuda:0: CUDA is not available"):
        device("MODEL.DEVICE", "cuda:0")
    with pytest.raises(UserValueError, match="--device cpu contradicts MODEL.DEVICE cuda"):
        device("--device", "cpu", "MODEL.DEVICE", "cuda")
    with pytest.raises(UserValueError, match="MODEL.DEVICE gpu: the benchmark runs on cpu or cuda"):
        device("MODEL.DEVICE", "gpu")


def test_device_cpu_recorded_in_json_and_table(tmp_path):
    flags = ["--device", "cpu", "--runs", "1", "--warmup", "0"]
    results, stdout = run_benchmark(tmp_path, "demo_synthetic.yaml", 32, 32, *flags)
    assert results["device"] == "cpu" and "device_name" not in results
    assert results["opts"] == ""  # MODEL.DEVICE is set from --device, not shown as an override
    assert table_rows(stdout)["device"] == "cpu"


class _TwoLosses(nn.Module):
    """A model whose forward returns a dict of losses, as detectron2's models in training."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(3))

    def forward(self, batch):
        return {"loss_a": (self.weight * batch).sum(), "loss_b": self.weight.square().sum()}


class _RecordingScaler:
    """A GradScaler stand-in: records its calls, scales by 4 and unscales in step()."""

    def __init__(self):
        self.calls = []

    def scale(self, loss):
        self.calls.append("scale")
        return 4.0 * loss

    def step(self, optimizer):
        self.calls.append("step")
        for group in optimizer.param_groups:
            for param in group["params"]:
                param.grad /= 4.0
        optimizer.step()

    def update(self):
        self.calls.append("update")


@pytest.mark.parametrize("scaler", ["recording", "disabled GradScaler", "GradScaler on cpu"])
def test_scaled_train_step_scales_steps_and_updates_like_amp_trainer(scaler):
    batch = torch.tensor([1.0, 2.0, 3.0])
    weights = {}
    for name in ("unscaled", scaler):
        model = _TwoLosses()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        if name == "recording":
            used = _RecordingScaler()
        elif name == "disabled GradScaler":
            used = torch.amp.GradScaler("cuda", enabled=False)  # scale, step, update: pass-through
        elif name == "GradScaler on cpu":  # the real scale, unscale-and-step, update
            used = torch.amp.GradScaler("cpu", init_scale=1024.0)
        else:
            used = None
        step = training.build_train_step(model, batch, optimizer, "cpu", None, used)
        step()
        step()
        weights[name] = model.weight.detach().clone()
        if name == "recording":
            assert used.calls == ["scale", "step", "update"] * 2
        if name == "GradScaler on cpu":
            assert used.get_scale() == 1024.0  # finite gradients: stepped, scale kept
    # two SGD steps of (batch + 2 w) from w = 1: the scaler changes nothing in the result
    assert torch.allclose(weights[scaler], weights["unscaled"])
    assert not torch.equal(weights["unscaled"], torch.ones(3))


def test_grad_scaler_only_for_amp_on_cuda():
    assert training.grad_scaler("cpu", True) is None  # bf16: no scaler, as CPUAMPTrainer
    assert training.grad_scaler("cuda", False) is None
    with warnings.catch_warnings():  # without CUDA, torch warns that it disables the scaler
        warnings.simplefilter("ignore", UserWarning)
        assert isinstance(training.grad_scaler("cuda", True), torch.amp.GradScaler)


class _FakeEvent:
    """A torch.cuda.Event stand-in on a fake clock that advances 1 ms per record()."""

    now_ms = 0.0

    def __init__(self, enable_timing=False):
        assert enable_timing
        self.at_ms = None

    def record(self):
        _FakeEvent.now_ms += 1.0
        self.at_ms = _FakeEvent.now_ms

    def elapsed_time(self, end):
        assert self.at_ms is not None and end.at_ms is not None
        return end.at_ms - self.at_ms


def test_event_clock_records_pairs_and_synchronizes_once_when_read():
    syncs = []
    clock = EventClock(_FakeEvent, lambda: syncs.append(1))
    outer = clock.start()
    inner = clock.start()
    clock.stop(inner)  # 1 ms
    clock.stop(outer)  # 3 ms
    assert syncs == []  # nothing waited for while timing
    assert clock.total_seconds() == pytest.approx(0.004)
    assert syncs == [1]
    assert isinstance(new_clock("cuda:0"), EventClock)
    assert isinstance(new_clock("cpu"), PerfCounterClock)


def test_call_timer_times_calls_with_the_device_clock():
    syncs = []

    def small(depth):
        return small(depth - 1) if depth else None

    timer = CallTimer(
        {"small": small},
        "cuda",
        clock=lambda device: EventClock(_FakeEvent, lambda: syncs.append(1)),
    )
    with timer:
        small(1)  # a recursive call: two intervals
        small(0)
        assert syncs == []
    assert timer.calls == {"small": 3}
    assert timer.seconds["small"] == pytest.approx((3 + 1 + 1) / 1000)
    assert syncs == [1]


def test_memory_under_load_worker_and_report(capsys):
    """The code path of --memory-under-load N, in this process: one setting's worker on 3 tiny
    images of the demo config, and the report of two settings."""
    from tools.benchmarking import memory_under_load

    memory_under_load.main(
        ["default", "configs/demo_synthetic.yaml", "--images", "3", "--every", "2"]
    )
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [p["images"] for p in result["curve"]] == [0, 2, 3]
    assert len(result["seconds"]) == 3
    assert all(p["peak"] >= p["rss"] > 0 for p in result["curve"])
    sizes = [image.shape for image in memory_under_load.random_images(5, seed=0)]
    assert sizes == [image.shape for image in memory_under_load.random_images(5, seed=0)]
    assert all(200 <= h <= 700 and 200 <= w <= 900 and c == 3 for h, w, c in sizes)

    report = memory_under_load.format_report({"untrimmed": result, "default": result})
    assert "RSS after 3 (MiB)" in report  # after 20 images, or after the last when fewer
    assert report.splitlines()[-1].split()[0] == "default"
