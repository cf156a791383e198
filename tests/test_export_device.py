"""The device of an export (``tools/export_model.py --device``, the sidecar's "device", the
runner): a CPU export records "cpu"; ``--device cuda`` without CUDA is refused in one line; the
runner runs a ``.pt2`` on the sidecar's device, on CPU where CUDA is absent, refuses what cannot
run here in one line, and brings the scores back to CPU.

CPU only: a GPU export is simulated by editing a CPU export's sidecar (and, for a program saved
with CUDA weights, its archive's payload configs).
"""

import json
import os
import shutil
import zipfile

import numpy as np
import pytest
import torch
from conftest import CONFIG_DIR, load_config, one_line_error, run_tool

from pointrend_sem.export import runner
from pointrend_sem.export.module import sidecar
from pointrend_sem.export.runner import ExportedPredictor, load_graph, resolve_device

SIZE = 32
TOOL = "tools/export_model.py"
no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="what a CPU-only machine does")


def export_args(output, *extra):
    config = os.path.join(CONFIG_DIR, "demo_synthetic.yaml")
    return [TOOL, "--config-file", config, "--format", "pt2", "--height", SIZE, "--width", SIZE] + [
        "--output", output, "--runs", 1, *extra, "MODEL.WEIGHTS", ""
    ]  # fmt: skip


@pytest.fixture(scope="module")
def cpu_export(tmp_path_factory):
    """A .pt2 of the demo config at 32 x 32, exported by the tool on CPU (MODEL.DEVICE cuda on
    the command line: --device decides)."""
    folder = tmp_path_factory.mktemp("export")
    output = str(folder / "demo.pt2")
    proc = run_tool(folder, *export_args(output, "--device", "cpu"), "MODEL.DEVICE", "cuda")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "(pt2, 32x32, cpu," in proc.stdout
    return output


def copy_with_device(path, folder, device):
    """A copy of the export ``path`` in ``folder`` whose sidecar says ``device``."""
    copy = str(folder / os.path.basename(path))
    shutil.copy(path, copy)
    with open(path + ".json") as f:
        info = json.load(f)
    with open(copy + ".json", "w") as f:
        json.dump(dict(info, device=device), f)
    return copy


def image_bgr():
    return np.random.RandomState(0).randint(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)


def test_cpu_export_records_the_device(cpu_export):
    with open(cpu_export + ".json") as f:
        assert json.load(f)["device"] == "cpu"
    predictor = ExportedPredictor(cpu_export)
    assert predictor.device == "cpu"
    assert predictor(image_bgr())["sem_seg"].shape == (5, SIZE, SIZE)
    assert sidecar(load_config(), "onnx", SIZE, SIZE, "cuda:0")["device"] == "cuda"


@no_cuda
def test_cuda_export_without_cuda_is_one_line(tmp_path):
    proc = run_tool(tmp_path, *export_args(str(tmp_path / "x.pt2"), "--device", "cuda"))
    line = one_line_error(proc)
    assert "CUDA is not available" in line and "--device cpu" in line, line
    assert not os.path.exists(tmp_path / "x.pt2")


@no_cuda
def test_pt2_exported_for_cuda_runs_on_cpu_without_cuda(cpu_export, tmp_path):
    """The .pt2 holds CPU weights whatever its device: where CUDA is absent it runs on CPU, with
    the scores of the CPU export; asking for CUDA explicitly is refused in one line."""
    path = copy_with_device(cpu_export, tmp_path, "cuda")
    with pytest.warns(UserWarning, match="CUDA is not available here: it runs on CPU"):
        predictor = ExportedPredictor(path)
    assert predictor.device == "cpu"
    expected = ExportedPredictor(cpu_export)(image_bgr())["sem_seg"]
    torch.testing.assert_close(predictor(image_bgr())["sem_seg"], expected)
    with pytest.raises(ValueError, match="CUDA is not available here: run it on device 'cpu'"):
        ExportedPredictor(path, device="cuda")


@no_cuda
def test_pt2_with_cuda_weights_is_refused_in_one_line(cpu_export, tmp_path):
    """A program saved by torch.export.save with its weights on a GPU cannot be loaded without
    CUDA (torch.export.load has no map_location): one line saying to export on CPU."""
    path = str(tmp_path / "cuda_weights.pt2")
    with zipfile.ZipFile(cpu_export) as src, zipfile.ZipFile(path, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename.endswith("_config.json"):
                data = data.replace(b'"type": "cpu"', b'"type": "cuda"')
            dst.writestr(item, data)
    with pytest.raises(ValueError, match="export it again with --device cpu") as error:
        load_graph(path, "pt2", "cpu")
    assert "\n" not in str(error.value)


@no_cuda
def test_devices_each_format_can_run_on():
    assert resolve_device("onnx", "cuda") == "cpu"  # onnxruntime on CPU, whatever the trace
    assert resolve_device("pt2", "cpu") == "cpu"
    assert resolve_device("aoti", "cpu") == "cpu"
    with pytest.raises(ValueError, match="onnxruntime on CPU"):
        resolve_device("onnx", "cpu", "cuda")
    with pytest.raises(ValueError, match="compiled for cuda .* export it again with --device cpu"):
        resolve_device("aoti", "cuda")
    with pytest.raises(ValueError, match="compiled for cpu, it runs only there"):
        resolve_device("aoti", "cpu", "cuda")


class AcceleratorTensor(torch.Tensor):
    """Stands for scores left on an accelerator: ``numpy()`` fails until ``cpu()`` is called."""

    def numpy(self, *args, **kwargs):
        raise AssertionError("numpy() of a tensor that is not on the CPU")

    def cpu(self, *args, **kwargs):
        return torch.Tensor.cpu(self).as_subclass(torch.Tensor)


def test_runner_moves_inputs_to_the_device_and_scores_to_cpu(monkeypatch):
    """The graph gets its input on the device it runs on ("meta" stands for an accelerator
    here) and the scores come back through ``.cpu()``."""
    seen = []

    def graph(image):
        seen.append(image.device)
        return (torch.zeros(1, 5, SIZE, SIZE).as_subclass(AcceleratorTensor),)

    monkeypatch.setattr(runner, "_load_program", lambda path, device: graph)
    run = load_graph("model.pt2", "pt2", "meta")
    out = run(np.zeros((1, 3, SIZE, SIZE), np.float32))
    assert run.device == "meta" and seen == [torch.device("meta")]
    assert isinstance(out, np.ndarray) and out.shape == (1, 5, SIZE, SIZE)
