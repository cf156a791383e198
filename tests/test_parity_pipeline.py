"""Each recipe's whole test path against its source's, image file in, class map out.

tests/test_parity.py proves the networks equal on a given tensor; here the resize in front and
the resize back behind are included. On image files of odd sizes that need resizing:

* mmsegmentation recipes: mmsegmentation's own test pipeline (``LoadImageFromFile`` ->
  ``Resize(keep_ratio=True)`` -> ``PackSegInputs`` -> ``data_preprocessor`` -> ``predict``)
  against our ``SemSegPredictor`` with the converted weights;
* detectron2's recipe: detectron2's ``DefaultPredictor`` with its own PointRend config against
  ``SemSegPredictor`` with the same model-zoo style checkpoint.

Both must give the same class at >= 99.99 % of the pixels (they give 100 % here). Test scales are
shrunk on both sides where that keeps the test fast; the models are small (ResNet-18 for
mmsegmentation) with random weights and random normalization statistics.

Also: the pieces of those test paths against the functions of mmcv / OpenCV they reproduce.
"""

import os
import pickle
from unittest import mock

import cv2
import detectron2
import numpy as np
import pytest
import torch
from conftest import TINY_MODEL, load_config
from detectron2.data import transforms as T
from detectron2.modeling import build_model
from torch.nn import functional as F

from pointrend_sem.convert.mmseg import convert_mmseg_pointrend
from pointrend_sem.data import (
    KeepRatioResize,
    OpenCVResizeTransform,
    RandomScaledResize,
    build_test_augmentations,
    keep_ratio_size,
)
from pointrend_sem.modeling import meta_arch
from pointrend_sem.modeling.meta_arch import postprocess_logits
from pointrend_sem.predictor import SemSegPredictor
from pointrend_sem.tta import SemanticSegmentorWithTTA
from tools.benchmarking.reference_models import (
    DETECTRON2_POINTREND_CONFIG,
    build_detectron2_pointrend,
    build_mmseg_pointrend,
    detectron2_pointrend_config,
    install_mmcv_ops_shim,
    mmseg_predict_files,
    randomize_norms,
)

mmcv = pytest.importorskip("mmcv", reason="mmcv (mmcv-lite) is not installed")

MIN_AGREEMENT = 0.9999
ODD_SIZES = [(611, 923), (457, 301), (517, 1029), (1, 7), (333, 333)]  # (h, w)


def write_image(path, h: int, w: int, seed: int) -> str:
    """A PNG (lossless: both sides decode the same pixels) of an (h, w) image with smooth
    regions and fine texture, so that resizing details change the prediction."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (h // 8 + 2, w // 8 + 2, 3), dtype=np.uint8)
    smooth = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC).astype(np.int64)
    image = np.clip(smooth + rng.integers(-40, 41, (h, w, 3)), 0, 255).astype(np.uint8)
    cv2.imwrite(str(path), image)
    return str(path)


def agreement(ours: torch.Tensor, reference: torch.Tensor) -> float:
    assert ours.shape == reference.shape
    return (ours == reference).double().mean().item()


# ---------------------------------------------------------------- the resize pieces vs mmcv


@pytest.mark.parametrize("h, w", ODD_SIZES)
@pytest.mark.parametrize("scale", [(2048, 512), (2048, 1024), (512, 256), (1536, 384)])
def test_keep_ratio_size_is_mmcv_rescale_size(h, w, scale):
    new_w, new_h = mmcv.rescale_size((w, h), scale)
    assert keep_ratio_size(h, w, max(scale), min(scale)) == (new_h, new_w)


@pytest.mark.parametrize("h, w", [(611, 923), (457, 301), (37, 53)])
def test_opencv_resize_is_mmcv_imrescale(h, w):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    labels = rng.integers(0, 150, (h, w)).astype(np.uint8)
    for scale in [(2048, 512), (64, 32)]:
        t = KeepRatioResize(max(scale), min(scale)).get_transform(image)
        assert isinstance(t, OpenCVResizeTransform)
        assert np.array_equal(t.apply_image(image), mmcv.imrescale(image, scale))
        expected = mmcv.imrescale(labels, scale, interpolation="nearest")
        assert np.array_equal(t.apply_segmentation(labels), expected)
        wide = labels.astype(np.int64)  # any dtype, including those OpenCV refuses
        assert np.array_equal(t.apply_segmentation(wide), expected.astype(np.int64))


def test_opencv_resize_transform_coords_inverse_and_one_channel():
    t = OpenCVResizeTransform(40, 60, 20, 90)
    coords = np.array([[60.0, 40.0], [30.0, 10.0]])
    assert np.allclose(t.apply_coords(coords.copy()), [[90.0, 20.0], [45.0, 5.0]])
    assert np.allclose(t.inverse().apply_coords(t.apply_coords(coords.copy())), coords)
    gray = np.zeros((40, 60, 1), np.uint8)
    assert t.apply_image(gray).shape == (20, 90, 1)
    with pytest.raises(ValueError, match="40x60"):
        t.apply_image(np.zeros((41, 60, 3), np.uint8))


def test_random_scaled_resize_uses_the_backend():
    np.random.seed(0)
    image = np.zeros((611, 923, 3), np.uint8)
    t = RandomScaledResize((2048, 512), (0.5, 0.5), "opencv").get_transform(image)
    assert isinstance(t, OpenCVResizeTransform)
    new_w, new_h = mmcv.rescale_size((923, 611), (1024, 256))  # mmcv's RandomResize at 0.5
    assert (t.new_h, t.new_w) == (new_h, new_w)
    t = RandomScaledResize((2048, 512), (0.5, 0.5), "detectron2").get_transform(image)
    assert isinstance(t, T.ResizeTransform) and (t.new_h, t.new_w) == (new_h, new_w)
    with pytest.raises(ValueError, match="RESIZE_BACKEND"):
        RandomScaledResize((2048, 512), (0.5, 2.0), "pil")


def test_recipes_choose_their_sources_resize():
    for name, backend, output_resize in [
        ("ade20k_r50.yaml", "opencv", "via_input"),
        ("cityscapes_r101.yaml", "opencv", "via_input"),
        ("voc_r50_sssegmentation.yaml", "opencv", "direct"),
        ("cityscapes_r101_detectron2.yaml", "detectron2", "via_input"),
    ]:
        cfg = load_config(name)
        assert (cfg.INPUT.RESIZE_BACKEND, cfg.TEST.OUTPUT_RESIZE) == (backend, output_resize)
    (aug,) = build_test_augmentations(load_config("cityscapes_r101_detectron2.yaml"))
    assert isinstance(aug, T.ResizeShortestEdge)  # as detectron2's DefaultPredictor


def test_tta_views_follow_mmseg_multi_scale_flip_aug():
    """mmsegmentation 0.x's MultiScaleFlipAug: target (int(2048 r), int(512 r)), then
    mmcv.imrescale of the original image, for every ratio."""
    tta = SemanticSegmentorWithTTA(
        torch.nn.Identity(), (0.5, 0.75, 1.0, 1.25, 1.5, 1.75), True, 512, 2048, "opencv"
    )
    image = np.random.default_rng(0).integers(0, 256, (457, 301, 3), dtype=np.uint8)
    views = tta._views({"image": torch.as_tensor(image.transpose(2, 0, 1))})
    for ratio, group in zip(tta.scale_ratios, views):
        expected = mmcv.imrescale(image, (int(2048 * ratio), int(512 * ratio)))
        (view, flipped), (flipped_view, _) = group
        assert np.array_equal(view["image"].numpy().transpose(1, 2, 0), expected)
        assert torch.equal(flipped_view["image"], view["image"].flip(-1))


def test_direct_output_resize_is_one_bilinear_step():
    """sssegmentation resizes the refined logits of an unpadded image straight to the original
    size; "via_input" first brings them to the network input's size (mmsegmentation)."""
    logits = torch.randn(5, 132, 196)  # 4 * ceil(H / 4) for a 130 x 195 input
    direct = postprocess_logits(logits, (130, 195), (130, 195), 251, 377, direct=True)
    expected = F.interpolate(logits[None], size=(251, 377), mode="bilinear")[0]
    assert torch.equal(direct, expected)
    via_input = postprocess_logits(logits, (130, 195), (130, 195), 251, 377)
    to_input = F.interpolate(logits[None], size=(130, 195), mode="bilinear")
    assert torch.equal(via_input, F.interpolate(to_input, size=(251, 377), mode="bilinear")[0])
    assert not torch.equal(direct, via_input)
    padded = postprocess_logits(logits, (130, 196), (100, 150), 200, 300, direct=True)
    expected = F.interpolate(logits[None, :, :102, :150], size=(200, 300), mode="bilinear")[0]
    assert torch.equal(padded, expected)


def test_sssegmentation_recipe_resizes_its_output_directly():
    model = build_model(load_config("voc_r50_sssegmentation.yaml", TINY_MODEL)).eval()
    inputs = [{"image": torch.randint(0, 256, (3, 70, 90), dtype=torch.uint8)}]
    inputs[0].update(height=131, width=171)
    with mock.patch.object(meta_arch, "postprocess_logits", wraps=postprocess_logits) as spy:
        with torch.no_grad():
            out = model(inputs)[0]["sem_seg"]
    assert out.shape[-2:] == (131, 171)
    (args, kwargs), *_ = spy.call_args_list
    assert args[1:] == ((70, 90), (70, 90), 131, 171) and kwargs == {"direct": True}


# ------------------------------------------------------------- mmsegmentation's whole test path

MMSEG_OPTS = ["MODEL.RESNETS.NORM", "BN", "MODEL.SEM_SEG_HEAD.NORM", "BN"]
MMSEG_OPTS += ["MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "config, num_classes, scale, sizes",
    [
        ("ade20k_r50.yaml", 150, (2048, 512), [(611, 923), (457, 301)]),
        # Cityscapes' 2048 x 1024 shrunk to 512 x 256 on both sides, to stay fast
        ("cityscapes_r50.yaml", 19, (512, 256), [(517, 1029)]),
    ],
)
def test_mmseg_test_path_on_files(tmp_path, config, num_classes, scale, sizes):
    torch.manual_seed(0)
    reference = build_mmseg_pointrend(depth=18, num_classes=num_classes)
    randomize_norms(reference, seed=0)
    weights = tmp_path / "converted.pth"
    torch.save({"model": convert_mmseg_pointrend(reference.state_dict())}, weights)
    opts = MMSEG_OPTS + ["MODEL.SEM_SEG_HEAD.NUM_CLASSES", num_classes, "MODEL.WEIGHTS", weights]
    opts += ["INPUT.MIN_SIZE_TEST", min(scale), "INPUT.MAX_SIZE_TEST", max(scale)]
    ours = SemSegPredictor(load_config(config, [str(v) for v in opts]))

    files = [write_image(tmp_path / f"{h}x{w}.png", h, w, seed=h) for h, w in sizes]
    expected = mmseg_predict_files(reference, files, scale)
    for file, exp in zip(files, expected):
        got = ours(cv2.imread(file))["sem_seg"].argmax(0)
        assert agreement(got, exp) >= MIN_AGREEMENT, file


@pytest.mark.slow
def test_mmseg_multi_scale_flip_on_a_file(tmp_path):
    """mmsegmentation's TTA machinery (``TestTimeAug`` views merged by ``SegTTAModel``: softmax
    at the original size, flipped back, averaged) on mmsegmentation 0.x's views
    (``MultiScaleFlipAug``: scale (int(long * r), int(short * r)), keep-ratio ``Resize``), against
    ``SemanticSegmentorWithTTA.from_config``. ADE20K's 2048 x 512 shrunk to 512 x 128."""
    install_mmcv_ops_shim()  # before importing mmseg.models
    from mmengine.dataset import Compose, pseudo_collate
    from mmseg.models.segmentors import SegTTAModel

    scale, ratios = (512, 128), (0.5, 1.25)
    torch.manual_seed(0)
    reference = build_mmseg_pointrend(depth=18, num_classes=150)
    randomize_norms(reference, seed=0)
    weights = tmp_path / "converted.pth"
    torch.save({"model": convert_mmseg_pointrend(reference.state_dict())}, weights)
    opts = MMSEG_OPTS + ["MODEL.SEM_SEG_HEAD.NUM_CLASSES", 150, "MODEL.WEIGHTS", weights]
    opts += ["INPUT.MIN_SIZE_TEST", 128, "INPUT.MAX_SIZE_TEST", 512]
    opts += ["TEST.AUG.SCALE_RATIOS", ratios, "TEST.AUG.FLIP", True]
    cfg = load_config("ade20k_r50.yaml", [str(v) for v in opts])
    ours = SemanticSegmentorWithTTA.from_config(cfg, SemSegPredictor(cfg).model)

    views = [
        [dict(type="Resize", scale=(int(scale[0] * r), int(scale[1] * r)), keep_ratio=True)]
        for r in ratios
    ]
    views = [sum(views, [])]  # one list of resizes, then the flips, then packing
    views += [[dict(type="RandomFlip", prob=p, direction="horizontal") for p in (0.0, 1.0)]]
    views += [[dict(type="PackSegInputs")]]
    pipeline = Compose([dict(type="LoadImageFromFile"), dict(type="TestTimeAug", transforms=views)])
    file = write_image(tmp_path / "457x301.png", 457, 301, seed=457)
    with torch.no_grad():
        data = pseudo_collate([pipeline(dict(img_path=file))])
        expected = SegTTAModel(module=reference).test_step(data)[0].pred_sem_seg.data[0]
    rgb = torch.as_tensor(cv2.imread(file)[:, :, ::-1].transpose(2, 0, 1).copy())
    got = ours([{"image": rgb, "height": 457, "width": 301}])[0]["sem_seg"].argmax(0)
    assert agreement(got, expected) >= MIN_AGREEMENT


# -------------------------------------------------------- detectron2's DefaultPredictor path


@pytest.mark.slow
def test_detectron2_default_predictor_path_on_a_file(tmp_path):
    """detectron2's Cityscapes test (short side 1024, long side at most 2048) shrunk to
    256 / 512, at ResNet-18; enough subdivision points to refine every cell on both sides
    (detectron2's also spends points on the padding, ours does not)."""
    pytest.importorskip("detectron2.projects.point_rend")
    from detectron2.engine import DefaultPredictor

    root = os.path.dirname(os.path.dirname(detectron2.__file__))
    if not os.path.isfile(os.path.join(root, DETECTRON2_POINTREND_CONFIG)):
        pytest.skip("detectron2's source checkout (with projects/PointRend/configs) not found")
    common = ["MODEL.RESNETS.DEPTH", 18, "MODEL.RESNETS.RES2_OUT_CHANNELS", 64]
    common += ["INPUT.MIN_SIZE_TEST", 256, "INPUT.MAX_SIZE_TEST", 512]
    opts = common + ["MODEL.DEVICE", "cpu", "MODEL.POINT_HEAD.SUBDIVISION_NUM_POINTS", 200_000]
    torch.manual_seed(1)
    reference = build_detectron2_pointrend(root, opts)
    randomize_norms(reference, seed=0)
    zoo = str(tmp_path / "model_final.pkl")
    with open(zoo, "wb") as f:
        arrays = {k: v.numpy() for k, v in reference.state_dict().items()}
        pickle.dump({"model": arrays, "__author__": "Detectron2 Model Zoo"}, f)
    theirs = DefaultPredictor(detectron2_pointrend_config(root, opts + ["MODEL.WEIGHTS", zoo]))
    ours_opts = common + ["MODEL.POINTREND_SEM.SUBDIVISION_NUM_POINTS", 200_000]
    ours = SemSegPredictor(
        load_config("cityscapes_r101_detectron2.yaml", ours_opts + ["MODEL.WEIGHTS", zoo])
    )

    image = cv2.imread(write_image(tmp_path / "517x1029.png", 517, 1029, seed=3))
    with torch.no_grad():
        expected = theirs(image)["sem_seg"].argmax(0)
    assert agreement(ours(image)["sem_seg"].argmax(0), expected) >= MIN_AGREEMENT
