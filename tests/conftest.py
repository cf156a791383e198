import os
import subprocess
import sys

import pytest
import torch
from detectron2.config import get_cfg

from pointrend_sem import add_pointrend_sem_config

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DIR = os.path.join(REPO_ROOT, "configs")


def load_config(name: str = "demo_synthetic.yaml", opts=()):
    """A config from configs/, on CPU."""
    cfg = get_cfg()
    add_pointrend_sem_config(cfg)
    cfg.merge_from_file(os.path.join(CONFIG_DIR, name))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", *opts])
    return cfg


# overrides that make any recipe tiny and CPU-fast: ResNet-18, 32-channel heads, 2 iterations
TINY_MODEL = [
    "MODEL.WEIGHTS", "",
    "MODEL.RESNETS.DEPTH", "18",
    "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
    "MODEL.RESNETS.NORM", "BN",
    "MODEL.FPN.OUT_CHANNELS", "32",
    "MODEL.SEM_SEG_HEAD.NORM", "BN",
    "MODEL.SEM_SEG_HEAD.CONVS_DIM", "32",
    "MODEL.POINTREND_SEM.FC_DIM", "32",
    "MODEL.POINTREND_SEM.TRAIN_NUM_POINTS", "64",
    "MODEL.POINTREND_SEM.SUBDIVISION_NUM_POINTS", "256",
    "SOLVER.MAX_ITER", "2",
    "SOLVER.IMS_PER_BATCH", "2",
    "INPUT.CROP.SIZE", "(16, 16)",
    "INPUT.MIN_SIZE_TEST", "32",
    "INPUT.MAX_SIZE_TEST", "64",
    "DATALOADER.NUM_WORKERS", "0",
    "TEST.EVAL_PERIOD", "0",
]  # fmt: skip


def tiny_train_net(config: str, datasets_root, output_dir, *opts) -> str:
    """Run ``train_net.py`` on a recipe made tiny (``TINY_MODEL``) with ``DETECTRON2_DATASETS``
    at ``datasets_root``; assert it succeeds and return its output."""
    cmd = [sys.executable, "train_net.py", "--config-file", config, *TINY_MODEL, *opts]
    cmd += ["OUTPUT_DIR", str(output_dir)]
    env = dict(os.environ, DETECTRON2_DATASETS=str(datasets_root))
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout + proc.stderr


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield
