"""sssegmentation's PointRend checkpoints -> this project's model.

sssegmentation is not installed for the tests: its checkpoints' keys and shapes are generated
below from its module definitions (ResNet with the deep stem, FPN of conv + BN + ReLU, Semantic
FPN scale heads, point head of Conv1d + BN layers), filled with random tensors.
"""

import sys
from collections import OrderedDict

import pytest
import torch
from conftest import load_config, run_script
from detectron2.modeling import build_model
from torch.nn import functional as F

from pointrend_sem.convert import check_state_dict, strip_ddp_prefix
from pointrend_sem.convert.sssegmentation import POINT, convert_sssegmentation_pointrend
from pointrend_sem.modeling import MLPPointHead

BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
NUM_CLASSES = {"voc": 21, "ade20k": 150, "cityscapes": 19}
OPTS = ["MODEL.WEIGHTS", ""]


def bn_shapes(prefix: str, channels: int):
    shapes = {
        f"{prefix}.{p}": (channels,) for p in ("weight", "bias", "running_mean", "running_var")
    }
    shapes[f"{prefix}.num_batches_tracked"] = ()
    return shapes


def resnet_shapes(depth: int):
    """``backbone_net.*``: deep stem 3-32-32-64 (stem.0/3/6 convs, stem.1/4/7 BNs), bottleneck
    stages layer1..layer4 (conv<k> + bn<k>, downsample.0/1 on the first block)."""
    shapes = OrderedDict()
    for index, (cin, cout) in zip((0, 3, 6), ((3, 32), (32, 32), (32, 64))):
        shapes[f"backbone_net.stem.{index}.weight"] = (cout, cin, 3, 3)
        shapes.update(bn_shapes(f"backbone_net.stem.{index + 1}", cout))
    inplanes = 64
    for stage, blocks in enumerate(BLOCKS[depth], start=1):
        planes = 64 * 2 ** (stage - 1)
        for block in range(blocks):
            prefix = f"backbone_net.layer{stage}.{block}"
            cin = inplanes if block == 0 else planes * 4
            convs = ((planes, cin, 1, 1), (planes, planes, 3, 3), (planes * 4, planes, 1, 1))
            for k, shape in enumerate(convs, start=1):
                shapes[f"{prefix}.conv{k}.weight"] = shape
                shapes.update(bn_shapes(f"{prefix}.bn{k}", shape[0]))
            if block == 0:
                shapes[f"{prefix}.downsample.0.weight"] = (planes * 4, inplanes, 1, 1)
                shapes.update(bn_shapes(f"{prefix}.downsample.1", planes * 4))
        inplanes = planes * 4
    return shapes


def heads_shapes(num_classes: int):
    """FPN (256 channels), scale heads (128 channels; strides 4/8/16/32 -> 1/1/2/3 conv blocks,
    each but the stride-4 one followed by an Upsample), the 1x1 coarse classifier, and the point
    head (3 x 256, coarse logits concatenated at every layer)."""
    shapes = OrderedDict()
    for level, cin in enumerate((256, 512, 1024, 2048)):
        shapes[f"fpn_neck.lateral_convs.{level}.0.weight"] = (256, cin, 1, 1)
        shapes.update(bn_shapes(f"fpn_neck.lateral_convs.{level}.1", 256))
        shapes[f"fpn_neck.fpn_convs.{level}.0.weight"] = (256, 256, 3, 3)
        shapes.update(bn_shapes(f"fpn_neck.fpn_convs.{level}.1", 256))
    for level in range(4):
        step = 1 if level == 0 else 2
        for k in range(max(1, level)):
            shapes[f"scale_heads.{level}.{k * step}.0.weight"] = (128, 256 if k == 0 else 128, 3, 3)
            shapes.update(bn_shapes(f"scale_heads.{level}.{k * step}.1", 128))
    shapes["auxiliary_decoder.1.weight"] = (num_classes, 128, 1, 1)
    shapes["auxiliary_decoder.1.bias"] = (num_classes,)
    for k in range(3):
        shapes[f"fcs.{k}.0.weight"] = (256, 256 + num_classes, 1)
        shapes.update(bn_shapes(f"fcs.{k}.1", 256))
    shapes["decoder.1.weight"] = (num_classes, 256 + num_classes, 1)
    shapes["decoder.1.bias"] = (num_classes,)
    return shapes


def random_tensor(key: str, shape) -> torch.Tensor:
    if key.endswith("num_batches_tracked"):
        return torch.tensor(1000)
    if key.endswith("running_var"):
        return torch.rand(shape) + 0.5
    return torch.randn(shape) * 0.1


def sssegmentation_state(depth: int, num_classes: int, device: str = "cpu"):
    """Random tensors in sssegmentation's keys; on the "meta" device, shapes only."""
    shapes = resnet_shapes(depth)
    shapes.update(heads_shapes(num_classes))
    if device == "meta":
        return OrderedDict(
            (key, torch.empty(shape, device="meta")) for key, shape in shapes.items()
        )
    return OrderedDict((key, random_tensor(key, shape)) for key, shape in shapes.items())


def model_state(config: str, device: str = "cpu"):
    """``state_dict()`` of a model built from ``config`` (plus OPTS), without weights."""
    with torch.device(device):
        return build_model(load_config(config, [*OPTS, "MODEL.DEVICE", device])).state_dict()


@pytest.fixture(scope="module")
def voc_r50():
    """(random sssegmentation state, model) for VOC R-50."""
    model = build_model(load_config("voc_r50_sssegmentation.yaml", OPTS))
    return sssegmentation_state(50, 21), model


def test_key_counts_match_sssegmentation():
    # counts of sssegmentation v1.7.0's PointRend state_dict() (BN counters included)
    assert len(sssegmentation_state(50, 21, device="meta")) == 442
    assert len(sssegmentation_state(101, 150, device="meta")) == 748


@pytest.mark.parametrize("dataset", sorted(NUM_CLASSES))
@pytest.mark.parametrize("depth", sorted(BLOCKS))
def test_conversion_fills_every_model_tensor(dataset, depth):
    state = sssegmentation_state(depth, NUM_CLASSES[dataset], device="meta")
    converted = convert_sssegmentation_pointrend(state)
    check_state_dict(
        converted, model_state(f"{dataset}_r{depth}_sssegmentation.yaml", device="meta")
    )


def test_converted_tensors_load_in_place(voc_r50):
    state, model = voc_r50
    model.load_state_dict(convert_sssegmentation_pointrend(state), strict=True)
    loaded = model.state_dict()
    pairs = {
        "backbone.bottom_up.stem.conv3.norm.running_var": "backbone_net.stem.7.running_var",
        "backbone.bottom_up.res4.5.conv2.weight": "backbone_net.layer3.5.conv2.weight",
        "backbone.bottom_up.res5.0.shortcut.norm.bias": "backbone_net.layer4.0.downsample.1.bias",
        "backbone.fpn_lateral5.weight": "fpn_neck.lateral_convs.3.0.weight",
        "backbone.fpn_output2.norm.running_mean": "fpn_neck.fpn_convs.0.1.running_mean",
        "sem_seg_head.coarse_sem_seg_head.p5.4.weight": "scale_heads.3.4.0.weight",
        "sem_seg_head.coarse_sem_seg_head.predictor.bias": "auxiliary_decoder.1.bias",
        "sem_seg_head.point_head.predictor.weight": "decoder.1.weight",
        "sem_seg_head.point_head.fc1.weight": "fcs.0.0.weight",
        "sem_seg_head.point_head.fc2.norm.running_var": "fcs.1.1.running_var",
        "sem_seg_head.point_head.fc3.norm.num_batches_tracked": "fcs.2.1.num_batches_tracked",
    }
    for ours, theirs in pairs.items():
        assert torch.equal(loaded[ours], state[theirs]), ours


def reference_point_head(state, fine: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
    """sssegmentation's point head at inference: per layer Conv1d (no bias), BN with running
    statistics, ReLU, coarse logits concatenated; then the Conv1d classifier."""
    x = torch.cat([fine, coarse], dim=1)
    for k in range(3):
        x = F.conv1d(x, state[f"fcs.{k}.0.weight"])
        bn = [state[f"fcs.{k}.1.{p}"] for p in ("running_mean", "running_var", "weight", "bias")]
        x = torch.cat([F.relu(F.batch_norm(x, *bn, training=False, eps=1e-5)), coarse], dim=1)
    return F.conv1d(x, state["decoder.1.weight"], state["decoder.1.bias"])


@pytest.mark.parametrize("fold", [False, True])
def test_point_head_predicts_like_sssegmentation(voc_r50, fold):
    """With its BNs as norms of the fc layers (the default) or folded into them (on request)."""
    state, _ = voc_r50
    converted = convert_sssegmentation_pointrend(state, fold_point_head_norms=fold)
    head = MLPPointHead(
        fine_grained_channels=256,
        num_classes=21,
        fc_dims=[256] * 3,
        coarse_pred_each_layer=True,
        fc_norm="" if fold else "SyncBN",
    ).eval()
    head.load_state_dict({k[len(POINT) :]: v for k, v in converted.items() if k.startswith(POINT)})
    fine, coarse = torch.randn(2, 256, 97), torch.randn(2, 21, 97)
    with torch.no_grad():
        expected = reference_point_head(state, fine, coarse)
        torch.testing.assert_close(head(fine, coarse), expected, rtol=1e-4, atol=1e-5)


def test_missing_key_is_named(voc_r50):
    state, model = voc_r50
    state = OrderedDict(state)
    del state["fpn_neck.lateral_convs.0.1.running_var"]
    with pytest.raises(KeyError, match=r"backbone\.fpn_lateral2\.norm\.running_var"):
        check_state_dict(convert_sssegmentation_pointrend(state), model.state_dict())


def test_missing_point_head_tensor_is_named(voc_r50):
    state = OrderedDict(voc_r50[0])
    del state["fcs.1.1.running_mean"]
    with pytest.raises(KeyError, match=r"fcs\.1\.1\.running_mean"):
        convert_sssegmentation_pointrend(state)


def test_unplaceable_keys_are_all_named(voc_r50):
    state = OrderedDict(voc_r50[0])
    state["backbone_net.fc.weight"] = torch.zeros(1)
    state["scale_heads.0.0.2.weight"] = torch.zeros(1)
    with pytest.raises(KeyError) as error:
        convert_sssegmentation_pointrend(state)
    assert "backbone_net.fc.weight" in str(error.value)
    assert "scale_heads.0.0.2.weight" in str(error.value)


def test_extra_key_the_model_lacks_is_named(voc_r50):
    state, model = voc_r50
    state = OrderedDict(state)
    state["backbone_net.layer3.6.conv1.weight"] = torch.zeros(256, 1024, 1, 1)  # an R-101 block
    with pytest.raises(KeyError, match=r"backbone\.bottom_up\.res4\.6\.conv1\.weight"):
        check_state_dict(convert_sssegmentation_pointrend(state), model.state_dict())


def test_misshaped_key_is_named(voc_r50):
    state, model = voc_r50
    state = OrderedDict(state)
    state["decoder.1.weight"] = torch.zeros(19, 256 + 19, 1)  # a Cityscapes classifier
    with pytest.raises(ValueError, match=r"sem_seg_head\.point_head\.predictor\.weight"):
        check_state_dict(convert_sssegmentation_pointrend(state), model.state_dict())
    state = OrderedDict(voc_r50[0])
    state["fcs.0.1.bias"] = torch.zeros(255)
    with pytest.raises(KeyError, match=r"fcs\.0\.1\.bias"):
        convert_sssegmentation_pointrend(state)


def sssegmentation_state_dict(checkpoint):
    """The model state dict inside a loaded sssegmentation checkpoint (``{"model": state_dict,
    "optimizer": ..., "epoch": ...}``), without the ``module.`` of a model saved inside
    DistributedDataParallel."""
    return strip_ddp_prefix(checkpoint.get("model", checkpoint))


def test_checkpoint_is_unwrapped():
    weight = torch.ones(2)
    checkpoint = {"epoch": 60, "model": {"module.decoder.1.bias": weight}, "optimizer": {}}
    assert sssegmentation_state_dict(checkpoint) == {"decoder.1.bias": weight}
    assert sssegmentation_state_dict({"decoder.1.bias": weight}) == {"decoder.1.bias": weight}


def test_ddp_prefix_is_removed(voc_r50):
    state, model = voc_r50
    converted = convert_sssegmentation_pointrend({f"module.{k}": v for k, v in state.items()})
    check_state_dict(converted, model.state_dict())
    assert converted.keys() == convert_sssegmentation_pointrend(state).keys()


def test_cli_converts_into_the_sssegmentation_config(tmp_path):
    source, out = tmp_path / "ssseg.pth", tmp_path / "out.pth"
    torch.save({"epoch": 60, "model": sssegmentation_state(50, 21)}, source)
    cmd = [sys.executable, "tools/convert_weights.py", "--from", "sssegmentation"]
    cmd += ["--config-file", "configs/voc_r50_sssegmentation.yaml", str(source), str(out)]
    proc = run_script(cmd)
    assert proc.returncode == 0, proc.stderr
    model = build_model(load_config("voc_r50_sssegmentation.yaml", OPTS))
    incompatible = model.load_state_dict(torch.load(out, weights_only=True)["model"], strict=False)
    assert not incompatible.unexpected_keys
    assert all(k.endswith("num_batches_tracked") for k in incompatible.missing_keys)
    assert all(conv.activation is F.relu for conv in model.backbone.lateral_convs)


def test_cli_folds_the_point_head_norms_on_request(tmp_path):
    source, out = tmp_path / "ssseg.pth", tmp_path / "out.pth"
    torch.save({"epoch": 60, "model": sssegmentation_state(50, 21)}, source)
    cmd = [sys.executable, "tools/convert_weights.py", "--from", "sssegmentation"]
    cmd += ["--fold-point-head-norms", "--config-file", "configs/voc_r50_sssegmentation.yaml"]
    proc = run_script(cmd + [str(source), str(out)])
    assert proc.returncode == 0, proc.stderr
    assert 'MODEL.POINTREND_SEM.FC_NORM ""' in proc.stdout
    model = build_model(
        load_config("voc_r50_sssegmentation.yaml", [*OPTS, "MODEL.POINTREND_SEM.FC_NORM", ""])
    )
    incompatible = model.load_state_dict(torch.load(out, weights_only=True)["model"], strict=False)
    assert not incompatible.unexpected_keys
    assert all(k.endswith("num_batches_tracked") for k in incompatible.missing_keys)
    assert model.sem_seg_head.point_head.fc1.norm is None
