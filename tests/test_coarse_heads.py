"""PointRend on other coarse heads (pointrend_sem/modeling/coarse_head_adapters.py): each
adapter trains and predicts at odd sizes; reduced precision and export run them; the contract of
pointrend_sem/modeling/coarse_head.py refuses, in one line naming the fix, a head that does not
fit; the example registering a head of one's own trains and evaluates."""

import json
import os
import sys

import pytest
import torch
from conftest import REPO_ROOT, TINY_MODEL, load_config, needs_precision, run_script
from detectron2.layers import Conv2d
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY, build_model
from detectron2.utils.events import EventStorage
from torch import nn

from pointrend_sem.errors import UserError
from pointrend_sem.export.module import ExportableSegmentor
from pointrend_sem.inference import build_inference_model
from pointrend_sem.modeling import SubdivisionTrace, subdivision_steps_for

CONFIG = "demo_synthetic_deeplabv3plus.yaml"
# the demo's dilated ResNet-50 and heads made tiny: 4 channels per group, 16-channel heads
TINY_DEEPLAB = [
    "MODEL.RESNETS.STEM_OUT_CHANNELS", 16,
    "MODEL.RESNETS.WIDTH_PER_GROUP", 4,
    "MODEL.RESNETS.RES2_OUT_CHANNELS", 16,
    "MODEL.SEM_SEG_HEAD.ASPP_CHANNELS", 16,
    "MODEL.SEM_SEG_HEAD.CONVS_DIM", 16,
    "MODEL.SEM_SEG_HEAD.PROJECT_CHANNELS", [8],
    "MODEL.POINTREND_SEM.FC_DIM", 16,
    "MODEL.POINTREND_SEM.TRAIN_NUM_POINTS", 64,
    "MODEL.POINTREND_SEM.SUBDIVISION_NUM_POINTS", 256,
    "INPUT.CROP.SIZE", (48, 48),
]  # fmt: skip
ON_RES5 = ["MODEL.SEM_SEG_HEAD.IN_FEATURES", ["res5"], "MODEL.SEM_SEG_HEAD.COMMON_STRIDE", 16]
# coarse head -> (its overrides, the subdivision steps that take its stride to 1)
HEADS = {
    "DeepLabV3PlusCoarseHead": ([], 2),
    "DeepLabV3CoarseHead": (ON_RES5, 4),
    "FCNCoarseHead": (ON_RES5, 4),
}
ODD_SIZES = [(75, 101), (61, 47)]  # (H, W): a 101x75 image and a smaller portrait one


def build(head="DeepLabV3PlusCoarseHead", opts=()):
    head_opts, _ = HEADS.get(head, ([], None))
    name = ["MODEL.POINTREND_SEM.COARSE_HEAD_NAME", head]
    cfg = load_config(CONFIG, [*TINY_DEEPLAB, *name, *head_opts, *opts])
    return cfg, build_model(cfg)


def inputs(sizes, with_labels=False):
    batch = []
    for h, w in sizes:
        item = {"image": torch.randint(0, 256, (3, h, w), dtype=torch.uint8)}
        if with_labels:
            item["sem_seg"] = torch.randint(0, 5, (h, w))
        batch.append(item)
    return batch


@pytest.mark.parametrize("head", sorted(HEADS))
def test_adapter_trains_and_predicts_at_odd_sizes(head):
    cfg, model = build(head)
    steps = HEADS[head][1]
    assert model.sem_seg_head.subdivision_steps == steps  # SUBDIVISION_STEPS -1
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    model.train()
    with EventStorage():
        for _ in range(2):
            losses = model(inputs([(53, 67), (48, 48)], with_labels=True))
            total = sum(losses.values())
            assert torch.isfinite(total)
            optimizer.zero_grad()
            total.backward()
            optimizer.step()
    coarse_head = model.sem_seg_head.coarse_sem_seg_head
    assert coarse_head.predictor.weight.grad.abs().sum() > 0
    assert model.backbone.stem.conv1.weight.grad.abs().sum() > 0

    model.eval()
    trace = SubdivisionTrace()
    with torch.no_grad():
        outputs = model.predict([x["image"] for x in inputs(ODD_SIZES)], trace=trace)
    for out, size in zip(outputs, ODD_SIZES):
        assert out["sem_seg"].shape == out["coarse_sem_seg"].shape == (5, *size)
        assert torch.isfinite(out["sem_seg"]).all()
    assert len(trace.steps) == steps


def test_aspp_pools_globally_at_any_size():
    """The image pooling branch averages the whole map, at training and at test sizes."""
    _, model = build()
    aspp = model.sem_seg_head.coarse_sem_seg_head.decoder["res5"]["project_conv"]
    assert aspp.pool_kernel_size is None
    assert isinstance(aspp.convs[-1][0], nn.AdaptiveAvgPool2d)


@needs_precision("bf16")
def test_reduced_precision_runs_the_deeplabv3plus_head():
    cfg, model = build(opts=["TEST.PRECISION", "bf16"])
    model.eval()
    image = inputs([ODD_SIZES[0]])[0]["image"]
    (bf16,) = build_inference_model(model, cfg).predict([image])
    (fp32,) = build_inference_model(model, cfg, precision="fp32").predict([image])
    assert bf16["sem_seg"].shape == fp32["sem_seg"].shape == (5, *ODD_SIZES[0])
    assert bf16["sem_seg"].dtype == torch.float32 and torch.isfinite(bf16["sem_seg"]).all()


def test_export_runs_the_deeplabv3plus_head():
    cfg, model = build()
    model.eval()
    image = inputs([ODD_SIZES[0]])[0]["image"]
    inference_model = build_inference_model(model, cfg, fuse_convs=False)
    with torch.no_grad():
        (fp32,) = inference_model.predict([image])
        exported = torch.export.export(
            ExportableSegmentor(inference_model, *ODD_SIZES[0]), (image[None].float(),)
        )
        graph = exported.module()(image[None].float())
    assert graph.shape == (1, 5, *ODD_SIZES[0])
    assert torch.allclose(graph[0], fp32["sem_seg"], atol=1e-4)


@pytest.mark.parametrize(
    "head, opts, message",
    [
        # detectron2's heads as they are: named with their adapter
        ("DeepLabV3Head", ON_RES5, "no method layers.*'DeepLabV3CoarseHead'"),
        ("DeepLabV3PlusHead", [], "fixed at the training crop.*'DeepLabV3PlusCoarseHead'"),
        # a declared stride or a class count that is not what the head predicts
        ("FCNCoarseHead", ["MODEL.SEM_SEG_HEAD.COMMON_STRIDE", 4],
         "at stride 16, not at its common_stride 4.*COMMON_STRIDE .*common_stride. 16"),
        ("HeadWithoutStride", [], "common_stride"),
        ("HeadWithExtraClass", [],
         r"\(1, 6, 2, 3\) .*= \(1, 5, 2, 3\).*predicts 6 classes.*NUM_CLASSES 6"),
        ("NoSuchHead", [], "COARSE_HEAD_NAME 'NoSuchHead'.*register your own"),
        ("PointRendSemHead", [], "COARSE_HEAD_NAME 'PointRendSemHead'"),
        # a map the backbone does not produce
        ("FCNCoarseHead", ["MODEL.SEM_SEG_HEAD.IN_FEATURES", ["res4"]], "IN_FEATURES.*res4"),
        ("DeepLabV3PlusCoarseHead", ["MODEL.SEM_SEG_HEAD.IN_FEATURES", ["res3", "res5"]],
         r"MODEL.SEM_SEG_HEAD.IN_FEATURES names \['res3'\]"),
        ("DeepLabV3PlusCoarseHead", ["MODEL.POINTREND_SEM.SUBDIVISION_STEPS", -2],
         "SUBDIVISION_STEPS is -2"),
    ],
)  # fmt: skip
def test_contract_errors_name_the_fix(head, opts, message):
    with pytest.raises(UserError, match=message) as error:
        build(head, opts)
    assert "\n" not in str(error.value)


def test_head_init_mmseg_needs_a_predictor():
    with pytest.raises(UserError, match="HEAD_INIT 'mmseg'.*`predictor`.*'detectron2'"):
        build("HeadWithoutPredictor", ["MODEL.POINTREND_SEM.HEAD_INIT", "mmseg"])
    # fits the contract otherwise
    _, model = build("HeadWithoutPredictor", ["MODEL.POINTREND_SEM.HEAD_INIT", "detectron2"])
    assert model.sem_seg_head.subdivision_steps == 4


@pytest.mark.parametrize(
    "steps, stride, expected",
    [(-1, 1, 0), (-1, 4, 2), (-1, 8, 3), (-1, 16, 4), (-1, 6, 3), (1, 16, 1)],
)
def test_subdivision_steps_from_the_stride(steps, stride, expected):
    assert subdivision_steps_for(steps, stride) == expected


def test_example_trains_pointrend_on_its_own_head(tmp_path):
    output_dir = tmp_path / "output"
    opts = [*TINY_MODEL, "SOLVER.MAX_ITER", "3", "OUTPUT_DIR", str(output_dir)]
    config = os.path.join(REPO_ROOT, "configs", "demo_synthetic.yaml")
    cmd = [sys.executable, "examples/custom_coarse_head.py", "--config-file", config, *opts]
    env = dict(os.environ, DETECTRON2_DATASETS=str(tmp_path / "datasets"))
    proc = run_script(cmd, env=env)  # in this process, as `python examples/...` runs it
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(output_dir / "metrics.json") as f:
        metrics = {k: v for line in f for k, v in json.loads(line).items()}
    assert {"sem_seg/mIoU", "coarse_sem_seg/mIoU"} <= set(metrics)
    with open(output_dir / "config.yaml") as f:
        assert "COARSE_HEAD_NAME: ConvHead" in f.read()


class _Res5Head(nn.Module):
    """A 1x1 classifier on res5 (stride 16) predicting ``num_classes`` logits."""

    def __init__(self, cfg, input_shape, num_classes=None):
        super().__init__()
        channels = input_shape["res5"].channels
        self.classifier = Conv2d(channels, num_classes or cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, 1)

    def layers(self, features):
        return self.classifier(features["res5"])


@SEM_SEG_HEADS_REGISTRY.register()
class HeadWithoutStride(_Res5Head):
    pass


@SEM_SEG_HEADS_REGISTRY.register()
class HeadWithExtraClass(_Res5Head):
    def __init__(self, cfg, input_shape):
        super().__init__(cfg, input_shape, cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES + 1)
        self.common_stride = 16


@SEM_SEG_HEADS_REGISTRY.register()
class HeadWithoutPredictor(_Res5Head):
    common_stride = 16


@pytest.mark.parametrize("name", ["SemSegFPNHead", "SizeMatchedSemSegFPNHead"])
def test_semantic_fpn_branches_share_one_upsample_with_the_same_logits(name):
    """detectron2's Semantic FPN head sums its three coarser branches before their common final
    2x upsample (bilinear is linear): one upsample runs instead of three, and the logits equal
    detectron2's own ``layers`` up to float rounding."""
    from detectron2.modeling.meta_arch.semantic_seg import SemSegFPNHead

    from pointrend_sem.modeling.coarse_head import SharedUpsampleSemSegFPNHead

    opts = [*TINY_MODEL, "MODEL.POINTREND_SEM.COARSE_HEAD_NAME", name]
    model = build_model(load_config("demo_synthetic.yaml", opts)).eval()
    head = model.sem_seg_head.coarse_sem_seg_head
    if name == "SemSegFPNHead":
        assert type(head) is SharedUpsampleSemSegFPNHead
    generator = torch.Generator().manual_seed(0)
    shapes = model.backbone.output_shape()
    features = {
        f: torch.randn(2, shapes[f].channels, 128 // shapes[f].stride, 96 // shapes[f].stride,
                       generator=generator)
        for f in head.in_features
    }  # fmt: skip
    upsamples = [m for m in head.modules() if isinstance(m, nn.Upsample)]
    final_upsamples = [scale_head[-1] for scale_head in head.scale_heads[1:]]
    calls = []
    hooks = [m.register_forward_hook(lambda m, i, o: calls.append(m)) for m in upsamples]
    with torch.no_grad():
        shared = head.layers(features)
        shared_calls = list(calls)
        calls.clear()
        own = SemSegFPNHead.layers(head, features)
    for hook in hooks:
        hook.remove()
    assert len(final_upsamples) == 3
    assert sum(c in final_upsamples for c in shared_calls) == 1
    assert sum(c in final_upsamples for c in calls) == 3
    assert len(shared_calls) == len(calls) - 2
    assert shared.shape == own.shape == (2, head.predictor.out_channels, 32, 24)
    assert torch.allclose(shared, own, rtol=0, atol=1e-5 * own.abs().max().item())
