"""Two processes on a CPU-only machine (gloo): training with synchronized BN, and evaluation
whose metrics equal a single process's."""

import os
import socket
import sys

import torch
from conftest import run_command, run_script

METRICS = os.path.join("inference", "synthetic_shapes_sem_seg_val", "sem_seg_evaluation.pth")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_train_net(tmp_path, num_processes, output_dir, *opts):
    env = dict(os.environ, DETECTRON2_DATASETS=str(tmp_path / "datasets"))
    cmd = [sys.executable, "train_net.py", "--config-file", "configs/demo_synthetic.yaml"]
    cmd += ["--num-gpus", str(num_processes), "--dist-url", f"tcp://127.0.0.1:{free_port()}"]
    cmd += [*opts, "DATALOADER.NUM_WORKERS", "0", "OUTPUT_DIR", str(output_dir)]
    # several processes need launch() to start them; one runs in this process (the same code)
    proc = (run_command if num_processes > 1 else run_script)(cmd, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_two_process_training_with_sync_bn_then_equal_evaluation(tmp_path):
    """Training ends with an evaluation in both processes (detectron2's EvalHook); evaluating
    its final weights in one process gives the same metrics."""
    train_dir = tmp_path / "train"
    proc = run_train_net(
        tmp_path,
        2,
        train_dir,
        "SOLVER.MAX_ITER", "3",
        "SOLVER.IMS_PER_BATCH", "4",
        "MODEL.RESNETS.NORM", "SyncBN",
        "MODEL.SEM_SEG_HEAD.NORM", "SyncBN",
    )  # fmt: skip
    log = proc.stdout + proc.stderr
    assert "SyncBN replaced by naiveSyncBN" in log
    assert "plain BatchNorm layers" not in log  # SyncBN: buffers stay per process (no broadcast)
    assert "Rank of current process: 0. World size: 2" in log
    weights = str(train_dir / "model_final.pth")
    assert os.path.isfile(weights)

    one = tmp_path / "eval1"
    run_train_net(tmp_path, 1, one, "--eval-only", "MODEL.WEIGHTS", weights)
    single = torch.load(one / METRICS, weights_only=False)
    double = torch.load(train_dir / METRICS, weights_only=False)
    assert single == double
