"""What users feed the tool by mistake: each case gets a clear one-line error naming the file or
config key and the fix, or is handled correctly.

Cases covered in other files: corrupt image, image/label size mismatch, label values out of
range, RGB label files (test_data.py); empty split and unknown dataset names
(test_custom_data.py); SUBDIVISION_NUM_POINTS above the pixel count, SUBDIVISION_STEPS that do
not reach stride 1 and a batch whose points are all ignored (test_pointrend_head.py).
"""

import argparse
import logging
import os
import sys

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, load_config, run_command
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage
from PIL import Image

from pointrend_sem.data import SemSegDatasetMapper
from pointrend_sem.data.datasets import check_dataset_ready
from pointrend_sem.engine import check_weights_file, setup


def setup_args(config="configs/demo_synthetic.yaml", opts=()):
    return argparse.Namespace(config_file=os.path.join(REPO_ROOT, config), opts=list(opts))


def run_train_net(tmp_path, *args):
    env = dict(os.environ, DETECTRON2_DATASETS=str(tmp_path / "datasets"))
    cmd = [sys.executable, "train_net.py", *args]
    return run_command(cmd, env=env)


def last_line(text):
    return text.strip().splitlines()[-1]


def test_missing_dataset_root_names_path_variable_and_prepare_command(tmp_path):
    proc = run_train_net(
        tmp_path, "--config-file", "configs/voc_r50.yaml", "OUTPUT_DIR", str(tmp_path / "out")
    )
    assert proc.returncode != 0
    line = last_line(proc.stderr)
    assert "FileNotFoundError" in line and "VOCdevkit" in line
    assert "DETECTRON2_DATASETS" in line and "python datasets/prepare_voc.py" in line


def test_num_classes_disagreeing_with_the_dataset_is_named():
    with pytest.raises(ValueError, match="MODEL.SEM_SEG_HEAD.NUM_CLASSES"):
        check_dataset_ready("synthetic_shapes_sem_seg_val", num_classes=7)


def test_unknown_config_key_suggests_the_right_one():
    opts = ["MODEL.POINTREND_SEM.SUBDIVISION_NUM_POINT", "5"]
    with pytest.raises(KeyError) as err:
        setup(setup_args(opts=opts), log=False)
    message = str(err.value)
    assert "MODEL.POINTREND_SEM.SUBDIVISION_NUM_POINT " in message
    assert "Did you mean MODEL.POINTREND_SEM.SUBDIVISION_NUM_POINTS" in message
    assert "command line" in message


def test_missing_config_file_is_named():
    with pytest.raises(FileNotFoundError, match="configs/nope.yaml"):
        setup(setup_args(config="configs/nope.yaml"), log=False)


def test_missing_weights_file_is_named(tmp_path):
    missing = str(tmp_path / "resnet50_v1c.pth")
    with pytest.raises(FileNotFoundError, match="MODEL.WEIGHTS .*resnet50_v1c.pth"):
        check_weights_file(missing)
    check_weights_file("")  # training from scratch
    check_weights_file("detectron2://ImageNetPretrained/MSRA/R-101.pkl")  # downloaded by d2
    proc = run_train_net(
        tmp_path,
        "--config-file", "configs/demo_synthetic.yaml", "--eval-only",
        "MODEL.WEIGHTS", missing, "OUTPUT_DIR", str(tmp_path / "out"),
    )  # fmt: skip
    assert proc.returncode != 0
    assert "MODEL.WEIGHTS" in last_line(proc.stderr) and missing in last_line(proc.stderr)


def test_checkpoint_for_another_number_of_classes_reports_skipped_head_weights(tmp_path, caplog):
    five = build_model(load_config())
    path = str(tmp_path / "five_classes.pth")
    torch.save({"model": five.state_dict()}, path)
    three = build_model(load_config(opts=["MODEL.SEM_SEG_HEAD.NUM_CLASSES", 3]))
    with caplog.at_level(logging.WARNING):
        DetectionCheckpointer(three).load(path)
    skipped = "Skip loading parameter 'sem_seg_head.coarse_sem_seg_head.predictor.weight'"
    assert skipped in caplog.text
    assert "sem_seg_head.point_head.predictor.weight" in caplog.text
    backbone_key = "backbone.bottom_up.stem.conv1.weight"
    assert torch.equal(three.state_dict()[backbone_key], five.state_dict()[backbone_key])


def test_nan_loss_stops_naming_the_iteration_and_keeps_the_last_checkpoint(tmp_path):
    out = tmp_path / "out"
    flags = ["--config-file", "configs/demo_synthetic.yaml"]
    opts = ["OUTPUT_DIR", str(out), "SOLVER.IMS_PER_BATCH", "2", "SOLVER.CHECKPOINT_PERIOD", "1"]
    opts += ["DATALOADER.NUM_WORKERS", "0"]
    assert run_train_net(tmp_path, *flags, *opts, "SOLVER.MAX_ITER", "2").returncode == 0
    good = (out / "last_checkpoint").read_text()
    good_bytes = (out / good).read_bytes()
    # resume with inputs divided by zero: the loss is NaN at the first resumed iteration
    nan_opts = ["SOLVER.MAX_ITER", "4", "MODEL.PIXEL_STD", "[0.0, 0.0, 0.0]"]
    proc = run_train_net(tmp_path, *flags, "--resume", *opts, *nan_opts)
    assert proc.returncode != 0
    assert "Loss became infinite or NaN at iteration=2" in proc.stderr
    assert (out / "last_checkpoint").read_text() == good
    assert (out / good).read_bytes() == good_bytes
    assert torch.load(out / good, weights_only=False)["iteration"] == 1


def write_image(path, array):
    Image.fromarray(array).save(path)
    return str(path)


@pytest.mark.parametrize(
    "name, array",
    [
        ("gray", np.full((30, 40), 200, np.uint8)),
        ("rgba", np.dstack([np.full((30, 40, 3), 200, np.uint8), np.zeros((30, 40), np.uint8)])),
        ("sixteen_bit", np.full((30, 40), 200 * 257, np.uint16)),
    ],
)
def test_grayscale_rgba_and_16_bit_images_become_8_bit_rgb(tmp_path, name, array):
    image = write_image(tmp_path / f"{name}.png", array)
    label = write_image(tmp_path / "label.png", np.ones((30, 40), np.uint8))
    mapper = SemSegDatasetMapper(load_config(), is_train=False)
    out = mapper({"file_name": image, "sem_seg_file_name": label})
    assert out["image"].dtype == torch.uint8 and out["image"].shape[0] == 3
    assert out["image"].float().mean().round() == 200


def test_image_smaller_than_the_crop_trains(tmp_path):
    cfg = load_config()  # crops of 96x96
    image = write_image(tmp_path / "small.png", np.random.randint(0, 255, (40, 50, 3), np.uint8))
    label = write_image(tmp_path / "label.png", np.random.randint(0, 5, (40, 50), np.uint8))
    mapper = SemSegDatasetMapper(cfg, is_train=True)
    batch = [mapper({"file_name": image, "sem_seg_file_name": label}) for _ in range(2)]
    assert all(max(x["image"].shape[1:]) <= 96 for x in batch)
    model = build_model(cfg)
    with EventStorage():
        losses = model(batch)
    assert all(torch.isfinite(v) for v in losses.values())


def test_one_class_binary_model_trains_and_predicts_foreground():
    cfg = load_config(opts=["MODEL.SEM_SEG_HEAD.NUM_CLASSES", 1])
    model = build_model(cfg)
    labels = torch.zeros(64, 64, dtype=torch.long)
    labels[16:48, 16:48] = 1
    labels[:4] = 255
    batch = [{"image": torch.randint(0, 255, (3, 64, 64), dtype=torch.uint8), "sem_seg": labels}]
    with EventStorage():
        losses = model(batch)
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    sum(losses.values()).backward()
    model.eval()
    with torch.no_grad():
        out = model([{"image": batch[0]["image"]}])[0]["sem_seg"]
    assert out.shape == (2, 64, 64)  # (background, foreground): argmax is the binary mask
    assert torch.equal(out[0], torch.zeros(64, 64))


def test_binary_labels_pass_the_label_check(tmp_path):
    image = write_image(tmp_path / "image.png", np.zeros((8, 8, 3), np.uint8))
    label = write_image(tmp_path / "label.png", np.array([[0, 1, 255, 1]] * 8, np.uint8)[:, :4])
    mapper = SemSegDatasetMapper(load_config(opts=["MODEL.SEM_SEG_HEAD.NUM_CLASSES", 1]), True)
    mapper.augmentations.augs = []
    record = {"file_name": image, "sem_seg_file_name": label}
    write_image(tmp_path / "image.png", np.zeros((8, 4, 3), np.uint8))
    assert set(mapper(record)["sem_seg"].unique().tolist()) == {0, 1, 255}
