"""A training run killed after its first checkpoint resumes where it stopped."""

import json
import os
import signal
import sys
import time

import torch
from conftest import kill_all, run_command, run_script, start_command, tail_of

TINY = [
    "SOLVER.MAX_ITER", "12",
    "SOLVER.CHECKPOINT_PERIOD", "4",
    "SOLVER.IMS_PER_BATCH", "2",
    "SOLVER.WARMUP_ITERS", "3",
    "LOG_PERIOD", "1",
    "DATALOADER.NUM_WORKERS", "0",
]  # fmt: skip


def train_net(tmp_path, output_dir, *extra, background=False):
    """``train_net.py`` on the tiny demo: started in the background (output to
    ``<output_dir>.log``), or run to completion in this process (returns its output)."""
    env = dict(os.environ, DETECTRON2_DATASETS=str(tmp_path / "datasets"))
    cmd = [sys.executable, "train_net.py", "--config-file", "configs/demo_synthetic.yaml", *extra]
    cmd += [*TINY, "OUTPUT_DIR", str(output_dir)]
    if background:
        return start_command(cmd, f"{output_dir}.log", env=env)
    proc = run_script(cmd, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout + proc.stderr


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
    victim = train_net(tmp_path, killed_dir, background=True)
    try:
        tag = killed_dir / "last_checkpoint"
        deadline = time.time() + 300
        while not tag.exists() and victim.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        victim.send_signal(signal.SIGKILL)
        victim.wait()
    finally:
        kill_all(victim)
    assert tag.exists(), "the run never wrote a checkpoint:\n" + tail_of(f"{killed_dir}.log")
    checkpoint = tag.read_text().strip()
    checkpointed_iter = torch.load(killed_dir / checkpoint, weights_only=False)["iteration"]
    assert checkpointed_iter < 11, "the run finished before it could be killed"

    log = train_net(tmp_path, killed_dir, "--resume")
    assert f"Starting training from iteration {checkpointed_iter + 1}" in log
    train_net(tmp_path, reference_dir)

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
from detectron2.checkpoint import DetectionCheckpointer
from pointrend_sem.checkpoint import make_writes_atomic
ckpt = make_writes_atomic(DetectionCheckpointer(nn.Linear(4, 4), {str(tmp_path)!r}))
ckpt.save("model_0000009")
real_save = torch.save
def dying_save(obj, f, *a, **k):
    f.write(b"partial bytes")
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)
torch.save = dying_save
ckpt.save("model_0000019")
"""
    proc = run_command([sys.executable, "-c", script])
    assert proc.returncode == -signal.SIGKILL
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000009.pth"
    assert not (tmp_path / "model_0000019.pth").exists()
    state = torch.load(tmp_path / "model_0000009.pth", weights_only=False)
    assert set(state["model"]) == {"weight", "bias"}
