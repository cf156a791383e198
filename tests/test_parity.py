"""Published models: converted or loaded weights give the reference implementation's outputs.

mmsegmentation's PointRend runs here (see tools/benchmarking/reference_models.py); detectron2's is
installed with detectron2. For each: the reference with random weights (random BN statistics
too), saved in its own checkpoint format, converted if needed, loaded into our model from the
matching config, and compared on random images: identical argmax, max |logit difference| 1e-4.
"""

import os
import pickle
import sys

import detectron2
import pytest
import torch
from conftest import load_config, run_script
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from tools.benchmarking.reference_models import (
    DETECTRON2_POINTREND_CONFIG,
    build_detectron2_pointrend,
    build_mmseg_pointrend,
    mmseg_logits,
    randomize_norms,
)

pytest.importorskip("mmseg", reason="mmsegmentation is not installed")


def assert_same_predictions(ours: torch.Tensor, reference: torch.Tensor) -> None:
    """The same classes, and logits equal up to float rounding: within 1e-5 of their magnitude
    (1e-4 at least). Sums run in another order (the Semantic FPN head's shared upsample)."""
    assert ours.shape == reference.shape
    assert torch.equal(ours.argmax(0), reference.argmax(0))
    assert (ours - reference).abs().max() <= 1e-5 * max(10.0, reference.abs().max().item())


MMSEG_OPTS = ["MODEL.RESNETS.NORM", "BN", "MODEL.SEM_SEG_HEAD.NORM", "BN"]


@pytest.mark.parametrize("depth, points", [(18, 8196), (50, 8196), (18, 300)])
def test_mmseg_checkpoint_converts_to_identical_outputs(tmp_path, depth, points):
    torch.manual_seed(depth)
    reference = build_mmseg_pointrend(depth=depth, num_classes=7, subdivision_num_points=points)
    randomize_norms(reference, seed=0)
    source = tmp_path / "mmseg.pth"
    torch.save({"meta": {"mmseg_version": "1.2.2"}, "state_dict": reference.state_dict()}, source)

    opts = MMSEG_OPTS + ["MODEL.RESNETS.DEPTH", str(depth), "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "7"]
    opts += ["MODEL.POINTREND_SEM.SUBDIVISION_NUM_POINTS", str(points)]
    opts += ["MODEL.RESNETS.RES2_OUT_CHANNELS", "64" if depth < 50 else "256"]
    converted = tmp_path / "converted.pth"
    cmd = [sys.executable, "tools/convert_weights.py", "--from", "mmseg", "--config-file"]
    cmd += ["configs/cityscapes_r50.yaml", str(source), str(converted), *opts]
    proc = run_script(cmd)
    assert proc.returncode == 0, proc.stderr

    ours = build_model(load_config("cityscapes_r50.yaml", opts)).eval()
    DetectionCheckpointer(ours).load(str(converted))
    images = [
        torch.randint(0, 256, size, dtype=torch.uint8) for size in [(3, 75, 101), (3, 64, 96)]
    ]
    with torch.no_grad():
        expected = mmseg_logits(reference, images)
        for image, exp in zip(images, expected):
            got = ours([{"image": image}])[0]["sem_seg"]
            assert_same_predictions(got, exp)


def test_mmseg_conversion_refuses_bad_checkpoints(tmp_path):
    reference = build_mmseg_pointrend(depth=18, num_classes=7)
    state = reference.state_dict()
    opts = MMSEG_OPTS + ["MODEL.RESNETS.DEPTH", "18", "MODEL.SEM_SEG_HEAD.NUM_CLASSES", "7"]
    opts += ["MODEL.RESNETS.RES2_OUT_CHANNELS", "64"]

    def convert(bad_state, name):
        source, out = tmp_path / f"{name}.pth", tmp_path / f"{name}_out.pth"
        torch.save({"state_dict": bad_state}, source)
        cmd = [sys.executable, "tools/convert_weights.py", "--from", "mmseg", "--config-file"]
        cmd += ["configs/cityscapes_r50.yaml", str(source), str(out), *opts]
        proc = run_script(cmd)
        assert proc.returncode == 1 and not out.exists()
        return proc.stderr

    missing = dict(state)
    del missing["decode_head.1.fcs.1.conv.weight"]
    assert "sem_seg_head.point_head.fc2.weight: missing" in convert(missing, "missing")
    extra = dict(state, **{"decode_head.2.mystery.weight": torch.zeros(1)})
    assert "decode_head.2.mystery.weight" in convert(extra, "extra")
    wrong = dict(state, **{"decode_head.0.conv_seg.weight": torch.zeros(9, 128, 1, 1)})
    assert "coarse_sem_seg_head.predictor.weight: shape (9, 128, 1, 1)" in convert(wrong, "wrong")


def detectron2_pointrend(depth: int, num_points: int):
    """detectron2's own PointRend semantic model (projects/PointRend, Cityscapes config)."""
    root = os.path.dirname(os.path.dirname(detectron2.__file__))
    if not os.path.isfile(os.path.join(root, DETECTRON2_POINTREND_CONFIG)):
        pytest.skip("detectron2's source checkout (with projects/PointRend/configs) not found")
    opts = ["MODEL.RESNETS.DEPTH", depth, "MODEL.DEVICE", "cpu"]
    return build_detectron2_pointrend(
        root, opts + ["MODEL.POINT_HEAD.SUBDIVISION_NUM_POINTS", num_points]
    )


@pytest.mark.parametrize("fast", [False, True])
@pytest.mark.parametrize("size, points", [((128, 192), 500), ((75, 101), 100_000)])
def test_detectron2_checkpoint_loads_as_is_with_identical_outputs(tmp_path, size, points, fast):
    """A model-zoo style .pkl of detectron2's PointRend loads into configs/
    cityscapes_r101_detectron2.yaml (here at R-50) without renaming. On odd sizes both pad to
    32; there only M covering every cell is compared, as our points stay inside the image.

    With the inference speed-ups (``fast``: channels-last, folded norms) float rounding differs:
    the argmax is still identical and logits agree to 1e-4 of their magnitude."""
    pytest.importorskip("detectron2.projects.point_rend")
    torch.manual_seed(1)
    reference = detectron2_pointrend(50, points)
    randomize_norms(reference, seed=0)
    zoo = tmp_path / "model_final.pkl"
    with open(zoo, "wb") as f:
        arrays = {k: v.numpy() for k, v in reference.state_dict().items()}
        pickle.dump({"model": arrays, "__author__": "Detectron2 Model Zoo"}, f)

    opts = ["MODEL.RESNETS.DEPTH", 50, "MODEL.POINTREND_SEM.SUBDIVISION_NUM_POINTS", points]
    opts += ["MODEL.CHANNELS_LAST", fast, "MODEL.FOLD_NORMS", fast]
    ours = build_model(load_config("cityscapes_r101_detectron2.yaml", opts)).eval()
    DetectionCheckpointer(ours).load(str(zoo))
    image = torch.randint(0, 256, (3, *size), dtype=torch.uint8)
    with torch.no_grad():
        expected = reference([{"image": image}])[0]["sem_seg"]
        got = ours([{"image": image}])[0]["sem_seg"]
    if not fast:
        assert_same_predictions(got, expected)
    else:
        assert torch.equal(got.argmax(0), expected.argmax(0))
        assert (got - expected).abs().max() <= 1e-4 * expected.abs().max()


def test_detectron2_recipe_matches_detectron2_at_an_odd_size(tmp_path):
    """At a size that is not a multiple of 32 (257x389) and detectron2's 8192 subdivision points,
    the padding competes for points in both (``POINTS_OFF_PADDING: False`` in the recipe): the
    same argmax, logits within 1e-4 of their magnitude. The speed-ups are off (channels-last,
    folded norms), so the arithmetic is detectron2's."""
    pytest.importorskip("detectron2.projects.point_rend")
    torch.manual_seed(2)
    reference = detectron2_pointrend(50, 8192)
    randomize_norms(reference, seed=0)
    zoo = tmp_path / "model_final.pkl"
    with open(zoo, "wb") as f:
        arrays = {k: v.numpy() for k, v in reference.state_dict().items()}
        pickle.dump({"model": arrays, "__author__": "Detectron2 Model Zoo"}, f)

    opts = ["MODEL.RESNETS.DEPTH", 50, "MODEL.CHANNELS_LAST", False, "MODEL.FOLD_NORMS", False]
    cfg = load_config("cityscapes_r101_detectron2.yaml", opts)
    assert cfg.MODEL.POINTREND_SEM.SUBDIVISION_NUM_POINTS == 8192
    assert not cfg.MODEL.POINTREND_SEM.POINTS_OFF_PADDING
    ours = build_model(cfg).eval()
    DetectionCheckpointer(ours).load(str(zoo))
    image = torch.randint(0, 256, (3, 257, 389), dtype=torch.uint8)
    with torch.no_grad():
        expected = reference([{"image": image}])[0]["sem_seg"]
        got = ours([{"image": image}])[0]["sem_seg"]
    assert got.shape == expected.shape
    assert torch.equal(got.argmax(0), expected.argmax(0))
    assert (got - expected).abs().max() <= 1e-4 * expected.abs().max()
