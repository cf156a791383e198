"""The one inference entry (``PointRendSemanticSegmentor.predict``), its subdivision trace, the
one-logit (binary) rules, and the input layout shared by training and inference."""

from unittest import mock

import numpy as np
import pytest
import torch
from conftest import load_config
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage
from torch.nn import functional as F

from pointrend_sem.inference import InferenceModel
from pointrend_sem.modeling import SubdivisionTrace
from pointrend_sem.modeling.binary import as_two_channels, num_output_channels
from pointrend_sem.modeling.pointrend_head import write_point_logits_
from pointrend_sem.predictor import SemSegPredictor, display_metadata
from pointrend_sem.tta import SemanticSegmentorWithTTA

SIZES = [(61, 83), (97, 45)]  # odd sizes; batched, the first is padded below, the second right


def images(sizes=SIZES):
    return [torch.randint(0, 256, (3, h, w), dtype=torch.uint8) for h, w in sizes]


def build(opts=()):
    return build_model(load_config("demo_synthetic.yaml", list(opts))).eval()


@pytest.mark.parametrize(
    "opts",
    [
        [],
        ["MODEL.SEM_SEG_HEAD.NUM_CLASSES", 1],
        ["TEST.OUTPUT_RESIZE", "direct", "MODEL.POINTREND_SEM.SUBDIVISION_STEPS", 1],
        [
            "TEST.SLIDING_WINDOW.ENABLED", True,
            "TEST.SLIDING_WINDOW.CROP_SIZE", (48, 48),
            "TEST.SLIDING_WINDOW.STRIDE", (32, 32),
        ],
    ],
)  # fmt: skip
def test_forward_in_eval_mode_is_predict(opts):
    model = build(opts)
    batch = [{"image": image} for image in images()]
    batch[1].update(height=130, width=61)  # an output size other than the input's
    with torch.no_grad():
        forward = model(batch)
        predicted = model.predict([x["image"] for x in batch], [(61, 83), (130, 61)])
    for got, expected in zip(forward, predicted):
        assert got.keys() == expected.keys() == {"sem_seg", "coarse_sem_seg"}
        for key in got:
            assert torch.equal(got[key], expected[key])
    assert forward[1]["sem_seg"].shape[-2:] == (130, 61)


def test_predict_defaults_to_the_input_size_and_checks_output_sizes():
    model = build()
    with torch.no_grad():
        outputs = model.predict(images())
        with pytest.raises(ValueError, match="2 images but 1 output sizes"):
            model.predict(images(), [(10, 10)])
    assert [out["sem_seg"].shape for out in outputs] == [(5, h, w) for h, w in SIZES]


@pytest.mark.parametrize("num_points", [100, 1_000_000])
def test_trace_records_every_step_and_leaves_the_prediction_alone(num_points):
    model = build(["MODEL.POINTREND_SEM.SUBDIVISION_NUM_POINTS", num_points])
    head = model.sem_seg_head
    batch = images()
    trace = SubdivisionTrace()
    with torch.no_grad():
        traced = model.predict(batch, trace=trace)
        plain = model.predict(batch)
    for a, b in zip(traced, plain):
        assert torch.equal(a["sem_seg"], b["sem_seg"])

    padded = model.pad_images(model.normalize_images(batch)).tensor
    with torch.no_grad():
        coarse_h, coarse_w = head.coarse_sem_seg_head.layers(model.backbone(padded)).shape[-2:]
    assert trace.padded_size == tuple(padded.shape[-2:]) == (97, 83)  # the largest image
    assert trace.image_sizes == SIZES
    assert len(trace.steps) == head.subdivision_steps == 2
    for k, step in enumerate(trace.steps, start=1):
        grid = (coarse_h * 2**k, coarse_w * 2**k)
        points = min(num_points, grid[0] * grid[1])
        assert step.logits.shape == (2, 5, *grid)
        assert step.point_indices.shape == (2, points)
        assert step.point_coords.shape == (2, points, 2)
        assert step.point_logits.shape == (2, 5, points)
        assert 0 <= step.point_coords.min() and step.point_coords.max() <= 1


def test_trace_replays_into_the_refined_logits():
    """Each step's logits are recorded before its points are re-predicted: upsampling the
    coarse logits and writing each step's point logits reproduces the head's output."""
    model = build(["MODEL.POINTREND_SEM.SUBDIVISION_NUM_POINTS", 300])
    head = model.sem_seg_head
    batch = model.pad_images(model.normalize_images(images()))
    trace = SubdivisionTrace()
    with torch.no_grad():
        features = model.backbone(batch.tensor)
        refined, coarse = head.inference(features, trace=trace)
    logits = coarse.contiguous()  # the head upsamples classes-first, whatever the features
    for step in trace.steps:
        logits = F.interpolate(logits, scale_factor=2, mode="bilinear", align_corners=False)
        assert torch.equal(step.logits, logits)
        before = logits.clone()
        write_point_logits_(logits, step.point_indices, step.point_logits)
        changed = (logits != before).flatten(2).any(1)
        assert changed.sum(1).max() <= step.point_indices.shape[1] == 300
    assert torch.equal(logits, refined)


def test_a_trace_is_for_one_whole_image_prediction():
    model = build()
    trace = SubdivisionTrace()
    with torch.no_grad():
        model.predict(images()[:1], trace=trace)
        with pytest.raises(ValueError, match="pass a new one"):
            model.predict(images()[:1], trace=trace)
    sliding = build(["TEST.SLIDING_WINDOW.ENABLED", True])
    with pytest.raises(ValueError, match="TEST.SLIDING_WINDOW.ENABLED False"):
        sliding.predict(images()[:1], trace=SubdivisionTrace())


def test_tta_predicts_each_scale_through_predict():
    cfg = load_config("demo_synthetic.yaml", ["TEST.AUG.SCALE_RATIOS", (0.5, 1.0, 1.5)])
    model = build_model(cfg).eval()
    tta = SemanticSegmentorWithTTA.from_config(cfg, model)
    assert isinstance(tta.model, InferenceModel)  # the inference module of the model
    inputs = [{"image": images([(75, 101)])[0], "height": 75, "width": 101}]
    with mock.patch.object(tta.model, "predict", wraps=tta.model.predict) as spy:
        with mock.patch.object(type(model), "forward", side_effect=AssertionError("forward")):
            out = tta(inputs)[0]
    assert spy.call_count == 3  # one batch of (view, flipped view) per scale
    for (views, sizes), _ in spy.call_args_list:
        assert len(views) == 2 and sizes == [(75, 101)] * 2
    assert out["sem_seg"].shape == (5, 75, 101)


def test_tta_takes_the_model_out_of_distributed_data_parallel():
    model = build()
    wrapper = torch.nn.parallel.DistributedDataParallel.__new__(
        torch.nn.parallel.DistributedDataParallel
    )
    torch.nn.Module.__init__(wrapper)
    wrapper.module = model
    tta = SemanticSegmentorWithTTA(wrapper, (1.0,), False, 64, 64)
    assert tta.model is model


def test_predictor_goes_through_predict():
    cfg = load_config("demo_synthetic.yaml", ["MODEL.WEIGHTS", ""])
    predictor = SemSegPredictor(cfg)
    image_bgr = np.random.default_rng(0).integers(0, 256, (70, 90, 3), dtype=np.uint8)
    fast = predictor.inference_model
    with mock.patch.object(fast, "predict", wraps=fast.predict) as spy:
        out = predictor(image_bgr)
    assert spy.call_count == 1
    (views, sizes), _ = spy.call_args
    inputs = predictor.model_inputs(image_bgr)  # resized for test
    assert sizes == [(70, 90)] and torch.equal(views[0], inputs["image"])
    assert torch.equal(out["sem_seg"], fast([inputs])[0]["sem_seg"])
    assert out["sem_seg"].shape == (5, 70, 90)
    with torch.no_grad():  # the plain model's classes
        plain = predictor.model([inputs])[0]["sem_seg"]
    assert (plain.argmax(0) == out["sem_seg"].argmax(0)).float().mean() >= 0.999


def test_head_forward_is_detectron2s_semantic_head_contract():
    """In eval mode ``head(features)`` returns the logits and an empty dict, as detectron2's
    semantic heads do; with targets, the losses; in training mode without targets, an error."""
    model = build()
    features = model.backbone(model.pad_images(model.normalize_images(images())).tensor)
    with torch.no_grad():
        logits, losses = model.sem_seg_head(features)
        expected, _ = model.sem_seg_head.inference(features)
    assert losses == {} and torch.equal(logits, expected)
    targets = torch.randint(0, 5, (logits.shape[0], *logits.shape[-2:]))
    with EventStorage():
        none, losses = model.sem_seg_head(features, targets)
    assert none is None and set(losses) == {"loss_sem_seg", "loss_sem_seg_point"}
    model.train()
    with pytest.raises(ValueError, match="needs targets in training mode"):
        model.sem_seg_head(features)


@pytest.mark.parametrize("channels_last", [True, False])
def test_training_and_inference_feed_the_backbone_the_same_layout(channels_last):
    model = build(["MODEL.CHANNELS_LAST", channels_last, "INPUT.TRAIN_PADDING", "batch"])
    seen = []
    model.backbone.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    batch = [
        {"image": image, "sem_seg": torch.randint(0, 5, image.shape[-2:])} for image in images()
    ]
    with torch.no_grad():
        model.predict([x["image"] for x in batch])
    model.train()
    with EventStorage():
        model(batch)
    inference, training = seen
    assert torch.equal(inference, training)  # normalized and padded the same way
    for tensor in seen:
        assert tensor.is_contiguous(memory_format=torch.channels_last) == channels_last
        assert tensor.is_contiguous() != channels_last


def test_binary_rules():
    assert [num_output_channels(c) for c in (1, 2, 5)] == [2, 2, 5]
    logits = torch.randn(1, 4, 5)
    assert torch.equal(as_two_channels(logits, dim=0), torch.cat([torch.zeros(1, 4, 5), logits]))
    assert as_two_channels(torch.randn(2, 3, 4), dim=1).shape == (2, 3, 4)
    cfg = load_config(opts=["MODEL.SEM_SEG_HEAD.NUM_CLASSES", 1, "DATASETS.TEST", ()])
    assert len(display_metadata(cfg).stuff_classes) == 2  # both output channels get a colour


@pytest.mark.parametrize(
    "divisibility, constraints", [(1, None), (32, None), (32, {"size_divisibility": 64})]
)
def test_padding_is_detectron2s(divisibility, constraints):
    """pad_images pads (in Python ints, for export) as detectron2's ImageList.from_tensors."""
    from detectron2.structures import ImageList

    from pointrend_sem.modeling.meta_arch import padded_batch_size

    gen = torch.Generator().manual_seed(0)
    tensors = [torch.rand(3, h, w, generator=gen) for h, w in [(61, 83), (97, 45), (64, 64)]]
    expected = ImageList.from_tensors(tensors, divisibility, 0.0, constraints).tensor
    sizes = [tuple(t.shape[-2:]) for t in tensors]
    assert padded_batch_size(sizes, divisibility, constraints) == tuple(expected.shape[-2:])
    model = build()
    model.channels_last = False
    backbone = model.backbone
    batch = model.pad_images(tensors)
    expected = ImageList.from_tensors(
        tensors, backbone.size_divisibility, 0.0, backbone.padding_constraints
    )
    assert torch.equal(batch.tensor, expected.tensor) and batch.image_sizes == sizes
