"""Training as each source trains: batches padded to the crop size (mmsegmentation at the
bottom/right, sssegmentation centred) or to the largest crop (detectron2), the heads initialised
as each source does, and sssegmentation's point head with its norm layers."""

from collections import OrderedDict

import pytest
import torch
from conftest import TINY_MODEL, load_config
from detectron2.modeling import build_model
from detectron2.projects.point_rend.point_features import point_sample
from detectron2.utils.events import EventStorage
from torch.nn import functional as F

from pointrend_sem.convert.sssegmentation import POINT, convert_sssegmentation_pointrend
from pointrend_sem.modeling import MLPPointHead, sample_training_points

CROP = (32, 48)
SIZES = [(21, 30), (27, 17)]  # both crops smaller than CROP, as small ADE/VOC images give
OPTS = [*TINY_MODEL, "INPUT.CROP.SIZE", CROP, "MODEL.POINTREND_SEM.TRAIN_NUM_POINTS", 97]


def small_batch(num_classes: int):
    gen = torch.Generator().manual_seed(1)
    batch = []
    for h, w in SIZES:
        labels = torch.randint(0, num_classes, (h, w), generator=gen)
        labels[0, :3] = 255
        image = torch.randint(0, 256, (3, h, w), generator=gen, dtype=torch.uint8)
        batch.append({"image": image, "sem_seg": labels})
    return batch


def train_forward(model, batch, seed: int = 0):
    """Losses of ``model`` on ``batch`` with the (N, 3, H, W) images and (N, H, W) labels that
    reached the backbone and the head."""
    seen = {}
    hooks = [
        model.backbone.register_forward_pre_hook(lambda m, args: seen.update(images=args[0])),
        model.sem_seg_head.register_forward_pre_hook(lambda m, args: seen.update(labels=args[1])),
    ]
    model.train()
    torch.manual_seed(seed)
    with EventStorage():
        losses = model(batch)
    for hook in hooks:
        hook.remove()
    return losses, seen["images"], seen["labels"]


def normalized(model, image):
    return (image.float() - model.pixel_mean) / model.pixel_std


def test_mmseg_recipe_pads_small_crops_to_the_crop_size_and_averages_over_it():
    model = build_model(load_config("cityscapes_r50.yaml", OPTS))
    batch = small_batch(19)
    losses, images, labels = train_forward(model, batch, seed=3)
    assert images.shape == (2, 3, *CROP) and labels.shape == (2, *CROP)

    # mmsegmentation's SegDataPreProcessor: normalize, then stack_batch(size=crop_size) pads each
    # image bottom/right with 0 and each label map with 255
    expected_images = torch.stack(
        [
            F.pad(normalized(model, x["image"]), (0, CROP[1] - w, 0, CROP[0] - h), value=0.0)
            for x, (h, w) in zip(batch, SIZES)
        ]
    )
    expected_labels = torch.stack(
        [
            F.pad(x["sem_seg"], (0, CROP[1] - w, 0, CROP[0] - h), value=255)
            for x, (h, w) in zip(batch, SIZES)
        ]
    )
    assert torch.equal(images, expected_images) and torch.equal(labels, expected_labels)

    # mmsegmentation's losses on that batch (CrossEntropyLoss, avg_non_ignore=False: the mean
    # over every pixel / point of the padded batch, ignored ones counting 0)
    head = model.sem_seg_head
    features = model.backbone(expected_images)
    coarse = head.coarse_sem_seg_head.layers(features)
    upsampled = F.interpolate(coarse, size=CROP, mode="bilinear", align_corners=False)
    per_pixel = F.cross_entropy(upsampled, expected_labels, ignore_index=255, reduction="none")
    assert per_pixel.numel() == 2 * CROP[0] * CROP[1]
    torch.testing.assert_close(losses["loss_sem_seg"], per_pixel.mean())

    torch.manual_seed(3)  # nothing before the point sampling draws random numbers
    points = sample_training_points(coarse.detach(), 97, 3.0, 0.75)
    point_labels = point_sample(
        expected_labels[:, None].float(), points, mode="nearest", align_corners=False
    )[:, 0].long()
    per_point = F.cross_entropy(
        head.point_logits(features, coarse, points),
        point_labels,
        ignore_index=255,
        reduction="none",
    )
    torch.testing.assert_close(losses["loss_sem_seg_point"], per_point.mean())


def test_sssegmentation_recipe_centres_small_crops_in_the_crop_size():
    model = build_model(load_config("voc_r50_sssegmentation.yaml", OPTS))
    batch = small_batch(21)
    _, images, labels = train_forward(model, batch)
    assert images.shape == (2, 3, *CROP) and labels.shape == (2, *CROP)
    for i, (x, (h, w)) in enumerate(zip(batch, SIZES)):
        top, left = (CROP[0] - h) // 2, (CROP[1] - w) // 2  # sssegmentation's Padding
        inside = (slice(top, top + h), slice(left, left + w))
        assert torch.equal(images[i][(slice(None), *inside)], normalized(model, x["image"]))
        assert torch.equal(labels[i][inside], x["sem_seg"])
        outside = torch.ones(CROP, dtype=torch.bool)
        outside[inside] = False
        assert (images[i][:, outside] == 0).all() and (labels[i][outside] == 255).all()


def test_detectron2_recipe_pads_to_the_largest_crop_and_a_multiple_of_32():
    model = build_model(load_config("cityscapes_r101_detectron2.yaml", OPTS))
    _, images, labels = train_forward(model, small_batch(19))
    assert images.shape == (2, 3, 32, 32) and labels.shape == (2, 32, 32)
    assert (labels[1, :, 17:] == 255).all()


def test_crop_padding_pads_to_a_larger_image_and_needs_an_absolute_crop():
    model = build_model(load_config("cityscapes_r50.yaml", [*OPTS, "INPUT.CROP.SIZE", (16, 16)]))
    _, images, _ = train_forward(model, small_batch(19))
    assert images.shape == (2, 3, 27, 30)
    with pytest.raises(ValueError, match="INPUT.TRAIN_PADDING 'batch'"):
        build_model(load_config("cityscapes_r50.yaml", [*OPTS, "INPUT.CROP.ENABLED", False]))


def weight_std(layer) -> float:
    return layer.weight.std().item()


def test_heads_are_initialised_as_each_source():
    # mmsegmentation 0.x (the published models): conv_seg N(0, 0.01), fc_seg N(0, 0.001),
    # ConvModule's Kaiming (fan-out) init of the other layers, biases 0
    torch.manual_seed(0)
    mmseg = build_model(load_config("cityscapes_r50.yaml", ["MODEL.WEIGHTS", ""])).sem_seg_head
    coarse, point = mmseg.coarse_sem_seg_head, mmseg.point_head
    assert weight_std(coarse.predictor) == pytest.approx(0.01, rel=0.1)
    assert weight_std(point.predictor) == pytest.approx(0.001, rel=0.1)
    assert weight_std(coarse.p2[0]) == pytest.approx((2 / (128 * 9)) ** 0.5, rel=0.1)
    assert weight_std(point.fc1) == pytest.approx((2 / 256) ** 0.5, rel=0.1)
    for layer in (coarse.predictor, point.predictor, point.fc1):
        assert not layer.bias.any()

    # detectron2: SemSegFPNHead's classifier gets MSRA fill too
    d2 = build_model(load_config("cityscapes_r101_detectron2.yaml", TINY_MODEL)).sem_seg_head
    assert weight_std(d2.coarse_sem_seg_head.predictor) == pytest.approx((2 / 19) ** 0.5, rel=0.15)

    # sssegmentation: PyTorch's defaults, U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases
    ssseg = build_model(load_config("voc_r50_sssegmentation.yaml", TINY_MODEL)).sem_seg_head
    for layer in (ssseg.coarse_sem_seg_head.predictor, ssseg.point_head.predictor):
        bound = layer.weight[0].numel() ** -0.5
        assert weight_std(layer) == pytest.approx(bound / 3**0.5, rel=0.15)
        assert layer.bias.abs().max() <= bound and layer.bias.abs().max() > 0.1 * bound


def test_unknown_init_scheme_is_named():
    with pytest.raises(ValueError, match="sssegmentation"):
        build_model(load_config("demo_synthetic.yaml", ["MODEL.POINTREND_SEM.HEAD_INIT", "msra"]))


def point_head_state(channels: int, num_classes: int, fine: int):
    """sssegmentation's point head keys (``fcs.<k>.0`` Conv1d without bias, ``fcs.<k>.1`` BN,
    ``decoder.1`` classifier), random values."""
    gen = torch.Generator().manual_seed(2)
    state = OrderedDict()
    in_channels = fine + num_classes
    for k in range(3):
        state[f"fcs.{k}.0.weight"] = torch.randn(channels, in_channels, 1, generator=gen) * 0.1
        state[f"fcs.{k}.1.weight"] = torch.rand(channels, generator=gen) + 0.5
        state[f"fcs.{k}.1.bias"] = torch.randn(channels, generator=gen) * 0.1
        state[f"fcs.{k}.1.running_mean"] = torch.randn(channels, generator=gen) * 0.1
        state[f"fcs.{k}.1.running_var"] = torch.rand(channels, generator=gen) + 0.5
        state[f"fcs.{k}.1.num_batches_tracked"] = torch.tensor(100)
        in_channels = channels + num_classes
    state["decoder.1.weight"] = torch.randn(num_classes, in_channels, 1, generator=gen) * 0.1
    state["decoder.1.bias"] = torch.randn(num_classes, generator=gen) * 0.1
    return state


def test_sssegmentation_point_head_keeps_its_norms_and_equals_the_folded_one():
    ssseg = build_model(load_config("voc_r50_sssegmentation.yaml", TINY_MODEL)).sem_seg_head
    for fc in ssseg.point_head.fc_layers:
        assert isinstance(fc.norm, torch.nn.SyncBatchNorm) and fc.bias is None

    def head(fc_norm):
        return MLPPointHead(
            fine_grained_channels=24,
            num_classes=5,
            fc_dims=[32] * 3,
            coarse_pred_each_layer=True,
            fc_norm=fc_norm,
        ).eval()

    def point_head_part(converted):
        return {k[len(POINT) :]: v for k, v in converted.items() if k.startswith(POINT)}

    state = point_head_state(32, 5, 24)
    with_norms, folded = head("SyncBN"), head("")
    with_norms.load_state_dict(point_head_part(convert_sssegmentation_pointrend(state)))
    folded.load_state_dict(
        point_head_part(convert_sssegmentation_pointrend(state, fold_point_head_norms=True))
    )
    fine, coarse = torch.randn(2, 24, 53), torch.randn(2, 5, 53)
    with torch.no_grad():
        torch.testing.assert_close(with_norms(fine, coarse), folded(fine, coarse))

    # in training the norm normalizes each channel over all N * P points of the batch
    with_norms.train()
    x = with_norms.fc1(torch.cat([fine, coarse], dim=1)).detach()
    norm = with_norms.fc1.norm
    torch.testing.assert_close(x.mean(dim=(0, 2)), norm.bias.detach(), atol=1e-5, rtol=0)
    standardized = (x - norm.bias[:, None].detach()) / norm.weight[:, None].detach()
    torch.testing.assert_close(
        standardized.var(dim=(0, 2), unbiased=False), torch.ones(32), atol=1e-3, rtol=0
    )
