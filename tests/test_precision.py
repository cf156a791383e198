"""Reduced-precision inference (``TEST.PRECISION``) on every inference path through the inference
module (pointrend_sem/inference), the oneDNN-fused copy, and bf16 training on CPU
(``SOLVER.AMP.ENABLED``). Tiny sizes; speed is not tested here."""

import logging
import os
import sys

import cv2
import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, load_config, needs_precision, run_script
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model
from detectron2.projects.point_rend.point_features import point_sample
from detectron2.utils.events import EventStorage

from pointrend_sem import capabilities
from pointrend_sem.data.datasets.synthetic import render_sample
from pointrend_sem.errors import UserValueError
from pointrend_sem.inference import build_inference_model, builder, precision
from pointrend_sem.inference.onednn_fusion import fuse_relu_convs_
from pointrend_sem.predictor import SemSegPredictor
from pointrend_sem.tta import SemanticSegmentorWithTTA

SIZES = [(61, 83), (97, 45)]


def images(sizes=SIZES):
    gen = torch.Generator().manual_seed(0)
    return [torch.randint(0, 256, (3, h, w), generator=gen, dtype=torch.uint8) for h, w in sizes]


def build(opts=()):
    torch.manual_seed(0)
    return build_model(load_config("demo_synthetic.yaml", list(opts))).eval()


def fused_class_names(module):
    return {type(m).__name__ for m in module.modules() if type(m).__name__.startswith("Fused")}


def fp32_state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_resolve_precision():
    assert precision.resolve_precision("fp32", "cpu") is None
    for name in ("bf16", "fp16"):
        if capabilities.precision_support(precision.PRECISIONS[name], "cpu").runs:
            assert precision.resolve_precision(name, "cpu") is precision.PRECISIONS[name]
        else:
            with pytest.raises(UserValueError, match=f"TEST.PRECISION {name} cannot run"):
                precision.resolve_precision(name, "cpu")
    native_bf16 = capabilities.precision_support(torch.bfloat16, "cpu").native
    expected = torch.bfloat16 if native_bf16 else None
    assert precision.resolve_precision("auto", "cpu") is expected
    with pytest.raises(ValueError, match="TEST.PRECISION"):
        precision.resolve_precision("int8", "cpu")
    with pytest.raises(ValueError, match="TEST.PRECISION"):
        build_inference_model(
            build(), load_config("demo_synthetic.yaml", ["TEST.PRECISION", "fp8"])
        )


def test_auto_logs_its_choice_once(caplog):
    precision._auto_precision.cache_clear()
    with caplog.at_level(logging.INFO, logger=precision.__name__):
        for _ in range(3):
            precision.resolve_precision("auto", "cpu")
    messages = [r.getMessage() for r in caplog.records if "TEST.PRECISION auto" in r.message]
    assert len(messages) == 1 and "CPU" in messages[0]


def test_point_sample_as_float_matches_point_sample():
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(2, 5, 7, 9, generator=gen)
    coords = torch.rand(2, 30, 2, generator=gen) * 1.2 - 0.1  # some outside the map
    expected = point_sample(features, coords, align_corners=False)
    channels_last = features.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(precision.point_sample_as_float(channels_last, coords), expected)
    reduced = features.bfloat16()
    torch.testing.assert_close(
        precision.point_sample_as_float(reduced, coords),
        point_sample(reduced.float(), coords, align_corners=False),
    )


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=needs_precision(n)) for n in ("bf16", "fp16")]
)
@pytest.mark.parametrize(
    "opts",
    [
        [],
        [
            "TEST.SLIDING_WINDOW.ENABLED", True,
            "TEST.SLIDING_WINDOW.CROP_SIZE", (48, 48),
            "TEST.SLIDING_WINDOW.STRIDE", (32, 32),
        ],
        ["MODEL.CHANNELS_LAST", False, "MODEL.FOLD_NORMS", False],
    ],
)  # fmt: skip
def test_reduced_precision_predict_and_forward(name, opts):
    model = build(opts)
    state = fp32_state(model)
    fast = build_inference_model(model, load_config("demo_synthetic.yaml", opts), precision=name)
    check_reduced_outputs(fast, model)
    # the fp32 parameters, buffers and their dtypes are untouched
    for key, value in model.state_dict().items():
        assert value.dtype == state[key].dtype and torch.equal(value, state[key]), key


def check_reduced_outputs(fast, model):
    """``fast``'s outputs are fp32, finite, and close to the fp32 ``model``'s on average."""
    batch = [{"image": image} for image in images()]
    outputs = fast(batch)
    with torch.no_grad():
        expected = model(batch)
    for got, want in zip(outputs, expected):
        for key in ("sem_seg", "coarse_sem_seg"):
            assert got[key].dtype == torch.float32 and got[key].shape == want[key].shape
            assert torch.isfinite(got[key]).all()
            # the same model in reduced precision: close logits on average (where the point
            # selection differs a cell can differ more; random weights: no class test)
            assert (got[key] - want[key]).abs().mean() < 0.15 * want[key].abs().mean()


def test_reduced_precision_plumbing_on_any_cpu(monkeypatch):
    """What the inference module does for bf16, run on every CPU (bf16 forced: where oneDNN
    refuses it, PyTorch's slow fallback still computes it, fine at this size): backbone and
    coarse head in bf16, point head, point features and logits in fp32."""
    monkeypatch.setattr(builder, "resolve_precision", lambda name, device: torch.bfloat16)
    model = build()
    fast = build_inference_model(model, load_config(), precision="bf16")
    assert fast.dtype is torch.bfloat16
    head = fast.model.sem_seg_head
    assert {p.dtype for p in fast.model.backbone.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in head.coarse_sem_seg_head.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in head.point_head.parameters()} == {torch.float32}
    assert head.sample_point_features is precision.point_sample_as_float
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    check_reduced_outputs(fast, model)


@needs_precision("bf16")
def test_a_bf16_inference_module_is_rebuilt_from_new_weights():
    cfg = load_config("demo_synthetic.yaml", ["TEST.PRECISION", "bf16"])
    model = build(["TEST.PRECISION", "bf16"])
    fast = build_inference_model(model, cfg)
    fast.predict(images())
    # train one step in fp32, then build again: the copy holds the new weights in bf16
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    batch = [
        {"image": image, "sem_seg": torch.randint(0, 4, image.shape[-2:])} for image in images()
    ]
    with EventStorage():
        losses = model(batch)
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    optimizer.step()
    assert all(p.dtype == torch.float32 for p in model.parameters())
    model.eval()
    rebuilt = build_inference_model(model, cfg, fold_norms=False)
    first = model.backbone.bottom_up.stem.conv1.weight
    copied = rebuilt.model.backbone.body.bottom_up.stem.conv1.weight
    assert torch.equal(copied.float(), first.bfloat16().float())
    rebuilt.predict(images())


def test_fp32_on_cpu_runs_a_fused_copy():
    """fp32 inference on a CPU runs an fp32 copy, norms folded and ReLUs fused (same
    predictions up to rounding); without MODEL.FOLD_NORMS, nothing fused."""
    if not capabilities.fused_conv_runs(torch.float32):
        pytest.skip("oneDNN's fused convolution does not run here (fp32 then runs the model)")
    model = build(["MODEL.FOLD_NORMS", True])
    fused = build_inference_model(model, load_config())
    assert fused.dtype is torch.float32 and fused.fused_convs > 0
    assert all(p.dtype == torch.float32 for p in fused.parameters())
    assert {"FusedStem", "FusedConvReLU"} <= fused_class_names(fused)
    plain = build_inference_model(model, load_config(), fold_norms=False)
    assert plain.fused_convs == 0 and not fused_class_names(plain)
    for got, want in zip(fused.predict(images()), plain.predict(images())):
        scale = want["sem_seg"].abs().max()
        assert (got["coarse_sem_seg"] - want["coarse_sem_seg"]).abs().max() <= 1e-4 * scale
        # refined: a cell whose uncertainty ties with another's up to rounding may be refined
        # in one and not the other; every other pixel is equal up to rounding
        close = (got["sem_seg"] - want["sem_seg"]).abs().amax(dim=0) <= 1e-4 * scale
        assert close.float().mean() >= 0.99


@needs_precision("bf16")
def test_checkpoint_of_a_bf16_model_is_fp32(tmp_path):
    model = build(["TEST.PRECISION", "bf16"])
    build_inference_model(model, load_config(), precision="bf16").predict(images())
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("m")
    saved = torch.load(tmp_path / "m.pth", weights_only=False)["model"]
    assert set(saved) == set(model.state_dict())
    assert {v.dtype for v in saved.values() if v.is_floating_point()} == {torch.float32}


@needs_precision("bf16")
def test_tta_in_bf16():
    cfg = load_config("demo_synthetic.yaml", ["TEST.PRECISION", "bf16"])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    tta = SemanticSegmentorWithTTA(
        build_inference_model(model, cfg), scale_ratios=(0.5, 1.0), flip=True, min_size=48,
        max_size=64,
    )  # fmt: skip
    with torch.no_grad():
        (output,) = tta([{"image": images()[0], "height": 61, "width": 83}])
    assert output["sem_seg"].dtype == torch.float32 and output["sem_seg"].shape[-2:] == (61, 83)
    assert torch.isfinite(output["sem_seg"]).all()


@needs_precision("bf16")
def test_predictor_in_bf16():
    cfg = load_config("demo_synthetic.yaml", ["MODEL.WEIGHTS", "", "TEST.PRECISION", "bf16"])
    predictor = SemSegPredictor(cfg)
    image = np.random.default_rng(0).integers(0, 256, (70, 90, 3), dtype=np.uint8)
    output = predictor(image)
    assert output["sem_seg"].shape[-2:] == (70, 90) and output["sem_seg"].dtype == torch.float32


@needs_precision("bf16")
def test_demo_in_bf16(tmp_path):
    torch.manual_seed(0)
    model = build_model(load_config())
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("random")
    image, _ = render_sample(0)
    cv2.imwrite(str(tmp_path / "a.png"), cv2.resize(image[:, :, ::-1], (75, 61)))
    cmd = [
        sys.executable, "demo/demo.py",
        "--config-file", os.path.join(REPO_ROOT, "configs", "demo_synthetic.yaml"),
        "--input", str(tmp_path / "a.png"), "--output", str(tmp_path / "out"),
        "--opts", "MODEL.WEIGHTS", str(tmp_path / "random.pth"), "TEST.PRECISION", "bf16",
    ]  # fmt: skip
    proc = run_script(cmd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert os.listdir(tmp_path / "out") == ["a.png"]


@needs_precision("bf16")
def test_amp_training_on_cpu_runs_bf16_autocast(tmp_path):
    from pointrend_sem.engine import Trainer
    from pointrend_sem.engine.amp import CPUAMPTrainer

    opts = ["SOLVER.AMP.ENABLED", True, "SOLVER.MAX_ITER", 2, "OUTPUT_DIR", str(tmp_path)]
    opts += ["SOLVER.IMS_PER_BATCH", 2, "DATALOADER.NUM_WORKERS", 0, "TEST.EVAL_PERIOD", 0]
    cfg = load_config("demo_synthetic.yaml", opts)
    trainer = Trainer(cfg)
    assert isinstance(trainer._trainer, CPUAMPTrainer)
    seen = []
    model = trainer._trainer.model
    hook = model.backbone.register_forward_hook(
        lambda module, inputs, outputs: seen.append(next(iter(outputs.values())).dtype)
    )
    trainer.train()
    hook.remove()
    assert seen[:2] == [torch.bfloat16] * 2  # the two training steps (then a fp32 evaluation)
    assert all(p.dtype == torch.float32 for p in model.parameters())


@pytest.mark.parametrize("stem", ["basic", "deeplab"])
def test_relu_fused_copy_computes_what_the_model_computes(stem):
    """An fp32 inference copy with every ReLU (and residual sum) fused into its convolution
    (oneDNN post-ops) gives the backbone's and coarse head's outputs of the model itself."""
    opts = ["MODEL.RESNETS.NORM", "BN", "MODEL.SEM_SEG_HEAD.NORM", "BN"]
    opts += ["MODEL.RESNETS.STEM_TYPE", stem, "MODEL.RESNETS.DEPTH", "50", "MODEL.WEIGHTS", ""]
    torch.manual_seed(0)
    cfg = load_config("cityscapes_r50.yaml", opts)
    model = build_model(cfg).eval()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):  # statistics as a trained model has
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
    x = torch.randn(1, 3, 64, 96).contiguous(memory_format=torch.channels_last)
    fast = build_inference_model(model, cfg, precision="fp32")
    if capabilities.fused_conv_runs(torch.float32):
        assert {"FusedBottleneckBlock", "FusedStem", "FusedConvReLU"} <= fused_class_names(fast)
    assert fuse_relu_convs_(torch.nn.Linear(2, 2)) == 0
    head, fused_head = model.sem_seg_head.coarse_sem_seg_head, fast.model.sem_seg_head
    with torch.no_grad():
        expected, got = model.backbone(x), fast.model.backbone(x)
        expected["logits"] = head.layers(expected)
        got["logits"] = fused_head.coarse_sem_seg_head.layers(got)
    for name, value in expected.items():  # fp32 rounding (norms folded, sums fused) only
        assert (got[name] - value).abs().max() <= 1e-5 * value.abs().max(), name
