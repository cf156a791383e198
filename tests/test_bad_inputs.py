"""What users feed the tool by mistake: each case gets a clear one-line error naming the file or
config key and the fix (``error: ...`` on stderr, no traceback, unless POINTREND_SEM_DEBUG=1), or
is handled correctly.

Cases covered in other files: corrupt image, image/label size mismatch, label values out of
range, RGB label files (test_data.py); empty split and unknown dataset names
(test_custom_data.py); SUBDIVISION_NUM_POINTS above the pixel count, SUBDIVISION_STEPS that do
not reach stride 1 and a batch whose points are all ignored (test_pointrend_head.py).
"""

import argparse
import json
import logging
import os
import sys

import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, load_config, run_script
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage
from PIL import Image

from pointrend_sem.checkpoint import (
    check_weights_file,
    checkpoint_read_problem,
    explain_unreadable_checkpoint,
)
from pointrend_sem.data import SemSegDatasetMapper
from pointrend_sem.data.datasets import check_dataset_ready
from pointrend_sem.engine import setup
from pointrend_sem.errors import (
    DEBUG_ENV,
    UserError,
    UserFileNotFoundError,
    UserKeyError,
    UserValueError,
    main_with_one_line_errors,
    one_line,
)


def setup_args(config="configs/demo_synthetic.yaml", opts=()):
    return argparse.Namespace(config_file=os.path.join(REPO_ROOT, config), opts=list(opts))


def child_env(tmp_path, debug=False):
    """This environment with the datasets under ``tmp_path``; tracebacks only with ``debug``."""
    env = dict(os.environ, DETECTRON2_DATASETS=str(tmp_path / "datasets"))
    env.pop(DEBUG_ENV, None)
    if debug:
        env[DEBUG_ENV] = "1"
    return env


def run_train_net(tmp_path, *args, debug=False):
    cmd = [sys.executable, "train_net.py", *args]
    return run_script(cmd, env=child_env(tmp_path, debug))


def last_line(text):
    return text.strip().splitlines()[-1]


def assert_one_line_error(proc, *names):
    """``proc`` failed with one ``error: ...`` line naming each of ``names``, no traceback."""
    assert proc.returncode != 0
    line = last_line(proc.stderr)
    assert line.startswith("error: "), proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    for name in names:
        assert name in line, line
    return line


def test_missing_dataset_root_names_path_variable_and_prepare_command(tmp_path):
    proc = run_train_net(
        tmp_path, "--config-file", "configs/voc_r50.yaml", "OUTPUT_DIR", str(tmp_path / "out")
    )
    line = assert_one_line_error(proc, "VOCdevkit")
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
    with pytest.raises(FileNotFoundError, match="MODEL.WEIGHTS file://.*resnet50_v1c.pth"):
        check_weights_file("file://" + missing)
    (tmp_path / "there.pth").write_bytes(b"")
    check_weights_file(f"file://{tmp_path / 'there.pth'}")  # a URL of a local file is fine
    check_weights_file("")  # training from scratch
    check_weights_file("detectron2://ImageNetPretrained/MSRA/R-101.pkl")  # downloaded by d2
    proc = run_train_net(
        tmp_path,
        "--config-file", "configs/demo_synthetic.yaml", "--eval-only",
        "MODEL.WEIGHTS", missing, "OUTPUT_DIR", str(tmp_path / "out"),
    )  # fmt: skip
    assert proc.returncode != 0
    assert "MODEL.WEIGHTS" in last_line(proc.stderr) and missing in last_line(proc.stderr)
    assert_one_line_error(proc, "MODEL.WEIGHTS", missing)


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


@pytest.mark.slow
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


# --- one-line errors -----------------------------------------------------------------------

DEMO = ["--config-file", "configs/demo_synthetic.yaml"]


def truncated_checkpoint(tmp_path):
    """The first 100 bytes of a real checkpoint, as an interrupted download leaves it."""
    path = tmp_path / "model_final.pth"
    torch.save({"model": {"w": torch.zeros(1000)}}, path)
    path.write_bytes(path.read_bytes()[:100])
    return str(path)


@pytest.mark.parametrize("eval_only", [True, False], ids=["eval_only", "train"])
def test_truncated_checkpoint_is_named_in_one_line(tmp_path, eval_only):
    weights = truncated_checkpoint(tmp_path)
    flags = ["--eval-only"] if eval_only else []
    opts = ["MODEL.WEIGHTS", weights, "OUTPUT_DIR", str(tmp_path / "out"), "SOLVER.MAX_ITER", "1"]
    proc = run_train_net(tmp_path, *DEMO, *flags, *opts)
    line = assert_one_line_error(proc, weights, "MODEL.WEIGHTS")
    assert "tools/convert_weights.py" in line


def test_debug_switch_brings_the_traceback_back(tmp_path):
    missing = str(tmp_path / "nope.pth")
    opts = ["--eval-only", "MODEL.WEIGHTS", missing, "OUTPUT_DIR", str(tmp_path / "out")]
    proc = run_train_net(tmp_path, *DEMO, *opts, debug=True)
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr
    assert last_line(proc.stderr).startswith("pointrend_sem.errors.UserFileNotFoundError: ")


def test_unknown_config_key_on_the_command_line_is_one_line_with_close_matches(tmp_path):
    proc = run_train_net(tmp_path, *DEMO, "MODEL.POINTREND_SEM.SUBDIVISION_NUM_POINT", "5")
    assert_one_line_error(
        proc,
        "MODEL.POINTREND_SEM.SUBDIVISION_NUM_POINT ",
        "MODEL.POINTREND_SEM.SUBDIVISION_NUM_POINTS",
    )


def test_empty_custom_dataset_is_one_line_naming_the_extensions(tmp_path):
    (tmp_path / "datasets" / "gifs" / "images").mkdir(parents=True)
    (tmp_path / "datasets" / "gifs" / "labels").mkdir()
    (tmp_path / "datasets" / "gifs" / "images" / "a.gif").write_bytes(b"GIF89a")
    entry = {"name": "gifs_val", "image_dir": "gifs/images", "label_dir": "gifs/labels"}
    datasets_file = tmp_path / "gifs.json"
    datasets_file.write_text(json.dumps(dict(entry, classes=["a", "b", "c", "d", "e"])))
    opts = ["--datasets-file", str(datasets_file), "DATASETS.TEST", "('gifs_val',)"]
    proc = run_train_net(tmp_path, *DEMO, "--eval-only", *opts)
    assert_one_line_error(proc, "gifs_val", "1 .gif", ".png", "image_ext")


def raise_a_user_error_in_rank_1(rank):
    if rank == 1:
        raise UserValueError("MODEL.WEIGHTS names /x/nope.pth, which does not exist")


def test_user_error_in_a_process_of_launch_is_one_line(capfd):
    """With several processes (detectron2's launch(), through torch's start_processes) the error
    is raised in a child, and comes back quoted in torch's ProcessRaisedException: still one
    line. The processes are forked, to start at once; train_net.py's own 2-process launch, with
    a process that fails, is tested in test_resumption.py."""

    def launch_two():
        torch.multiprocessing.start_processes(
            raise_a_user_error_in_rank_1, nprocs=2, start_method="fork"
        )

    with pytest.raises(SystemExit) as stopped:
        main_with_one_line_errors(launch_two)()
    assert stopped.value.code == 1
    err = capfd.readouterr().err
    assert err.strip().splitlines()[-1] == (
        "error: MODEL.WEIGHTS names /x/nope.pth, which does not exist"
    )
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "opts, expected",
    [
        (
            ["SOLVER.MAX_ITER", "abc"],
            "SOLVER.MAX_ITER in the command line takes a value of type int",
        ),
        (["SOLVER", "1"], "SOLVER in the command line is a group of keys"),
        (["SOLVER.MAX_ITER"], "must be KEY VALUE pairs"),
    ],
)
def test_config_values_of_the_wrong_type_are_explained(opts, expected):
    with pytest.raises(UserValueError, match=expected):
        setup(setup_args(opts=opts), log=False)


def test_config_file_with_bad_yaml_or_missing_base_is_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("MODEL: [\n")
    with pytest.raises(UserValueError, match=f"Config file {bad} is not valid YAML"):
        setup(setup_args(config=str(bad)), log=False)
    child = tmp_path / "child.yaml"
    child.write_text("_BASE_: Base-nope.yaml\n")
    with pytest.raises(UserFileNotFoundError, match="Base-nope.yaml .*_BASE_"):
        setup(setup_args(config=str(child)), log=False)


def test_checkpoint_read_problem_says_why(tmp_path):
    good = tmp_path / "good.pth"
    torch.save({"model": {"w": torch.zeros(3)}}, good)
    assert checkpoint_read_problem(str(good)) is None
    assert "zip archive" in checkpoint_read_problem(truncated_checkpoint(tmp_path))
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    assert "ends too early" in checkpoint_read_problem(str(empty))
    text = tmp_path / "notes.pkl"
    text.write_text("not a pickle")
    assert checkpoint_read_problem(str(text)) is not None
    pickled = tmp_path / "pickled.pth"
    torch.save({"model": {"w": np.zeros(3)}, "meta": argparse.Namespace()}, pickled)
    assert "pickled Python objects" in checkpoint_read_problem(str(pickled))


def test_explain_unreadable_checkpoint_passes_other_errors(tmp_path):
    weights = truncated_checkpoint(tmp_path)
    with pytest.raises(UserValueError, match=f"Cannot read the checkpoint {weights}"):
        with explain_unreadable_checkpoint(weights):
            torch.load(weights)
    good = tmp_path / "good.pth"
    torch.save({}, good)
    with pytest.raises(RuntimeError, match="size mismatch"):  # the file reads fine: not its fault
        with explain_unreadable_checkpoint(str(good)):
            raise RuntimeError("size mismatch")


def test_user_errors_are_the_builtin_errors_too():
    assert issubclass(UserFileNotFoundError, FileNotFoundError)
    assert issubclass(UserValueError, ValueError) and issubclass(UserKeyError, KeyError)
    assert str(UserKeyError("Unknown key X")) == "Unknown key X"  # unquoted, unlike KeyError
    with pytest.raises(FileNotFoundError):
        check_weights_file("nope.pth")


def raise_(error):
    raise error


def test_handler_prints_one_line_and_exits(capsys, monkeypatch):
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    with pytest.raises(SystemExit) as exit_info:
        main_with_one_line_errors(raise_)(UserValueError("Label x.png has values [7]\nfix it"))
    assert exit_info.value.code == 1
    assert capsys.readouterr().err == "error: Label x.png has values [7] fix it\n"
    with pytest.raises(SystemExit) as exit_info:
        main_with_one_line_errors(raise_, exit_code=2)(UserKeyError("Unknown key"))
    assert exit_info.value.code == 2
    assert main_with_one_line_errors(lambda: 3)() == 3


def test_handler_keeps_unexpected_errors_and_debug_keeps_all(monkeypatch):
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    with pytest.raises(RuntimeError, match="a bug"):
        main_with_one_line_errors(raise_)(RuntimeError("a bug"))
    with pytest.raises(FileNotFoundError):  # not raised by a check of ours: keeps its traceback
        main_with_one_line_errors(raise_)(FileNotFoundError("/x"))
    monkeypatch.setenv(DEBUG_ENV, "1")
    with pytest.raises(UserValueError):
        main_with_one_line_errors(raise_)(UserValueError("bad"))


class UnreadableImages(torch.utils.data.Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, index):
        raise UserValueError(f"Cannot read image {index}.jpg: truncated")


def test_user_error_in_a_dataloader_worker_gives_its_own_line(capsys, monkeypatch):
    """torch re-raises a worker's error with the worker's traceback as the message."""
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    loader = torch.utils.data.DataLoader(UnreadableImages(), num_workers=1)
    with pytest.raises(UserError) as err:
        next(iter(loader))
    assert "Traceback" in str(err.value)
    assert one_line(err.value) == "Cannot read image 0.jpg: truncated"
    with pytest.raises(SystemExit):
        main_with_one_line_errors(lambda: next(iter(loader)))()
    assert capsys.readouterr().err == "error: Cannot read image 0.jpg: truncated\n"


def run_tool(tmp_path, *args):
    return run_script([sys.executable, *map(str, args)], env=child_env(tmp_path))


def test_tools_end_user_errors_in_one_line(tmp_path):
    labels = tmp_path / "labels"
    labels.mkdir()
    names = tmp_path / "names.txt"
    proc = run_tool(tmp_path, "tools/check_labels.py", labels, "--class-names-file", names)
    assert_one_line_error(proc, str(names))
    assert proc.returncode == 2
    missing = tmp_path / "metrics.json"
    proc = run_tool(tmp_path, "tools/plot_metrics.py", missing, "--output", tmp_path / "c.png")
    assert_one_line_error(proc, str(missing), "OUTPUT_DIR/metrics.json")
    not_metrics = write_image(tmp_path / "image.png", np.zeros((4, 4), np.uint8))
    proc = run_tool(tmp_path, "tools/plot_metrics.py", not_metrics, "--output", tmp_path / "c.png")
    assert_one_line_error(proc, not_metrics, "not a text file")


def test_demo_and_weight_tools_end_user_errors_in_one_line(tmp_path):
    config = "configs/demo_synthetic.yaml"
    missing = tmp_path / "missing.png"
    proc = run_tool(tmp_path, "demo/demo.py", "--config-file", config, "--input", missing,
                    "--output", tmp_path / "out")  # fmt: skip
    assert_one_line_error(proc, str(missing))
    weights = tmp_path / "absent.pth"
    proc = run_tool(tmp_path, "tools/visualize_points.py", "--config-file", config, "--input",
                    missing, "--output", tmp_path / "p.png", "--opts", "MODEL.WEIGHTS",
                    weights)  # fmt: skip
    assert_one_line_error(proc, str(missing))
    proc = run_tool(tmp_path, "tools/convert_weights.py", "--from", "mmseg", "--config-file",
                    config, weights, tmp_path / "out.pth")  # fmt: skip
    assert_one_line_error(proc, str(weights))


@pytest.mark.parametrize("case", ["unreadable", "rgb", "size", "values"])
def test_mapper_errors_are_user_errors(tmp_path, case):
    image = write_image(tmp_path / "image.png", np.zeros((8, 8, 3), np.uint8))
    label = write_image(tmp_path / "label.png", np.zeros((8, 8), np.uint8))
    if case == "unreadable":
        image = tmp_path / "broken.png"
        image.write_bytes(b"not a png")
    elif case == "rgb":
        label = write_image(tmp_path / "label.png", np.zeros((8, 8, 3), np.uint8))
    elif case == "size":
        label = write_image(tmp_path / "label.png", np.zeros((4, 8), np.uint8))
    else:
        label = write_image(tmp_path / "label.png", np.full((8, 8), 9, np.uint8))
    mapper = SemSegDatasetMapper(load_config(), is_train=True)
    with pytest.raises(UserValueError):
        mapper({"file_name": str(image), "sem_seg_file_name": str(label)})
