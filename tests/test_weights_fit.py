"""Weights that do not fit the model stop an evaluation or a prediction with one line naming the
entry, both shapes, the file and the fix; fine-tuning from them goes on and names what starts from
scratch. Config values that cannot work are named by key before anything is built."""

import argparse
import logging
import os

import numpy as np
import pytest
import torch
from conftest import (
    REPO_ROOT,
    TINY_MODEL,
    load_config,
    logging_left_as_found,
    one_line_error,
    run_tool,
)
from detectron2.modeling import build_model

from pointrend_sem.checkpoint import PointRendSemCheckpointer
from pointrend_sem.engine import Trainer, setup
from pointrend_sem.errors import UserValueError
from pointrend_sem.predictor import SemSegPredictor

DEMO = ["--config-file", "configs/demo_synthetic.yaml"]
COARSE_PREDICTOR = "sem_seg_head.coarse_sem_seg_head.predictor.weight"


def save_model(path, opts=(), keep=lambda key: True):
    """Save the state of the demo config's model (with ``opts``), the entries ``keep`` accepts,
    as train_net.py saves it; returns the path and the saved state."""
    state = build_model(load_config(opts=[str(o) for o in opts])).state_dict()
    state = {k: v for k, v in state.items() if keep(k)}
    torch.save({"model": state}, path)
    return str(path), state


@pytest.fixture(scope="module")
def three_classes(tmp_path_factory):
    """A checkpoint of the demo model trained for 3 classes (the demo config has 5)."""
    path = tmp_path_factory.mktemp("weights") / "three_classes.pth"
    return save_model(path, ["MODEL.SEM_SEG_HEAD.NUM_CLASSES", 3])[0]


def assert_names_the_class_mismatch(message, path):
    assert path in message
    assert f"{COARSE_PREDICTOR} is (3, 64, 1, 1), the model's (5, 64, 1, 1)" in message
    assert "set MODEL.SEM_SEG_HEAD.NUM_CLASSES 3" in message


def test_eval_only_with_a_checkpoint_of_another_class_count_stops(tmp_path, three_classes):
    out = tmp_path / "out"
    proc = run_tool(
        tmp_path, "train_net.py", *DEMO, "--eval-only", "MODEL.WEIGHTS", three_classes,
        "OUTPUT_DIR", out,
    )  # fmt: skip
    assert_names_the_class_mismatch(one_line_error(proc), three_classes)
    assert not (out / "inference").exists()  # stopped before evaluating


def test_predictor_with_a_checkpoint_of_another_class_count_raises(three_classes):
    with pytest.raises(UserValueError) as error:
        SemSegPredictor(load_config(opts=["MODEL.WEIGHTS", three_classes]))
    assert_names_the_class_mismatch(str(error.value), three_classes)


def test_export_with_a_checkpoint_of_another_class_count_is_one_line(tmp_path, three_classes):
    output = tmp_path / "model.pt2"
    proc = run_tool(
        tmp_path, "tools/export_model.py", *DEMO, "--format", "pt2", "--height", "32",
        "--width", "32", "--output", output, "MODEL.WEIGHTS", three_classes,
    )  # fmt: skip
    assert_names_the_class_mismatch(one_line_error(proc), three_classes)
    assert not output.exists()


def test_other_shapes_than_the_class_count_ask_for_the_matching_config(tmp_path):
    path, _ = save_model(tmp_path / "wide.pth", ["MODEL.SEM_SEG_HEAD.CONVS_DIM", 32])
    with pytest.raises(UserValueError) as error:
        PointRendSemCheckpointer(build_model(load_config()), strict_fit=True).load(path)
    message = str(error.value)
    assert path in message and "(32, 64, 3, 3), the model's (64, 64, 3, 3)" in message
    assert "Use the config that matches the checkpoint" in message
    assert "NUM_CLASSES" not in message


def test_backbone_only_checkpoint_names_the_first_missing_entry_and_the_count(tmp_path):
    path, _ = save_model(tmp_path / "backbone.pth", keep=lambda key: key.startswith("backbone."))
    model_state = build_model(load_config()).state_dict()
    expected = [
        k for k in model_state if not k.startswith("backbone.") and "num_batches_tracked" not in k
    ]
    expected = [k for k in expected if k not in ("pixel_mean", "pixel_std")]
    with pytest.raises(UserValueError) as error:
        SemSegPredictor(load_config(opts=["MODEL.WEIGHTS", path]))
    message = str(error.value)
    assert f"{path} lacks {len(expected)} of the model's parameters" in message
    assert f"(the first: {expected[0]})" in message


def test_checkpoint_that_fits_loads_and_predicts(tmp_path):
    """Also without the entries the model does not need from it: BatchNorm's batch counters and
    the pixel normalization (set by the config)."""
    not_needed = ("num_batches_tracked", "pixel_mean", "pixel_std")
    path, state = save_model(tmp_path / "fits.pth", keep=lambda key: not key.endswith(not_needed))
    predictor = SemSegPredictor(load_config(opts=["MODEL.WEIGHTS", path]))
    loaded = predictor.model.state_dict()
    assert all(torch.equal(loaded[k].cpu(), v) for k, v in state.items())
    image = np.random.RandomState(0).randint(0, 256, (37, 45, 3), dtype=np.uint8)
    assert predictor(image)["sem_seg"].shape == (5, 37, 45)


def test_no_weights_keeps_the_random_initialization():
    model = build_model(load_config())
    assert PointRendSemCheckpointer(model, strict_fit=True).load("") == {}


def test_fine_tuning_logs_what_starts_from_scratch(three_classes, caplog):
    model = build_model(load_config())
    backbone_key = "backbone.bottom_up.stem.conv1.weight"
    with caplog.at_level(logging.INFO, logger="pointrend_sem.checkpoint.checkpointer"):
        PointRendSemCheckpointer(model).load(three_classes)
    lines = [
        r.getMessage() for r in caplog.records if r.name == "pointrend_sem.checkpoint.checkpointer"
    ]
    assert len(lines) == 1, lines
    assert lines[0].startswith("7 parameters and buffers of the model start from scratch")
    assert three_classes in lines[0] and COARSE_PREDICTOR in lines[0]
    saved = torch.load(three_classes, weights_only=True)["model"]
    assert torch.equal(model.state_dict()[backbone_key], saved[backbone_key])


def test_trainer_fine_tunes_from_a_checkpoint_of_another_class_count(tmp_path, monkeypatch, caplog):
    path, _ = save_model(tmp_path / "tiny3.pth", [*TINY_MODEL, "MODEL.SEM_SEG_HEAD.NUM_CLASSES", 3])
    cfg = load_config(opts=[*TINY_MODEL, "MODEL.WEIGHTS", path, "OUTPUT_DIR", str(tmp_path)])
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "datasets"))
    with logging_left_as_found(), caplog.at_level(logging.INFO, logger="pointrend_sem"):
        trainer = Trainer(cfg)
        trainer.resume_or_load(resume=False)
    assert any(
        r.name == "pointrend_sem.checkpoint.checkpointer" and "start from scratch" in r.getMessage()
        for r in caplog.records
    ), caplog.text


def setup_args(opts, eval_only=False):
    config = os.path.join(REPO_ROOT, "configs", "demo_synthetic.yaml")
    return argparse.Namespace(config_file=config, opts=list(opts), eval_only=eval_only)


@pytest.mark.parametrize(
    "key, value, fix",
    [
        ("SOLVER.IMS_PER_BATCH", "0", "set it to 1 or more"),
        ("SOLVER.MAX_ITER", "-1", "0 or more"),
        ("SOLVER.BASE_LR", "0.0", "positive learning rate"),
        ("DATALOADER.NUM_WORKERS", "-1", "set it to 0"),
        ("TEST.EVAL_PERIOD", "-5", "or to 0"),
        ("SOLVER.CHECKPOINT_PERIOD", "0", "1 or more"),
        ("MODEL.SEM_SEG_HEAD.NUM_CLASSES", "0", "number of classes of the dataset"),
    ],
)
def test_config_values_that_cannot_work_are_named_by_key(key, value, fix):
    with pytest.raises(UserValueError) as error:
        setup(setup_args([key, value]), log=False)
    message = str(error.value)
    assert message.startswith(f"{key} is {value}: ") and fix in message
    assert "\n" not in message


def test_batch_that_does_not_divide_among_the_processes_is_named(monkeypatch):
    monkeypatch.setattr("detectron2.utils.comm.get_world_size", lambda: 2)
    with pytest.raises(
        UserValueError, match=r"SOLVER.IMS_PER_BATCH is 3, .* processes \(2\): .* e\.g\. 4\."
    ):
        setup(setup_args(["SOLVER.IMS_PER_BATCH", "3", "MODEL.DEVICE", "cpu"]), log=False)


def test_training_values_are_not_checked_for_evaluation():
    opts = ["SOLVER.BASE_LR", "0.0", "SOLVER.IMS_PER_BATCH", "0", "SOLVER.CHECKPOINT_PERIOD", "0"]
    setup(setup_args(opts, eval_only=True), log=False)
    tool_args = setup_args(opts)
    del tool_args.eval_only  # a tool's arguments: it only evaluates or predicts
    setup(tool_args, log=False)


def test_train_net_names_a_bad_config_value_in_one_line(tmp_path):
    proc = run_tool(tmp_path, "train_net.py", *DEMO, "SOLVER.BASE_LR", "0.0")
    assert one_line_error(proc).startswith("error: SOLVER.BASE_LR is 0.0: ")
