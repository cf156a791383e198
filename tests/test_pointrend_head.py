import pytest
import torch
from conftest import load_config
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from pointrend_sem.modeling import SubdivisionTrace


def build(opts=()):
    cfg = load_config("demo_synthetic.yaml", opts)
    model = build_model(cfg)
    return cfg, model


def padded_batch(model, sizes):
    """The (N, 3, H, W) ImageList that the model's inference would make of random images."""
    return model.pad_images(model.normalize_images([x["image"] for x in inputs(sizes)]))


def inputs(sizes, with_labels=False, num_classes=5):
    batch = []
    for h, w in sizes:
        item = {"image": torch.randint(0, 256, (3, h, w), dtype=torch.uint8)}
        if with_labels:
            item["sem_seg"] = torch.randint(0, num_classes, (h, w))
        batch.append(item)
    return batch


@pytest.mark.parametrize(
    "opts",
    [
        [],
        ["MODEL.POINTREND_SEM.SUBDIVISION_NUM_POINTS", 1_000_000],  # M > H * W
        ["MODEL.POINTREND_SEM.IN_FEATURES", ["p2", "p3"]],
        ["MODEL.POINTREND_SEM.SUBDIVISION_STEPS", 1],  # does not reach stride 1
        ["MODEL.POINTREND_SEM.SUBDIVISION_STEPS", 3],  # goes past stride 1
        ["MODEL.SEM_SEG_HEAD.NUM_CLASSES", 1],
    ],
)
def test_inference_keeps_odd_sizes_of_a_mixed_batch(opts):
    cfg, model = build(opts)
    model.eval()
    sizes = [(61, 83), (97, 45)]
    with torch.no_grad():
        outputs = model(inputs(sizes))
    num_classes = max(cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES, 2)  # a binary model gives 2 channels
    for out, (h, w) in zip(outputs, sizes):
        assert out["sem_seg"].shape == (num_classes, h, w)
        assert out["coarse_sem_seg"].shape == (num_classes, h, w)
        assert torch.isfinite(out["sem_seg"]).all()


def test_height_width_give_the_output_size():
    _, model = build()
    model.eval()
    batch = inputs([(64, 96)])
    batch[0].update(height=128, width=192)
    with torch.no_grad():
        assert model(batch)[0]["sem_seg"].shape[-2:] == (128, 192)


def test_subdivision_with_all_points_equals_point_head_everywhere():
    """When M covers every cell, each step's logits are the point head's prediction at every
    cell centre: subdivision overwrites exactly the selected cells with point predictions."""
    _, model = build(["MODEL.POINTREND_SEM.SUBDIVISION_NUM_POINTS", 1_000_000])
    model.eval()
    head = model.sem_seg_head
    images = padded_batch(model, [(64, 64)])
    with torch.no_grad():
        features = model.backbone(images.tensor)
        refined, coarse = head.inference(features)
        h, w = refined.shape[-2:]
        ys, xs = torch.meshgrid(
            (torch.arange(h) + 0.5) / h, (torch.arange(w) + 0.5) / w, indexing="ij"
        )
        coords = torch.stack([xs.flatten(), ys.flatten()], dim=1)[None]
        expected = head.point_logits(features, coarse, coords).view(1, -1, h, w)
    assert torch.allclose(refined, expected, atol=1e-5)


def test_subdivision_only_changes_selected_points():
    _, model = build(["MODEL.POINTREND_SEM.SUBDIVISION_STEPS", 1])
    model.eval()
    head = model.sem_seg_head
    images = padded_batch(model, [(64, 64)])
    trace = SubdivisionTrace()
    with torch.no_grad():
        features = model.backbone(images.tensor)
        refined, coarse = head.inference(features, trace=trace)
    upsampled = torch.nn.functional.interpolate(
        coarse, scale_factor=2, mode="bilinear", align_corners=False
    )
    changed = (refined != upsampled).flatten(2).any(1)[0]
    coords = trace.steps[0].point_coords
    assert changed.sum() <= head.subdivision_num_points == coords.shape[1]


def test_losses_finite_with_ignore_and_reach_both_heads():
    _, model = build()
    model.train()
    batch = inputs([(64, 64), (64, 48)], with_labels=True)
    batch[0]["sem_seg"][:20] = 255
    with EventStorage():
        losses = model(batch)
    assert set(losses) == {"loss_sem_seg", "loss_sem_seg_point"}
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    head = model.sem_seg_head
    assert head.point_head.predictor.weight.grad.abs().sum() > 0
    assert head.coarse_sem_seg_head.predictor.weight.grad.abs().sum() > 0
    assert model.backbone.bottom_up.stem.conv1.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("avg_non_ignore", [True, False])
def test_losses_finite_when_every_label_is_ignored(avg_non_ignore):
    _, model = build(["MODEL.POINTREND_SEM.LOSS_AVG_NON_IGNORE", avg_non_ignore])
    model.train()
    batch = inputs([(64, 64)], with_labels=True)
    batch[0]["sem_seg"][:] = 255
    with EventStorage():
        losses = model(batch)
    for value in losses.values():
        assert torch.isfinite(value) and value.item() == 0.0


def test_ignored_pixels_do_not_change_the_loss_average():
    from pointrend_sem.modeling import cross_entropy_with_ignore

    logits = torch.randn(1, 3, 4, 4)
    targets = torch.randint(0, 3, (1, 4, 4))
    ignored = targets.clone()
    ignored[0, 0] = 255
    expected = torch.nn.functional.cross_entropy(logits, ignored, ignore_index=255)
    assert torch.allclose(cross_entropy_with_ignore(logits, ignored, 255, True), expected)
    total = torch.nn.functional.cross_entropy(logits, ignored, ignore_index=255, reduction="sum")
    assert torch.allclose(cross_entropy_with_ignore(logits, ignored, 255, False), total / 16)


def test_unknown_in_feature_is_named():
    with pytest.raises(ValueError, match="MODEL.POINTREND_SEM.IN_FEATURES"):
        build(["MODEL.POINTREND_SEM.IN_FEATURES", ["p9"]])
