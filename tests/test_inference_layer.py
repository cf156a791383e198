"""The inference layer (pointrend_sem/inference): the model stays plain detectron2, and the
inference module built from it (norms folded, convolutions fused, channels-last kept) changes
nothing but float rounding, leaves the model's weights, checkpoints and training alone, and is
rebuilt explicitly when the weights change."""

import pytest
import torch
from conftest import TINY_MODEL, load_config
from detectron2.layers import Conv2d, FrozenBatchNorm2d
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage
from torch.nn.modules.batchnorm import _BatchNorm

from pointrend_sem.inference import InferenceModel, build_inference_model
from pointrend_sem.modeling.point_head import PointFC

FAST = ["MODEL.CHANNELS_LAST", True, "MODEL.FOLD_NORMS", True]
PLAIN = ["MODEL.CHANNELS_LAST", False, "MODEL.FOLD_NORMS", False]
# a recipe made tiny, keeping its SyncBN (torch.nn.SyncBatchNorm) everywhere
TINY_SYNC_BN = [*TINY_MODEL, "MODEL.RESNETS.NORM", "SyncBN", "MODEL.SEM_SEG_HEAD.NORM", "SyncBN"]


def randomize_norm_statistics(model):
    gen = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, (_BatchNorm, FrozenBatchNorm2d)):
            module.running_mean.copy_(torch.rand(module.running_mean.shape, generator=gen) - 0.5)
            module.running_var.copy_(torch.rand(module.running_var.shape, generator=gen) + 0.5)
            module.weight.data.copy_(torch.rand(module.weight.shape, generator=gen) + 0.5)


def plain_and_fast_models(config, opts):
    """(plain model, model with the fast options, its config), same random weights and norm
    statistics (as a trained model has)."""
    torch.manual_seed(0)
    plain = build_model(load_config(config, opts + PLAIN)).eval()
    randomize_norm_statistics(plain)
    cfg = load_config(config, opts + FAST)
    model = build_model(cfg).eval()
    model.load_state_dict(plain.state_dict())
    return plain, model, cfg


@pytest.mark.parametrize(
    "config, opts",
    [
        ("demo_synthetic.yaml", []),  # BN in eval mode
        ("cityscapes_r101_detectron2.yaml", ["MODEL.RESNETS.DEPTH", 50]),  # FrozenBN, GN head
    ],
)
def test_fast_inference_equals_plain_inference(config, opts):
    plain, model, cfg = plain_and_fast_models(config, opts)
    fast = build_inference_model(model, cfg)
    assert fast.folded_norms > 0
    assert fast.model.backbone.bottom_up.stem.conv1.norm is None  # folded in the copy only
    assert model.backbone.bottom_up.stem.conv1.norm is not None
    first_conv = next(m for m in fast.modules() if isinstance(m, torch.nn.Conv2d))
    assert first_conv.weight.is_contiguous(memory_format=torch.channels_last)
    image = torch.randint(0, 256, (3, 96, 128), dtype=torch.uint8)
    with torch.no_grad():
        expected = plain([{"image": image}])[0]["sem_seg"]
    got = fast([{"image": image}])[0]["sem_seg"]
    scale = expected.abs().max()
    assert (got - expected).abs().max() <= 1e-4 * max(1.0, scale)
    assert (got.argmax(0) == expected.argmax(0)).float().mean() >= 0.999


def test_the_model_stays_plain_and_the_inference_module_is_rebuilt_for_new_weights():
    cfg = load_config("demo_synthetic.yaml", FAST)
    model = build_model(cfg).train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    classes = {type(m) for m in model.modules()}
    fast = build_inference_model(model, cfg)
    assert isinstance(fast, InferenceModel) and fast.folded_norms > 0
    # the model: same classes, weights, keys (checkpoints keep the norms) and training mode
    assert {type(m) for m in model.modules()} == classes and model.training
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert "backbone.bottom_up.stem.conv1.norm.running_var" in model.state_dict()
    assert not any(p.requires_grad for p in fast.parameters())
    assert all(p.requires_grad for p in model.parameters())
    # eval-only: detectron2's inference_context restores a training mode it cannot take
    fast.train()
    assert not fast.training and not fast.model.training
    image = [{"image": torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8)}]
    before = fast(image)[0]["sem_seg"]
    with torch.no_grad():
        model.backbone.bottom_up.stem.conv1.norm.running_var.mul_(4.0)
    assert torch.equal(fast(image)[0]["sem_seg"], before)  # a copy: built from the old weights
    after = build_inference_model(model.eval(), cfg)(image)[0]["sem_seg"]
    assert not torch.allclose(before, after)


def test_head_serves_inference_through_the_semantic_head_contract():
    """In eval mode ``sem_seg_head(features)`` returns the logits and an empty dict, as
    detectron2's semantic heads do; the model's classes are those of ``predict``."""
    model = build_model(load_config("demo_synthetic.yaml", PLAIN)).eval()
    image = torch.randint(0, 256, (3, 64, 96), dtype=torch.uint8)
    with torch.no_grad():
        batch = model.pad_images(model.normalize_images([image]))
        logits, losses = model.sem_seg_head(model.backbone(batch.tensor))
        (output,) = model([{"image": image}])
    assert losses == {} and logits.shape[:2] == (1, 5)
    upsampled = torch.nn.functional.interpolate(logits, size=(64, 96), mode="bilinear")
    assert torch.equal(upsampled[0].argmax(0), output["sem_seg"].argmax(0))


def test_training_uses_the_unfolded_norms():
    cfg = load_config("demo_synthetic.yaml", FAST)
    model = build_model(cfg).train()
    build_inference_model(model, cfg)
    batch = [
        {
            "image": torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8),
            "sem_seg": torch.randint(0, 5, (64, 64)),
        }
    ]
    norm = model.backbone.bottom_up.stem.conv1.norm
    before = norm.running_mean.clone()
    with EventStorage():
        losses = model(batch)
    sum(losses.values()).backward()
    assert not torch.equal(norm.running_mean, before)  # BN statistics were updated
    assert model.backbone.bottom_up.stem.conv1.weight.grad is not None


def conv_norm_pairs(model):
    """The convolutions (detectron2 Conv2d, point-head PointFC) that have a norm."""
    return [
        m
        for m in model.modules()
        if isinstance(m, (Conv2d, PointFC)) and getattr(m, "norm", None) is not None
    ]


def test_sync_bn_recipe_folds_every_conv_norm_pair():
    cfg = load_config("cityscapes_r50.yaml", ["MODEL.WEIGHTS", "", *FAST])
    model = build_model(cfg).eval()
    pairs = conv_norm_pairs(model)
    assert len(pairs) == 62  # ResNet-50: 3 stem + 16 x 3 + 4 shortcut convs; coarse head: 7
    assert all(isinstance(m.norm, torch.nn.SyncBatchNorm) for m in pairs)
    fast = build_inference_model(model, cfg, fuse_convs=False)
    assert fast.folded_norms == 62 and conv_norm_pairs(fast) == []


@pytest.mark.parametrize("config", ["cityscapes_r50.yaml", "voc_r50_sssegmentation.yaml"])
def test_sync_bn_recipes_fold_in_inference_and_train_unfolded(config):
    """SyncBN in eval mode is a plain batch norm: folded (sssegmentation's FPN and point-head
    norms too), outputs as unfolded; training afterwards uses and updates batch statistics."""
    plain, model, cfg = plain_and_fast_models(config, TINY_SYNC_BN)
    pairs = conv_norm_pairs(model)
    assert pairs and all(isinstance(m.norm, torch.nn.SyncBatchNorm) for m in pairs)
    assert any(isinstance(m, PointFC) for m in pairs) == (config == "voc_r50_sssegmentation.yaml")
    plain.output_coarse = model.output_coarse = True
    fast = build_inference_model(model, cfg)
    assert fast.folded_norms == len(pairs) and conv_norm_pairs(fast) == []
    image = torch.randint(0, 256, (3, 75, 101), dtype=torch.uint8)
    with torch.no_grad():
        expected = plain([{"image": image}])[0]
    got = fast([{"image": image}])[0]
    scale = expected["sem_seg"].abs().max()
    assert (got["coarse_sem_seg"] - expected["coarse_sem_seg"]).abs().max() <= 1e-4 * scale
    # refined: a point whose uncertainty ties with another's within rounding may be refined in
    # one and not the other (seen: 8 of 7,575 pixels on an AVX2 CPU); every other pixel is equal
    close = (got["sem_seg"] - expected["sem_seg"]).abs().amax(dim=0) <= 1e-4 * scale
    assert close.float().mean() >= 0.99

    norm = model.backbone.bottom_up.stem.conv1.norm
    before = norm.running_mean.clone()
    batch = [{"image": image[:, :16, :16], "sem_seg": torch.randint(0, 5, (16, 16))}] * 2
    model.train()
    with EventStorage():
        losses = model(batch)
    sum(losses.values()).backward()
    assert not torch.equal(norm.running_mean, before)
    assert model.backbone.bottom_up.stem.conv1.weight.grad is not None


def test_freed_memory_is_returned_after_a_pass_on_new_sizes(monkeypatch):
    """On a CPU, a pass on images of other sizes than the pass before ends with glibc's free
    memory handed back (varying sizes would otherwise grow the heap); a pass at the same sizes
    reuses it."""
    from pointrend_sem.inference import builder

    trims = []
    monkeypatch.setattr(builder, "return_freed_memory", lambda: trims.append(1) or True)
    cfg = load_config("demo_synthetic.yaml", FAST)
    fast = build_inference_model(build_model(cfg).eval(), cfg)
    small, large = (torch.zeros(3, h, w, dtype=torch.uint8) for h, w in [(32, 48), (40, 64)])
    for images, expected in [([small], 1), ([small], 1), ([large], 2), ([small, large], 3)]:
        fast.predict(images)
        assert len(trims) == expected
    fast([{"image": small}, {"image": large}])
    assert len(trims) == 3
