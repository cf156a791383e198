"""train_net.py as a user runs it: a few iterations on the synthetic data, then --eval-only."""

import json
import os
import sys

import pytest
import torch
from conftest import run_script


def run_train_net(tmp_path, *args):
    env = dict(os.environ, DETECTRON2_DATASETS=str(tmp_path / "datasets"))
    cmd = [sys.executable, "train_net.py", "--config-file", "configs/demo_synthetic.yaml", *args]
    proc = run_script(cmd, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_train_then_eval_only_gives_the_same_metrics(tmp_path):
    train_dir = tmp_path / "train"
    run_train_net(
        tmp_path,
        "SOLVER.MAX_ITER", "6",
        "SOLVER.CHECKPOINT_PERIOD", "3",
        "SOLVER.IMS_PER_BATCH", "2",
        "OUTPUT_DIR", str(train_dir),
    )  # fmt: skip
    assert (train_dir / "model_0000002.pth").is_file()
    assert (train_dir / "model_final.pth").is_file()
    with open(train_dir / "metrics.json") as f:
        rows = [json.loads(line) for line in f]
    final = [r for r in rows if "sem_seg/mIoU" in r][-1]
    assert "coarse_sem_seg/mIoU" in final and "sem_seg/mBoundaryIoU" in final
    assert "sem_seg/IoU-ellipse" in final

    eval_dir = tmp_path / "eval"
    proc = run_train_net(
        tmp_path,
        "--eval-only",
        "MODEL.WEIGHTS", str(train_dir / "model_final.pth"),
        "OUTPUT_DIR", str(eval_dir),
    )  # fmt: skip
    log = proc.stdout + proc.stderr
    assert "coarse_sem_seg" in log
    # the refinement table names the dataset, also when there is only one
    assert "| synthetic_shapes_sem_seg_val | mIoU " in log
    subdir = os.path.join("inference", "synthetic_shapes_sem_seg_val", "sem_seg_evaluation.pth")
    during_training = torch.load(train_dir / subdir, weights_only=False)
    eval_only = torch.load(eval_dir / subdir, weights_only=False)
    assert during_training == eval_only
    assert final["sem_seg/mIoU"] == eval_only["mIoU"]
