"""Test-time augmentation and sliding-window inference."""

import pytest
import torch
from conftest import load_config
from detectron2.modeling import build_model
from torch import nn
from torch.nn import functional as F

from pointrend_sem.modeling.meta_arch import sliding_windows
from pointrend_sem.tta import SemanticSegmentorWithTTA


class PixelwiseSegmentor(nn.Module):
    """A segmentor whose logits at a pixel depend on that pixel only (a 1x1 conv), so it is
    exactly equivariant to flips: a test double for the TTA wrapper's bookkeeping."""

    def __init__(self, num_classes=4):
        super().__init__()
        self.conv = nn.Conv2d(3, num_classes, 1)

    def predict(self, images, output_sizes):
        """The inference entry that the TTA wrapper calls (as PointRendSemanticSegmentor's)."""
        outputs = []
        for image, size in zip(images, output_sizes):
            logits = self.conv(image.float()[None] / 255)
            logits = F.interpolate(logits, size=size, mode="bilinear")
            outputs.append({"sem_seg": logits[0]})
        return outputs

    def forward(self, batched_inputs):
        sizes = [(x["height"], x["width"]) for x in batched_inputs]
        return self.predict([x["image"] for x in batched_inputs], sizes)


def image(h, w, symmetric=False):
    img = torch.randint(0, 256, (3, h, w), dtype=torch.uint8)
    if symmetric:
        img = torch.cat([img[:, :, : w // 2], img[:, :, : w // 2].flip(-1)], dim=-1)
    return img


@pytest.mark.parametrize("symmetric", [True, False])
def test_flip_only_tta_equals_plain_prediction(symmetric):
    model = PixelwiseSegmentor().eval()
    inputs = [{"image": image(20, 30, symmetric), "height": 20, "width": 30}]
    tta = SemanticSegmentorWithTTA(model, scale_ratios=(1.0,), flip=True, min_size=20, max_size=30)
    with torch.no_grad():
        plain = model(inputs)[0]["sem_seg"].softmax(0)
        augmented = tta(inputs)[0]["sem_seg"]
    assert torch.allclose(augmented, plain, atol=1e-6)


def test_tta_output_has_the_input_size_and_averages_probabilities():
    cfg = load_config("demo_synthetic.yaml", ["TEST.AUG.SCALE_RATIOS", (0.5, 1.0, 1.5)])
    model = build_model(cfg).eval()
    tta = SemanticSegmentorWithTTA.from_config(cfg, model)
    inputs = [{"image": image(75, 101), "height": 75, "width": 101}]
    with torch.no_grad():
        out = tta(inputs)[0]
    assert out["sem_seg"].shape == (5, 75, 101)
    assert out["coarse_sem_seg"].shape == (5, 75, 101)
    assert torch.allclose(out["sem_seg"].sum(0), torch.ones(75, 101), atol=1e-5)


def test_sliding_window_layout_covers_the_image_like_mmseg():
    windows = sliding_windows(1024, 2048, (512, 1024), (341, 683))
    assert len(windows) == 9  # mmsegmentation: 3 rows x 3 columns
    covered = torch.zeros(1024, 2048)
    for y1, y2, x1, x2 in windows:
        assert (y2 - y1, x2 - x1) == (512, 1024)
        covered[y1:y2, x1:x2] += 1
    assert covered.min() >= 1
    assert sliding_windows(100, 90, (512, 1024), (341, 683)) == [(0, 100, 0, 90)]


def test_sliding_window_equals_whole_image_when_one_window_covers_it():
    inputs = [{"image": image(70, 90)}]
    whole = build_model(load_config("demo_synthetic.yaml")).eval()
    sliding = build_model(
        load_config("demo_synthetic.yaml", ["TEST.SLIDING_WINDOW.ENABLED", True])
    ).eval()
    sliding.load_state_dict(whole.state_dict())
    with torch.no_grad():
        expected, got = whole(inputs)[0], sliding(inputs)[0]
    for key in ("sem_seg", "coarse_sem_seg"):
        assert torch.equal(expected[key], got[key])


def test_sliding_window_with_overlaps_and_tta():
    cfg = load_config(
        "demo_synthetic.yaml",
        [
            "TEST.SLIDING_WINDOW.ENABLED", True,
            "TEST.SLIDING_WINDOW.CROP_SIZE", (48, 48),
            "TEST.SLIDING_WINDOW.STRIDE", (32, 32),
            "TEST.AUG.SCALE_RATIOS", (1.0, 1.25),
        ],
    )  # fmt: skip
    model = build_model(cfg).eval()
    inputs = [{"image": image(70, 90), "height": 70, "width": 90}]
    with torch.no_grad():
        plain = model(inputs)[0]["sem_seg"]
        tta = SemanticSegmentorWithTTA.from_config(cfg, model)(inputs)[0]["sem_seg"]
    assert plain.shape == tta.shape == (5, 70, 90)
    assert torch.isfinite(plain).all() and torch.isfinite(tta).all()
