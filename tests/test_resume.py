"""A training run killed (SIGKILL) after a periodic checkpoint resumes where it stopped, and ends
with the weights of the uninterrupted run (``reference_weights``), bit for bit."""

import signal
import sys
import time

import torch
from conftest import kill_all, run_command, tail_of
from tiny_demo import assert_same_weights, train_net


def test_sigkill_then_resume_is_the_uninterrupted_run(tmp_path, reference_weights):
    killed_dir = tmp_path / "killed"
    victim = train_net(killed_dir, background=True)
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

    log = train_net(killed_dir, "--resume")
    assert f"Starting training from iteration {checkpointed_iter + 1}" in log
    final = torch.load(killed_dir / "model_final.pth", weights_only=False)
    assert final["iteration"] == 11
    assert_same_weights(killed_dir / "model_final.pth", reference_weights)


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
