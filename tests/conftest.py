import os

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


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield
