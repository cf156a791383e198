"""tools/benchmark.py's point head share: timed without patching the model, and an error (not
a 0) when the timed functions do not run."""

import sys

import pytest
import torch
from conftest import load_config
from detectron2.modeling import build_model

from tools.benchmarking.point_share import measure_point_share


def test_point_share_counts_each_step_and_fails_loudly_when_nothing_runs():
    cfg = load_config("demo_synthetic.yaml")
    model = build_model(cfg).eval()
    image = torch.randint(0, 256, (3, 61, 83), dtype=torch.uint8)
    batch = [{"image": image, "height": 61, "width": 83}]

    share = measure_point_share(model, lambda: model(batch), "cpu")
    assert share["point_head_calls"] == cfg.MODEL.POINTREND_SEM.SUBDIVISION_STEPS
    assert 0 < share["point_head_ms"] + share["point_selection_ms"] < share["point_pass_ms"]
    assert sys.getprofile() is None

    with pytest.raises(RuntimeError, match="did not run in an inference pass"):
        measure_point_share(model, lambda: None, "cpu")
    assert sys.getprofile() is None
