import sys

import pytest
import torch
import torchvision
from conftest import load_config, run_script
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from pointrend_sem.convert.resnet import convert_resnet_backbone
from tools.benchmarking.reference_models import build_mmseg_pointrend
from tools.convert_weights import converter


def torchvision_resnet50_state():
    return torchvision.models.resnet50(weights=None).state_dict()


def mmcv_resnet50_v1c_state():
    """Key and shape structure of mmcv's ResNetV1c-50: a torchvision ResNet-50 whose 7x7 stem is
    replaced by mmcv's ``stem`` Sequential (conv 3->32 s2, BN, ReLU, conv 32->32, BN, ReLU,
    conv 32->64, BN, ReLU)."""
    state = {
        k: v for k, v in torchvision_resnet50_state().items() if not k.startswith(("conv1", "bn1"))
    }
    for index, (cin, cout) in zip((0, 3, 6), ((3, 32), (32, 32), (32, 64))):
        state[f"stem.{index}.weight"] = torch.randn(cout, cin, 3, 3)
        bn = torch.nn.BatchNorm2d(cout).state_dict()
        state.update({f"stem.{index + 1}.{k}": v for k, v in bn.items()})
    return state


@pytest.mark.parametrize(
    "source, state_fn, config_opts",
    [
        ("torchvision", torchvision_resnet50_state, ["MODEL.RESNETS.STEM_TYPE", "basic"]),
        ("mmcv", mmcv_resnet50_v1c_state, []),
    ],
)
def test_converted_backbone_fills_every_backbone_weight(tmp_path, source, state_fn, config_opts):
    state = state_fn()
    src = tmp_path / "src.pth"
    torch.save(state, src)
    out = tmp_path / "converted.pth"
    cmd = [sys.executable, "tools/convert_weights.py", "--from", source, str(src), str(out)]
    run_script(cmd, check=True)

    cfg = load_config(
        "cityscapes_r50.yaml", ["MODEL.RESNETS.NORM", "BN", "MODEL.SEM_SEG_HEAD.NORM", "BN"]
    )
    cfg.merge_from_list(config_opts)
    model = build_model(cfg)
    converted = torch.load(out, weights_only=True)["model"]
    model_state = model.state_dict()
    bottom_up = {
        k for k in model_state if k.startswith("backbone.bottom_up.") and "num_batches" not in k
    }
    assert set(converted) == bottom_up
    assert all(converted[k].shape == model_state[k].shape for k in converted)
    DetectionCheckpointer(model).load(str(out))
    loaded = model.state_dict()["backbone.bottom_up.res4.5.conv2.weight"]
    assert torch.equal(loaded, state["layer3.5.conv2.weight"])


def test_unplaceable_key_is_named_and_nothing_written(tmp_path):
    state = torchvision_resnet50_state()
    state["layer9.0.mystery.weight"] = torch.zeros(1)
    src, out = tmp_path / "src.pth", tmp_path / "out.pth"
    torch.save(state, src)
    cmd = [sys.executable, "tools/convert_weights.py", "--from", "torchvision", str(src), str(out)]
    proc = run_script(cmd)
    assert proc.returncode == 1
    assert "layer9.0.mystery.weight" in proc.stderr
    assert not out.exists()
    with pytest.raises(KeyError):
        convert_resnet_backbone(state, "torchvision")


def mmseg_r18_state():
    """An mmsegmentation PointRend R-18 state dict (7 classes), random weights."""
    pytest.importorskip("mmseg", reason="mmsegmentation is not installed")
    return build_mmseg_pointrend(depth=18, num_classes=7).state_dict()


MMSEG_R18 = [
    "MODEL.RESNETS.NORM", "BN", "MODEL.SEM_SEG_HEAD.NORM", "BN", "MODEL.RESNETS.DEPTH", "18",
    "MODEL.RESNETS.RES2_OUT_CHANNELS", "64", "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "7",
]  # fmt: skip


@pytest.mark.parametrize(
    "source, state_fn, flags, opts",
    [
        ("torchvision", torchvision_resnet50_state, [], []),
        ("mmcv", mmcv_resnet50_v1c_state, [], []),
        ("mmseg", mmseg_r18_state, ["--config-file", "configs/cityscapes_r50.yaml"], MMSEG_R18),
    ],
)
def test_checkpoint_saved_under_ddp_converts(tmp_path, source, state_fn, flags, opts):
    """Every key with DistributedDataParallel's ``module.``: converted as without it."""
    state = state_fn()
    src, out = tmp_path / "ddp.pth", tmp_path / "converted.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, src)
    cmd = [sys.executable, "tools/convert_weights.py", "--from", source, *flags]
    proc = run_script(cmd + [str(src), str(out), *opts])
    assert proc.returncode == 0, proc.stderr[-3000:]

    converted = torch.load(out, weights_only=True)["model"]
    expected = converter(source)(state)
    assert list(converted) == list(expected)
    assert all(torch.equal(converted[k], expected[k]) for k in expected)
