"""The GPU path, on a CUDA GPU (tools/gpu_check.sh runs these with POINTREND_SEM_TEST_CUDA=1;
skipped where no GPU is visible): CPU and CUDA agree in every precision at Cityscapes' size,
export on CUDA runs with the runner, training with AMP and SyncBN stays finite, every parameter
gets a finite fp16 gradient, TTA and sliding windows fit at full size (peak memory printed)."""

import json
import math
import os
import sys

import pytest
import torch
from conftest import load_config, run_command
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from pointrend_sem.export.runner import read_sidecar
from pointrend_sem.tta import SemanticSegmentorWithTTA

pytestmark = pytest.mark.cuda

HEIGHT, WIDTH = 1024, 2048
BN = ["MODEL.WEIGHTS", "", "MODEL.RESNETS.NORM", "BN", "MODEL.SEM_SEG_HEAD.NORM", "BN"]
# least share of pixels with the CPU fp32 class, per CUDA precision (random weights: near-ties
# are everywhere, so reduced precisions get a looser bound)
AGREEMENT = {"fp32": 0.9999, "tf32": 0.999, "bf16": 0.99, "fp16": 0.99}


def cityscapes_model(device, opts=()):
    torch.manual_seed(0)
    cfg = load_config("cityscapes_r50.yaml", [*BN, "MODEL.DEVICE", device, *opts])
    return build_model(cfg).eval()


def random_image(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, HEIGHT, WIDTH), generator=gen, dtype=torch.uint8)


@pytest.fixture(scope="module")
def cpu_reference():
    model = cityscapes_model("cpu")
    with torch.no_grad():
        (output,) = model.predict([random_image()])
    return model.state_dict(), output["sem_seg"].argmax(0)


@pytest.mark.parametrize("name", list(AGREEMENT))
def test_cpu_and_cuda_agree(cpu_reference, name):
    state, expected = cpu_reference
    model = cityscapes_model("cuda", ["TEST.PRECISION", name])
    model.load_state_dict(state)
    torch.cuda.reset_peak_memory_stats()
    with torch.no_grad():
        (output,) = model.predict([random_image()])
    scores = output["sem_seg"]
    assert scores.dtype == torch.float32 and torch.isfinite(scores).all()
    same = (scores.argmax(0).cpu() == expected).float().mean().item()
    print(f"{name}: same class as CPU fp32 on {same:.4%}, peak "
          f"{torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")  # fmt: skip
    assert same >= AGREEMENT[name]


def test_export_on_cuda_runs_with_the_runner(tmp_path):
    output = tmp_path / "model.pt2"
    cmd = [sys.executable, "tools/export_model.py", "--config-file", "configs/demo_synthetic.yaml"]
    cmd += ["--device", "cuda", "--format", "pt2", "--height", "256", "--width", "512"]
    cmd += ["--output", str(output), "MODEL.WEIGHTS", ""]
    proc = run_command(cmd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert read_sidecar(str(output))["device"] == "cuda"
    print(proc.stdout)


def test_demo_training_with_amp_and_syncbn_stays_finite(tmp_path):
    cmd = [sys.executable, "train_net.py", "--config-file", "configs/demo_synthetic.yaml"]
    cmd += ["SOLVER.MAX_ITER", "40", "SOLVER.AMP.ENABLED", "True", "OUTPUT_DIR", str(tmp_path)]
    cmd += ["MODEL.RESNETS.NORM", "SyncBN", "MODEL.SEM_SEG_HEAD.NORM", "SyncBN"]
    env = dict(os.environ, DETECTRON2_DATASETS=str(tmp_path / "datasets"))
    proc = run_command(cmd, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(tmp_path / "metrics.json") as f:
        rows = [json.loads(line) for line in f]
    losses = [row["total_loss"] for row in rows if "total_loss" in row]
    assert losses and all(math.isfinite(loss) for loss in losses)
    final = [row for row in rows if "sem_seg/mIoU" in row][-1]
    assert math.isfinite(final["sem_seg/mIoU"])
    print(f"demo, 40 iterations with AMP and SyncBN: mIoU {final['sem_seg/mIoU']:.2f}")


def test_every_parameter_gets_a_finite_gradient_in_one_fp16_step():
    model = cityscapes_model("cuda").train()
    batch = [
        {"image": random_image(i)[:, :512, :1024], "sem_seg": torch.randint(0, 19, (512, 1024))}
        for i in range(2)
    ]
    scaler = torch.amp.GradScaler("cuda")
    with EventStorage(), torch.autocast("cuda", dtype=torch.float16):
        losses = model(batch)
    scaler.scale(sum(losses.values())).backward()
    scaler.unscale_(torch.optim.SGD(model.parameters(), lr=0.01))
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    not_finite = [
        n for n, p in model.named_parameters() if p.grad is not None and not p.grad.isfinite().all()
    ]
    assert not missing and not not_finite, (missing[:5], not_finite[:5])


@pytest.mark.parametrize("mode", ["tta", "sliding_window"])
def test_tta_and_sliding_window_at_full_size(mode):
    opts = []
    if mode == "sliding_window":
        opts = ["TEST.SLIDING_WINDOW.ENABLED", True, "TEST.SLIDING_WINDOW.CROP_SIZE", (512, 1024)]
        opts += ["TEST.SLIDING_WINDOW.STRIDE", (341, 682)]
    model = cityscapes_model("cuda", opts)
    if mode == "tta":
        model = SemanticSegmentorWithTTA(
            model, scale_ratios=(0.5, 1.0, 1.5), flip=True, min_size=HEIGHT, max_size=WIDTH
        )
    torch.cuda.reset_peak_memory_stats()
    with torch.no_grad():
        (output,) = model([{"image": random_image(), "height": HEIGHT, "width": WIDTH}])
    assert output["sem_seg"].shape[-2:] == (HEIGHT, WIDTH)
    assert torch.isfinite(output["sem_seg"]).all()
    print(f"{mode}: peak {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")
