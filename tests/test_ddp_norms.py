"""Plain BatchNorm under DistributedDataParallel: rank 0's running statistics are broadcast, so
that every process evaluates and saves the same model; synchronized or frozen norms keep
detectron2's ``broadcast_buffers=False``."""

import logging
import socket
import subprocess
import sys

import pytest
import torch
from conftest import TINY_MODEL, kill_all, load_config
from detectron2.layers import FrozenBatchNorm2d, NaiveSyncBatchNorm
from torch import nn

from pointrend_sem.engine import Trainer
from pointrend_sem.engine.trainer import broadcast_buffers, ddp_arguments, per_process_batch_norms


def conv_with(norm: nn.Module) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 1), norm, nn.ReLU())


@pytest.mark.parametrize(
    "norm, per_process",
    [
        (nn.BatchNorm2d(4), True),
        (nn.BatchNorm1d(4), True),
        (nn.BatchNorm2d(4, track_running_stats=False), False),  # no statistics to drift
        (nn.SyncBatchNorm(4), False),
        (NaiveSyncBatchNorm(4), False),
        (FrozenBatchNorm2d(4), False),
        (nn.GroupNorm(2, 4), False),
        (nn.Identity(), False),
    ],
)
def test_which_norms_keep_statistics_per_process(norm, per_process):
    model = conv_with(norm)
    assert bool(per_process_batch_norms(model)) == per_process
    assert broadcast_buffers(model, world_size=2) == per_process
    assert not broadcast_buffers(model, world_size=1)


def test_ddp_arguments_and_the_one_line_that_explains_them(caplog):
    plain, synced = conv_with(nn.BatchNorm2d(4)), conv_with(NaiveSyncBatchNorm(4))
    with caplog.at_level(logging.INFO, logger="pointrend_sem.engine.trainer"):
        assert ddp_arguments(plain, "cpu", 2) == {"device_ids": None}  # DDP's default: broadcast
        assert ddp_arguments(plain, "cuda", 2) == {}  # create_ddp_model: [local rank]
    assert ddp_arguments(synced, "cpu", 2) == {"device_ids": None, "broadcast_buffers": False}
    assert ddp_arguments(synced, "cuda:0", 2) == {"broadcast_buffers": False}
    lines = [r.getMessage() for r in caplog.records if "BatchNorm" in r.getMessage()]
    assert len(lines) == 2 and "1 plain BatchNorm layers (e.g. 1)" in lines[0]
    assert "broadcasts rank 0's running statistics" in lines[0] and "SyncBN" in lines[0]


@pytest.mark.parametrize("norm, per_process", [("BN", True), ("SyncBN", False)])
def test_the_demo_model_with_bn_or_sync_bn(norm, per_process):
    opts = [*TINY_MODEL, "MODEL.RESNETS.NORM", norm, "MODEL.SEM_SEG_HEAD.NORM", norm]
    model = Trainer.build_model(load_config("demo_synthetic.yaml", opts))
    assert bool(per_process_batch_norms(model)) == per_process


# One of 2 gloo processes (torch only, to start fast): two training steps on data of its own,
# then one evaluation forward, of a model wrapped with OURS (ddp_arguments) and of one wrapped as
# detectron2's DefaultTrainer does; it saves both BatchNorms' running means.
RANK_SCRIPT = """
import sys, torch, torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
rank, port, out, ours_kwargs = int(sys.argv[1]), sys.argv[2], sys.argv[3], eval(sys.argv[4])
dist.init_process_group("gloo", f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
torch.manual_seed(0)
ours, detectron2s = (nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)) for _ in range(2))
wrapped = [
    DistributedDataParallel(ours, **ours_kwargs),
    DistributedDataParallel(detectron2s, broadcast_buffers=False, device_ids=None),
]
for model in wrapped:
    for step in range(2):
        model(torch.full((2, 3, 5, 5), float(rank * 10 + step))).sum().backward()
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, 3, 5, 5))
torch.save([ours[1].running_mean, detectron2s[1].running_mean], f"{out}/{rank}")
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_two_processes_evaluate_the_same_statistics(tmp_path):
    kwargs = ddp_arguments(conv_with(nn.BatchNorm2d(4)), "cpu", 2)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-c", RANK_SCRIPT, "RANK", str(port), str(tmp_path), repr(kwargs)]
    procs = [subprocess.Popen(cmd[:3] + [str(rank)] + cmd[4:]) for rank in (0, 1)]
    try:
        assert [proc.wait(timeout=120) for proc in procs] == [0, 0]
    finally:
        kill_all(*procs)
    (ours0, theirs0), (ours1, theirs1) = (torch.load(tmp_path / f"{r}") for r in (0, 1))
    assert torch.equal(ours0, ours1)
    assert not torch.allclose(theirs0, theirs1)  # what broadcast_buffers=False leaves
