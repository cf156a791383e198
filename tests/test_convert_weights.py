import sys

import pytest
import torch
import torchvision
from conftest import load_config, run_command
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from pointrend_sem.convert.resnet import convert_resnet_backbone


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
    run_command(cmd, check=True)

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
    proc = run_command(cmd)
    assert proc.returncode == 1
    assert "layer9.0.mystery.weight" in proc.stderr
    assert not out.exists()
    with pytest.raises(KeyError):
        convert_resnet_backbone(state, "torchvision")
