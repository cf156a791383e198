"""The pictures people look at: demo overlays, subdivision points, training curves.

A randomly initialised demo model on small generated images of odd sizes; no trained weights.
"""

import json
import os
import sys

import cv2
import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, load_config, run_script
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import transforms as T
from detectron2.modeling import build_model
from PIL import Image

from pointrend_sem.data import build_test_augmentations
from pointrend_sem.data.datasets.synthetic import SYNTHETIC_CLASSES, SYNTHETIC_COLORS, render_sample
from pointrend_sem.predictor import to_model_inputs
from tools import plot_metrics, visualize_points

CONFIG = os.path.join(REPO_ROOT, "configs", "demo_synthetic.yaml")


def write_image(path, seed: int, height: int, width: int) -> None:
    """A synthetic image resized to (height, width), written as BGR."""
    image, _ = render_sample(seed)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    cv2.imwrite(str(path), cv2.resize(image[:, :, ::-1], (width, height)))


def png_size(path):
    """(width, height) of a valid PNG file."""
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.load()
        return image.size


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A randomly initialised demo model saved as a checkpoint."""
    torch.manual_seed(0)
    model = build_model(load_config())
    folder = tmp_path_factory.mktemp("weights")
    DetectionCheckpointer(model, save_dir=str(folder)).save("random")
    return str(folder / "random.pth")


def test_demo_writes_one_overlay_per_image_at_its_size(tmp_path, weights):
    sizes = {"a": (97, 130), "b": (120, 75), "c": (64, 64), "d": (90, 111)}
    for seed, (name, (h, w)) in enumerate(sizes.items()):
        folder = {"a": "images", "b": "images", "c": "folder", "d": "globbed"}[name]
        ext = ".jpg" if name == "d" else ".png"
        write_image(tmp_path / folder / f"{name}{ext}", seed, h, w)
    (tmp_path / "globbed" / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    cmd = [
        sys.executable, "demo/demo.py", "--config-file", CONFIG,
        "--input", str(tmp_path / "images" / "a.png"), str(tmp_path / "images" / "b.png"),
        str(tmp_path / "folder"), str(tmp_path / "globbed" / "*.jpg"),
        "--output", str(out),
        "--opts", "MODEL.WEIGHTS", weights,
    ]  # fmt: skip
    proc = run_script(cmd)
    assert proc.returncode == 0, proc.stderr[-3000:]

    assert sorted(os.listdir(out)) == ["a.png", "b.png", "c.png", "d.png"]
    for name, (h, w) in sizes.items():
        assert png_size(out / f"{name}.png") == (w, h)
    source = cv2.imread(str(tmp_path / "images" / "a.png"))
    overlay = cv2.imread(str(out / "a.png"))
    assert np.abs(overlay.astype(int) - source).mean() > 1  # the prediction is drawn


def test_point_panels_from_arrays(tmp_path):
    rng = np.random.default_rng(0)
    h, w = 97, 130
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    labels = rng.integers(0, len(SYNTHETIC_CLASSES) + 1, (h, w))  # one class without a colour
    steps = [
        (rng.random((25, 33)), rng.random((40, 2)) * [w, h]),
        (rng.random((49, 65)), rng.random((60, 2)) * [w, h]),
    ]
    fig = visualize_points.draw_point_panels(
        image, labels, steps, labels, SYNTHETIC_COLORS, SYNTHETIC_CLASSES
    )
    out = tmp_path / "points.png"
    fig.savefig(out, dpi=visualize_points.DPI)
    assert png_size(out) == visualize_points.figure_size(num_steps=2)
    assert len(fig.axes) == 5
    assert [ax.get_title() for ax in fig.axes][-1] == "final prediction"


def test_subdivision_record_matches_the_model_output(tmp_path, weights):
    cfg = load_config(opts=["MODEL.WEIGHTS", weights])
    model = build_model(cfg)
    model.eval()
    DetectionCheckpointer(model).load(weights)
    image, _ = render_sample(7)
    image = cv2.resize(image, (130, 97))  # not a multiple of 32 after resize: padded
    inputs = to_model_inputs(image, T.AugmentationList(build_test_augmentations(cfg)))
    result = visualize_points.collect_subdivision(model, inputs)

    with torch.no_grad():
        expected = model([inputs])[0]
    assert np.array_equal(result["final"], expected["sem_seg"].argmax(0).numpy())
    assert np.array_equal(result["coarse"], expected["coarse_sem_seg"].argmax(0).numpy())
    assert len(result["steps"]) == cfg.MODEL.POINTREND_SEM.SUBDIVISION_STEPS
    for uncertainty, points in result["steps"]:
        assert uncertainty.ndim == 2 and (uncertainty <= 0).all()
        assert 0 < len(points) <= cfg.MODEL.POINTREND_SEM.SUBDIVISION_NUM_POINTS
        assert (points >= 0).all() and (points <= [130, 97]).all()


def test_visualize_points_cli(tmp_path, weights):
    write_image(tmp_path / "img.png", 3, 97, 130)
    out = tmp_path / "points.png"
    visualize_points.main(
        [
            "--config-file", CONFIG,
            "--input", str(tmp_path / "img.png"),
            "--output", str(out),
            "--opts", "MODEL.WEIGHTS", weights,
        ]
    )  # fmt: skip
    assert png_size(out) == visualize_points.figure_size(num_steps=2)


def write_metrics(path, rows) -> None:
    with open(path, "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)


def train_row(iteration: int, loss: float):
    return {
        "iteration": iteration,
        "total_loss": 2 * loss,
        "loss_sem_seg": loss,
        "loss_sem_seg_point": loss,
        "lr": 0.01,
        "time": 0.3,
    }


def eval_row(iteration: int, miou: float):
    return {
        "iteration": iteration,
        "sem_seg/mIoU": miou,
        "sem_seg/mBoundaryIoU": miou - 10,
        "coarse_sem_seg/mIoU": miou - 1,
        "coarse_sem_seg/mBoundaryIoU": miou - 12,
        "sem_seg/IoU-ring": miou,
    }


def test_plot_metrics_keeps_the_last_of_a_resumed_run(tmp_path):
    rows = [train_row(i, 1.0) for i in (19, 39, 59)] + [eval_row(59, 50.0)]
    rows += [train_row(i, 0.5) for i in (39, 59, 79)] + [eval_row(59, 60.0), eval_row(79, 70.0)]
    path = tmp_path / "metrics.json"
    write_metrics(path, rows)
    with open(path, "a") as f:
        f.write('{"iteration": 99, "total_lo')  # cut short by a killed run

    metrics = plot_metrics.read_metrics(str(path))
    assert plot_metrics.series(metrics, "loss_sem_seg") == ([19, 39, 59, 79], [1.0, 0.5, 0.5, 0.5])
    assert plot_metrics.series(metrics, "sem_seg/mIoU") == ([59, 79], [60.0, 70.0])
    assert plot_metrics.eval_keys(metrics) == [
        "sem_seg/mIoU",
        "sem_seg/mBoundaryIoU",
        "coarse_sem_seg/mIoU",
        "coarse_sem_seg/mBoundaryIoU",
    ]
    assert plot_metrics.loss_keys(metrics)[0] == "total_loss"

    out = tmp_path / "curves.png"
    cmd = [sys.executable, "tools/plot_metrics.py", str(path), "--output", str(out)]
    run_script(cmd, check=True)
    expected = tuple(round(x * plot_metrics.DPI) for x in plot_metrics.FIGSIZE)
    assert png_size(out) == expected


def test_plot_metrics_without_evaluations(tmp_path):
    path = tmp_path / "metrics.json"
    write_metrics(path, [train_row(i, 1.0 / (i + 1)) for i in range(0, 100, 20)])
    out = tmp_path / "curves.png"
    plot_metrics.main([str(path), "--output", str(out)])
    expected = tuple(round(x * plot_metrics.DPI) for x in plot_metrics.FIGSIZE)
    assert png_size(out) == expected
