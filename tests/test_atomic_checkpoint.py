"""A process killed while it writes a checkpoint leaves the previous one named and whole. (A
training run killed after a periodic checkpoint, then resumed: tests/test_resumption.py.)"""

import signal
import sys

import torch
from conftest import run_command


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
