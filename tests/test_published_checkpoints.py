"""Published checkpoints given to MODEL.WEIGHTS as they are: recognized from their contents,
converted on load with the checks of tools/convert_weights.py, cached, and predicting exactly what
the converted file predicts."""

import logging
import os
import re

import cv2
import numpy as np
import pytest
import torch
import torchvision
from conftest import load_config
from test_convert_sssegmentation import sssegmentation_state

from pointrend_sem.checkpoint import CACHE_ENV, PointRendSemCheckpointer, cache_dir
from pointrend_sem.convert.published import recognize_checkpoint
from pointrend_sem.errors import UserValueError
from pointrend_sem.predictor import SemSegPredictor
from tools.convert_weights import main as convert_weights

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# a tiny mmsegmentation-recipe model (R-18, BN)
MMSEG_OPTS = ["MODEL.RESNETS.NORM", "BN", "MODEL.SEM_SEG_HEAD.NORM", "BN"]
MMSEG_OPTS += ["MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64"]
MMSEG_OPTS += ["MODEL.SEM_SEG_HEAD.NUM_CLASSES", "7", "INPUT.MIN_SIZE_TEST", "64"]
MMSEG_OPTS += ["INPUT.MAX_SIZE_TEST", "96", "MODEL.POINTREND_SEM.SUBDIVISION_NUM_POINTS", "300"]
SSSEG_OPTS = ["INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "96"]


@pytest.fixture(autouse=True)
def cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def mmseg_checkpoint(tmp_path_factory):
    """A raw mmsegmentation checkpoint of a random tiny PointRend (as published: meta + state)."""
    pytest.importorskip("mmseg", reason="mmsegmentation is not installed")
    from tools.benchmarking.reference_models import build_mmseg_pointrend, randomize_norms

    torch.manual_seed(0)
    reference = build_mmseg_pointrend(depth=18, num_classes=7)
    randomize_norms(reference, seed=0)
    path = tmp_path_factory.mktemp("mmseg") / "pointrend_r18_mmseg.pth"
    meta = {"mmseg_version": "0.5.0", "CLASSES": tuple("abcdefg"), "iter": 80000}
    torch.save({"meta": meta, "state_dict": reference.state_dict()}, path)
    return str(path)


def image(seed: int = 0) -> np.ndarray:
    return np.random.RandomState(seed).randint(0, 256, (75, 101, 3), dtype=np.uint8)


def predict(config: str, opts, weights: str) -> torch.Tensor:
    cfg = load_config(config, [*opts, "MODEL.WEIGHTS", weights])
    return SemSegPredictor(cfg)(image())["sem_seg"]


def convert(*args) -> None:
    assert convert_weights([str(a) for a in args]) == 0


def test_raw_mmseg_checkpoint_predicts_as_the_converted_file(mmseg_checkpoint, tmp_path, caplog):
    converted = tmp_path / "converted.pth"
    convert(
        "--from",
        "mmseg",
        "--config-file",
        "configs/cityscapes_r50.yaml",
        mmseg_checkpoint,
        converted,
        *MMSEG_OPTS,
    )
    expected = predict("cityscapes_r50.yaml", MMSEG_OPTS, str(converted))
    with caplog.at_level(logging.INFO):
        got = predict("cityscapes_r50.yaml", MMSEG_OPTS, mmseg_checkpoint)
    assert torch.equal(got, expected)
    assert "an mmsegmentation PointRend checkpoint, converted, cached at" in caplog.text
    assert len(os.listdir(cache_dir())) == 1

    caplog.clear()
    with caplog.at_level(logging.INFO):  # again, from the cache, through a file:// URL
        got = predict("cityscapes_r50.yaml", MMSEG_OPTS, f"file://{mmseg_checkpoint}")
    assert torch.equal(got, expected)
    assert "converted earlier, read from" in caplog.text


def test_corrupt_cache_entry_is_rebuilt(mmseg_checkpoint, caplog):
    expected = predict("cityscapes_r50.yaml", MMSEG_OPTS, mmseg_checkpoint)
    (entry,) = [os.path.join(cache_dir(), name) for name in os.listdir(cache_dir())]
    with open(entry, "r+b") as f:
        f.truncate(100)
    with caplog.at_level(logging.INFO):
        got = predict("cityscapes_r50.yaml", MMSEG_OPTS, mmseg_checkpoint)
    assert torch.equal(got, expected)
    assert "cannot be read; converting again" in caplog.text
    assert torch.load(entry, weights_only=True)["source"] == "mmseg"


def test_checkpoint_that_does_not_fit_names_the_file_and_keys(mmseg_checkpoint):
    opts = [*MMSEG_OPTS, "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "9"]
    with pytest.raises(UserValueError) as error:
        predict("cityscapes_r50.yaml", opts, mmseg_checkpoint)
    message = str(error.value)
    assert mmseg_checkpoint in message and "an mmsegmentation PointRend checkpoint" in message
    assert "coarse_sem_seg_head.predictor.weight: shape (7, 128, 1, 1)" in message


@pytest.mark.parametrize("fold", [False, True])
def test_raw_sssegmentation_checkpoint_predicts_as_the_converted_file(tmp_path, fold):
    source, converted = tmp_path / "pointrend_resnet50os8_voc_train.pth", tmp_path / "conv.pth"
    torch.manual_seed(0)
    torch.save({"epoch": 60, "model": sssegmentation_state(50, 21)}, source)
    opts = [*SSSEG_OPTS, "MODEL.POINTREND_SEM.FC_NORM", ""] if fold else SSSEG_OPTS
    args = ["--from", "sssegmentation", "--config-file", "configs/voc_r50_sssegmentation.yaml"]
    convert(*args, *(["--fold-point-head-norms"] if fold else []), source, converted)
    expected = predict("voc_r50_sssegmentation.yaml", opts, str(converted))
    got = predict("voc_r50_sssegmentation.yaml", opts, str(source))
    assert torch.equal(got, expected)


def test_imagenet_backbones_are_recognized_and_converted(tmp_path):
    state = torchvision.models.resnet18().state_dict()
    assert recognize_checkpoint(state)[0] == "torchvision"
    source = tmp_path / "resnet18.pkl"  # recognized from the contents, whatever the name
    torch.save(state, source)
    opts = ["MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64"]
    opts += ["MODEL.RESNETS.STEM_TYPE", "basic", "MODEL.RESNETS.NORM", "BN"]
    from detectron2.modeling import build_model

    model = build_model(load_config("cityscapes_r50.yaml", opts))
    PointRendSemCheckpointer(model).load(str(source))
    bottom_up = model.backbone.bottom_up
    assert torch.equal(bottom_up.stem.conv1.weight, state["conv1.weight"])
    assert torch.equal(bottom_up.res5[1].conv2.norm.running_var, state["layer4.1.bn2.running_var"])


def test_own_and_detectron2_checkpoints_are_not_converted():
    assert recognize_checkpoint({"model": {"backbone.bottom_up.stem.conv1.weight": 0}}) is None
    assert recognize_checkpoint({"model": {"sem_seg_head.point_head.fc1.weight": 0}}) is None
    assert recognize_checkpoint({"state_dict": {"decode_head.0.conv_seg.bias": 0}})[0] == "mmseg"
    assert recognize_checkpoint({"model": {"module.backbone_net.stem.0.weight": 0}})[0] == (
        "sssegmentation"
    )


def readme_python_block() -> str:
    with open(os.path.join(REPO_ROOT, "README.md")) as f:
        readme = f.read()
    section = readme[readme.index("## Use from Python") :]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL)[1]


def test_readme_python_example_runs(mmseg_checkpoint, tmp_path, monkeypatch):
    code = readme_python_block()
    url = re.search(r'cfg\.MODEL\.WEIGHTS = "(https://[^"]+)"', code)[1]
    assert url.startswith("https://download.openmmlab.com/mmsegmentation/")
    code = code.replace(url, f"file://{mmseg_checkpoint}")
    merge = 'cfg.merge_from_file("configs/cityscapes_r50.yaml")'
    assert merge in code
    code = code.replace(merge, f"{merge}\ncfg.merge_from_list({MMSEG_OPTS!r})")
    picture = tmp_path / "image.png"
    cv2.imwrite(str(picture), image())
    code = code.replace('"image.png"', repr(str(picture)))
    monkeypatch.chdir(REPO_ROOT)
    monkeypatch.syspath_prepend(REPO_ROOT)
    namespace = {}
    exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["labels"].shape == (75, 101)
    expected = predict("cityscapes_r50.yaml", MMSEG_OPTS, mmseg_checkpoint).argmax(0)
    assert torch.equal(namespace["labels"], expected)


def test_trainer_initializes_from_a_published_backbone(tmp_path):
    from conftest import TINY_MODEL

    from pointrend_sem.checkpoint import AtomicWritesPathManager
    from pointrend_sem.engine import Trainer

    state = torchvision.models.resnet18().state_dict()
    source = tmp_path / "resnet18-f37072fd.pth"
    torch.save(state, source)
    opts = [*TINY_MODEL, "MODEL.RESNETS.STEM_TYPE", "basic", "OUTPUT_DIR", str(tmp_path / "out")]
    cfg = load_config("demo_synthetic.yaml", [*opts, "MODEL.WEIGHTS", str(source)])
    trainer = Trainer(cfg)
    assert isinstance(trainer.checkpointer, PointRendSemCheckpointer)
    assert isinstance(trainer.checkpointer.path_manager, AtomicWritesPathManager)
    assert any(getattr(h, "checkpointer", None) is trainer.checkpointer for h in trainer._hooks)
    trainer.resume_or_load(resume=False)
    stem = trainer.model.backbone.bottom_up.stem
    assert torch.equal(stem.conv1.weight, state["conv1.weight"])
