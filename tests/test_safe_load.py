"""No weights file runs code: a pickle that asks for other Python objects stops every entry point
with one line naming the file (nothing it asked for runs); detectron2's model zoo ``.pkl`` and the
checkpoints mmengine writes still load; URLs are checked against the hash in their names."""

import collections
import hashlib
import logging
import os
import pickle
import shutil
from fractions import Fraction

import cv2
import numpy as np
import pytest
import torch
from conftest import load_config, one_line_error, run_tool
from detectron2.modeling import build_model

from pointrend_sem.checkpoint import CACHE_ENV, PointRendSemCheckpointer
from pointrend_sem.checkpoint.safe_load import (
    TRUST_ENV,
    UntrustedCheckpointError,
    load_weights_file,
)
from pointrend_sem.errors import UserValueError
from pointrend_sem.predictor import SemSegPredictor

DEMO = ["--config-file", "configs/demo_synthetic.yaml"]


class WritesAFile:
    """Unpickled, it opens (creates) the file ``path``: what a malicious checkpoint does."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture(autouse=True)
def cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv(TRUST_ENV, raising=False)


@pytest.fixture(scope="module")
def demo_state():
    torch.manual_seed(0)
    return build_model(load_config()).state_dict()


def write_evil(path, marker):
    checkpoint = {"model": {"w": np.zeros(3)}, "__author__": "x", "payload": WritesAFile(marker)}
    if str(path).endswith(".pkl"):
        with open(path, "wb") as f:
            pickle.dump(checkpoint, f)
    else:
        torch.save(checkpoint, path)
    return str(path)


def write_zoo_pkl(path, state, **extra):
    """A ``.pkl`` as detectron2's model zoo writes them: numpy arrays under "model"."""
    with open(path, "wb") as f:
        arrays = {k: v.numpy() for k, v in state.items()}
        pickle.dump({"model": arrays, "__author__": "Detectron2 Model Zoo", **extra}, f)
    return str(path)


def entry_point_command(entry, weights, tmp_path):
    if entry == "train_net":
        return ["train_net.py", *DEMO, "--eval-only", "MODEL.WEIGHTS", weights,
                "OUTPUT_DIR", tmp_path / "out"]  # fmt: skip
    if entry == "demo":
        image = tmp_path / "image.png"
        cv2.imwrite(str(image), np.zeros((20, 30, 3), np.uint8))
        return ["demo/demo.py", *DEMO, "--input", image, "--output", tmp_path / "overlays",
                "--opts", "MODEL.WEIGHTS", weights]  # fmt: skip
    if entry == "export_model":
        return ["tools/export_model.py", *DEMO, "--format", "pt2", "--height", "32", "--width",
                "32", "--output", tmp_path / "model.pt2", "MODEL.WEIGHTS", weights]  # fmt: skip
    assert entry == "convert_weights"
    return ["tools/convert_weights.py", "--from", "mmseg", *DEMO, weights, tmp_path / "out.pth"]


@pytest.mark.parametrize("ext", [".pkl", ".pth"])
@pytest.mark.parametrize(
    "entry", ["train_net", "demo", "export_model", "convert_weights", "SemSegPredictor"]
)
def test_a_pickle_that_runs_code_stops_every_entry_point(tmp_path, entry, ext):
    marker = tmp_path / "written_by_the_checkpoint"
    weights = write_evil(tmp_path / f"evil{ext}", marker)
    if entry == "SemSegPredictor":
        with pytest.raises(UntrustedCheckpointError) as error:
            SemSegPredictor(load_config(opts=["MODEL.WEIGHTS", weights]))
        line = str(error.value)
    else:
        line = one_line_error(run_tool(tmp_path, *entry_point_command(entry, weights, tmp_path)))
    assert not marker.exists()
    assert weights in line and "asks to load the Python object" in line, line
    assert "open" in line and f"{TRUST_ENV}=1" in line, line
    assert "\n" not in line


def test_model_zoo_pkl_predicts_exactly_as_its_pth_twin(tmp_path, demo_state):
    zoo = write_zoo_pkl(tmp_path / "model_final.pkl", demo_state)
    twin = tmp_path / "model_final.pth"
    torch.save({"model": demo_state}, twin)
    image = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    got = SemSegPredictor(load_config(opts=["MODEL.WEIGHTS", zoo]))(image)["sem_seg"]
    expected = SemSegPredictor(load_config(opts=["MODEL.WEIGHTS", str(twin)]))(image)["sem_seg"]
    assert torch.equal(got, expected)


def test_caffe2_blobs_pkl_reads_as_detectron2_reads_it(tmp_path):
    path = tmp_path / "R-50.pkl"
    blobs = {"conv1_w": np.ones((2, 3), np.float32), "conv1_w_momentum": np.zeros((2, 3))}
    with open(path, "wb") as f:
        pickle.dump({"blobs": blobs}, f, protocol=2)
    loaded = PointRendSemCheckpointer(build_model(load_config()))._read(str(path))
    assert loaded["__author__"] == "Caffe2" and loaded["matching_heuristics"]
    assert list(loaded["model"]) == ["conv1_w"]


def test_trusted_pickle_with_another_object_loads_with_a_warning(
    tmp_path, demo_state, monkeypatch, caplog
):
    weights = write_zoo_pkl(tmp_path / "odd.pkl", demo_state, ratio=Fraction(1, 3))
    with pytest.raises(UntrustedCheckpointError, match="fractions.Fraction"):
        load_weights_file(weights)
    monkeypatch.setenv(TRUST_ENV, "1")
    with caplog.at_level(logging.WARNING):
        SemSegPredictor(load_config(opts=["MODEL.WEIGHTS", weights]))
    assert "fractions.Fraction" in caplog.text and "code in it runs" in caplog.text


def test_mmengine_checkpoint_meta_and_message_hub_load(tmp_path, demo_state):
    """What mmengine's ``Runner.save_checkpoint`` writes beside the weights: meta (numpy values,
    dataset_meta) and the message hub (HistoryBuffers of numpy arrays)."""
    mmengine_logging = pytest.importorskip("mmengine.logging")
    hub = mmengine_logging.MessageHub.get_instance("test_safe_load")
    hub.update_scalar("train/loss", 0.5)
    hub.update_info("iter", 3, resumed=True)
    meta = {"seed": 1, "time": "20240101_000000", "mmengine_version": "0.10.7", "cfg": "a = 1"}
    meta.update(epoch=1, iter=3, dataset_meta={"classes": ("a", "b"), "palette": [[1, 2, 3]]})
    meta.update(mean=np.float64(0.5), dtype=np.dtype("float32"), hist=np.arange(3))
    path = tmp_path / "iter_3.pth"
    # the weights under "model" (mmengine: "state_dict"), so that they load unconverted
    state = collections.OrderedDict(demo_state)
    torch.save({"meta": meta, "model": state, "message_hub": hub.state_dict()}, path)
    loaded = load_weights_file(str(path))
    assert loaded["meta"]["dataset_meta"] == meta["dataset_meta"]
    assert loaded["meta"]["mean"] == 0.5 and loaded["meta"]["dtype"] == np.float32
    buffer = loaded["message_hub"]["log_scalars"]["train/loss"]
    assert buffer._log_history.tolist() == [0.5]
    model = build_model(load_config())
    PointRendSemCheckpointer(model, strict_fit=True).load(str(path))


def hashed_copy(path, folder, prefix=None):
    """``path`` copied into ``folder`` as ``weights-<prefix>.pth`` (default: its SHA-256's)."""
    with open(path, "rb") as f:
        prefix = prefix or hashlib.sha256(f.read()).hexdigest()[:8]
    os.makedirs(folder, exist_ok=True)
    return shutil.copy(path, os.path.join(folder, f"weights-{prefix}.pth"))


def test_file_url_with_the_right_hash_loads_and_a_wrong_one_stops(tmp_path, demo_state):
    source = tmp_path / "source.pth"
    torch.save({"model": demo_state}, source)
    good = hashed_copy(source, tmp_path / "good")
    SemSegPredictor(load_config(opts=["MODEL.WEIGHTS", f"file://{good}"]))
    bad = hashed_copy(source, tmp_path / "bad", prefix="deadbeef")
    with pytest.raises(UserValueError) as error:
        SemSegPredictor(load_config(opts=["MODEL.WEIGHTS", f"file://{bad}"]))
    message = str(error.value)
    assert "\n" not in message and bad in message, message
    assert "should start with deadbeef, it starts with" in message
    assert os.path.isfile(bad)  # the user's own file stays


def test_downloaded_file_with_a_wrong_hash_leaves_the_cache(tmp_path, demo_state, monkeypatch):
    source = tmp_path / "source.pth"
    torch.save({"model": demo_state}, source)
    downloaded = hashed_copy(source, tmp_path / "iopath_cache", prefix="0badc0de")
    checkpointer = PointRendSemCheckpointer(build_model(load_config()))
    monkeypatch.setattr(checkpointer.path_manager, "get_local_path", lambda url: downloaded)
    with pytest.raises(UserValueError, match="should start with 0badc0de.*was deleted"):
        checkpointer.load("https://example.com/models/weights-0badc0de.pth")
    assert not os.path.exists(downloaded)


def test_http_url_is_refused_without_downloading(monkeypatch):
    checkpointer = PointRendSemCheckpointer(build_model(load_config()))

    def no_download(url):
        raise AssertionError(f"downloaded {url}")

    monkeypatch.setattr(checkpointer.path_manager, "get_local_path", no_download)
    with pytest.raises(UserValueError, match="plain http:// .* use the https:// URL") as error:
        checkpointer.load("http://example.com/model_final.pth")
    assert "\n" not in str(error.value)
