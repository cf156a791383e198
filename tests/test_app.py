"""The browser demo (demo/app.py), served on a free local port with a randomly initialised demo
model: driven with gradio_client (its API gives SemSegPredictor's class map; bad uploads get
their message and the server keeps answering), and in a real headless Chromium
(tools/app_screenshot.py: upload, overlay, screenshot, no request to another host)."""

import os
import socket
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, load_config, load_script
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from pointrend_sem.data.datasets.synthetic import SYNTHETIC_CLASSES, render_sample
from pointrend_sem.predictor import SemSegPredictor

CONFIG = os.path.join(REPO_ROOT, "configs", "demo_synthetic.yaml")
MAX_MEGAPIXELS = 0.05  # the app's limit in these tests: 233 x 151 fits, 300 x 300 does not
screenshot = load_script(os.path.join(REPO_ROOT, "tools", "app_screenshot.py"))


def write_image(path, seed: int, height: int, width: int) -> str:
    """A synthetic image resized to (height, width), written as BGR."""
    image, _ = render_sample(seed)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    cv2.imwrite(str(path), cv2.resize(image[:, :, ::-1], (width, height)))
    return str(path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """The demo served on a free port (in this process, as demo/app.py serves it), with a
    randomly initialised demo model saved as a checkpoint; its images and the checkpoint."""
    folder = tmp_path_factory.mktemp("app")
    torch.manual_seed(0)
    DetectionCheckpointer(build_model(load_config()), save_dir=str(folder)).save("random")
    weights = str(folder / "random.pth")
    images = {
        "odd": write_image(folder / "images" / "odd.png", 3, 151, 233),
        "other": write_image(folder / "images" / "other.png", 5, 97, 130),
    }
    app_script = load_script(os.path.join(REPO_ROOT, "demo", "app.py"))
    args = app_script.get_parser().parse_args(
        ["--config-file", CONFIG, "--examples", str(folder / "images"),
         "--max-megapixels", str(MAX_MEGAPIXELS), "--opts", "MODEL.WEIGHTS", weights]
    )  # fmt: skip
    page = app_script.build_app(args)
    port = free_port()
    app_script.launch(page, "127.0.0.1", port, block=False)
    predictor = SemSegPredictor(load_config(opts=["MODEL.WEIGHTS", weights]))
    expected = {
        name: predictor(cv2.imread(path))["sem_seg"].argmax(0).numpy()
        for name, path in images.items()
    }
    try:
        yield SimpleNamespace(url=f"http://127.0.0.1:{port}/", images=images, expected=expected)
    finally:
        page.close()


def client(app) -> Client:
    """A new client: a session of its own."""
    return Client(app.url, verbose=False, analytics_enabled=False)


def class_map(png) -> np.ndarray:
    return cv2.imread(png, cv2.IMREAD_UNCHANGED)


def test_api_gives_the_predictors_class_map_and_bad_uploads_a_message(app, tmp_path):
    expected = app.expected
    assert len(np.unique(expected["odd"])) > 1  # a map worth comparing
    # two sessions at once: each gets the map of its own image
    jobs = {
        name: client(app).submit(handle_file(path), api_name="/class_map")
        for name, path in app.images.items()
    }
    for name, job in jobs.items():
        png, names = job.result(timeout=120)
        assert png.endswith(f"{name}_class_ids.png")
        assert class_map(png).dtype == np.uint8
        assert np.array_equal(class_map(png), expected[name]), name  # 151 x 233: the image's size
        assert names == SYNTHETIC_CLASSES

    session = client(app)
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "empty.png").write_bytes(b"")
    Image.new("RGB", (300, 300)).save(tmp_path / "huge.png")
    bad = {
        "notes.txt": "notes.txt is not an image this demo can read",
        "empty.png": r"empty.png is empty \(0 bytes\)",
        "huge.png": r"huge.png is 300×300 \(0.1 MP\); this demo takes up to 0.05 MP",
    }
    for name, message in bad.items():
        with pytest.raises(AppError, match=message):
            session.predict(handle_file(str(tmp_path / name)), api_name="/class_map")
    with pytest.raises(AppError, match="'tf32' is not one this machine runs; choose one of fp32"):
        session.predict(handle_file(app.images["odd"]), "tf32", api_name="/class_map")
    png, _ = session.predict(handle_file(app.images["odd"]), api_name="/class_map")
    assert np.array_equal(class_map(png), expected["odd"])  # the server still answers


@pytest.mark.skipif(screenshot.chromium() is None, reason=screenshot.INSTALL_HINT)
def test_the_page_in_headless_chromium(app, tmp_path):
    output = tmp_path / "app.png"
    result = screenshot.upload_and_capture(app.url, app.images["odd"], str(output))
    assert result["overlay"] == (233 * 3, 151 * 3)  # drawn enlarged 3x (to >= 512 pixels)
    assert result["external"] == []  # offline: nothing asked of another host
    top = SYNTHETIC_CLASSES[np.bincount(app.expected["odd"].ravel()).argmax()]
    assert top in result["legend"].splitlines()[1], result["legend"]  # largest share first
    assert "233×151 pixels" in result["facts"] and "subdivision steps" in result["facts"]
    with Image.open(output) as shot:
        assert shot.format == "PNG" and shot.size[0] >= 1000
