"""A training run killed after its first checkpoint resumes where it stopped."""

import json
import os
import signal
import subprocess
import sys
import time

import torch
from conftest import REPO_ROOT

TINY = [
    "SOLVER.MAX_ITER", "12",
    "SOLVER.CHECKPOINT_PERIOD", "4",
    "SOLVER.IMS_PER_BATCH", "2",
    "SOLVER.WARMUP_ITERS", "3",
    "LOG_PERIOD", "1",
    "DATALOADER.NUM_WORKERS", "0",
]  # fmt: skip


def train_net(tmp_path, output_dir, *extra):
    env = dict(os.environ, DETECTRON2_DATASETS=str(tmp_path / "datasets"))
    cmd = [sys.executable, "train_net.py", "--config-file", "configs/demo_synthetic.yaml", *extra]
    cmd += [*TINY, "OUTPUT_DIR", str(output_dir)]
    return subprocess.Popen(
        cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def lr_by_iteration(output_dir):
    lrs = {}
    with open(output_dir / "metrics.json") as f:
        for line in f:
            row = json.loads(line)
            if "lr" in row:
                lrs[row["iteration"]] = row["lr"]
    return lrs


def test_sigkill_then_resume_continues_with_the_same_schedule(tmp_path):
    reference_dir, killed_dir = tmp_path / "reference", tmp_path / "killed"
    reference = train_net(tmp_path, reference_dir)

    victim = train_net(tmp_path, killed_dir)
    tag = killed_dir / "last_checkpoint"
    deadline = time.time() + 300
    while not tag.exists() and victim.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert tag.exists(), "the run never wrote a checkpoint"
    checkpoint = tag.read_text().strip()
    checkpointed_iter = torch.load(killed_dir / checkpoint, weights_only=False)["iteration"]
    assert checkpointed_iter < 11, "the run finished before it could be killed"

    resumed = train_net(tmp_path, killed_dir, "--resume")
    log, _ = resumed.communicate()
    assert resumed.returncode == 0, log[-3000:]
    assert f"Starting training from iteration {checkpointed_iter + 1}" in log
    assert reference.wait() == 0

    expected, got = lr_by_iteration(reference_dir), lr_by_iteration(killed_dir)
    for iteration in range(checkpointed_iter + 1, 12):
        assert got[iteration] == expected[iteration], iteration
    final = torch.load(killed_dir / "model_final.pth", weights_only=False)
    assert final["iteration"] == 11 and "model" in final


def test_kill_while_writing_a_checkpoint_keeps_the_last_good_one(tmp_path):
    """A process killed inside torch.save: the tag still names the previous, complete file."""
    script = f"""
import os, signal, torch
from torch import nn
from pointrend_sem.engine.checkpoint import AtomicDetectionCheckpointer
ckpt = AtomicDetectionCheckpointer(nn.Linear(4, 4), {str(tmp_path)!r})
ckpt.save("model_0000009")
real_save = torch.save
def dying_save(obj, f, *a, **k):
    f.write(b"partial bytes")
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)
torch.save = dying_save
ckpt.save("model_0000019")
"""
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT)
    assert proc.returncode == -signal.SIGKILL
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000009.pth"
    assert not (tmp_path / "model_0000019.pth").exists()
    state = torch.load(tmp_path / "model_0000009.pth", weights_only=False)
    assert set(state["model"]) == {"weight", "bias"}
