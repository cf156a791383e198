"""Export of the whole inference (``pointrend_sem.export``, ``tools/export_model.py``): every
format reproduces eager PyTorch, the runner needs no training stack, unsupported options are
refused.

ONNX and torch.export's .pt2 are tested at two sizes (one odd) of the demo config and of the
R-50 mmsegmentation recipe. AOTInductor generates and compiles C++ for 40 s to 2 min a model on
2 cores, so every run tests it at the odd size of the demo config, and
POINTREND_SEM_TEST_AOTI=1 at all four.
"""

import json
import os
import sys

import cv2
import numpy as np
import pytest
import torch
from conftest import REPO_ROOT, load_config, run_command
from detectron2.modeling import build_model

from pointrend_sem.capabilities import cpp_compiler
from pointrend_sem.errors import UserValueError
from pointrend_sem.export.module import (
    ExportableSegmentor,
    UnsupportedExportOption,
    agreement,
    check_exportable,
    export_model,
    random_image,
)
from pointrend_sem.export.runner import ExportedPredictor, load_graph
from pointrend_sem.inference import build_inference_model, builder

CONFIGS = {
    "demo": ("demo_synthetic.yaml", []),
    # the mmsegmentation recipe with BN instead of SyncBN (one process), few points
    "r50": (
        "cityscapes_r50.yaml",
        [
            "MODEL.RESNETS.NORM", "BN",
            "MODEL.SEM_SEG_HEAD.NORM", "BN",
            "MODEL.POINTREND_SEM.SUBDIVISION_NUM_POINTS", 512,
        ],
    ),
}  # fmt: skip
SIZES = [(64, 96), (61, 83)]  # the second is padded to the backbone's size divisibility
# AOTInductor in every run: the demo config at the odd size; this set to 1: all of CONFIGS x SIZES
ALL_AOTI_ENV = "POINTREND_SEM_TEST_AOTI"
MIN_SAME_CLASS, MAX_REL_DIFF = 0.9999, 1e-4


def randomize_norms_(model: torch.nn.Module, seed: int = 0) -> None:
    """Random running statistics and affine parameters in every batch norm, as a trained model
    has (so that folding them is tested)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                n = module.num_features
                module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
                module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(n, generator=generator) * 0.1)


@pytest.fixture(scope="module")
def models():
    built = {}
    for name, (config, opts) in CONFIGS.items():
        cfg = load_config(config, opts)
        torch.manual_seed(0)
        model = build_model(cfg).eval()
        randomize_norms_(model)
        # what export traces: the inference module, without oneDNN's eager-only fusion
        built[name] = (cfg, build_inference_model(model, cfg, fuse_convs=False), model)
    return built


@pytest.fixture(scope="module")
def exports(tmp_path_factory, models):
    """Exported files, written once: ``exports(config, (H, W), fmt) -> path``."""
    folder = tmp_path_factory.mktemp("exports")
    cache = {}

    def get(name, size, fmt):
        key = (name, size, fmt)
        if key not in cache:
            cfg, _, model = models[name]
            suffix = ".pt2" if fmt == "aoti" else f".{fmt}"
            path = str(folder / f"{name}_{size[0]}x{size[1]}_{fmt}{suffix}")
            export_model(cfg, model, fmt, *size, path)
            cache[key] = path
        return cache[key]

    return get


def eager_scores(model, image):
    """The scores of the inference module ``model`` on a (1, 3, H, W) image."""
    return model.predict([image[0]])[0]["sem_seg"][None]


def assert_agrees(expected, got):
    result = agreement(expected, torch.as_tensor(got))
    assert result["same_class"] >= MIN_SAME_CLASS, result
    assert result["max_rel_diff"] <= MAX_REL_DIFF, result


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_exportable_module_is_the_seam(models, name, size):
    """What is traced is the inference module's predict, whose classes are the plain model's."""
    _, inference_model, model = models[name]
    image = random_image(*size, seed=1)
    with torch.no_grad():
        got = ExportableSegmentor(inference_model, *size)(image)
        plain = model.predict([image[0]])[0]["sem_seg"][None]
    assert got.shape == (1, 5 if name == "demo" else 19, *size)
    assert_agrees(eager_scores(inference_model, image), got)
    assert agreement(plain, got)["same_class"] >= 0.999


@pytest.mark.parametrize("fmt", ["onnx", "pt2"])
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_exported_file_reproduces_pytorch(models, exports, name, size, fmt):
    _, model, _ = models[name]
    path = exports(name, size, fmt)
    run_graph = load_graph(path, fmt)
    for seed in (1, 2):
        image = random_image(*size, seed=seed)
        assert_agrees(eager_scores(model, image), run_graph(image.numpy()))


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_aoti_package_reproduces_pytorch(models, exports, name, size):
    if (name, size) != ("demo", SIZES[1]) and os.environ.get(ALL_AOTI_ENV) != "1":
        pytest.skip(f"AOTInductor compiles for up to 2 min a model; {ALL_AOTI_ENV}=1 runs all")
    if cpp_compiler() is None:  # what a user gets then: test_capabilities.py, the one line
        pytest.skip("AOTInductor needs a C++ compiler ($CXX or g++), and none is on PATH")
    _, model, _ = models[name]
    run_graph = load_graph(exports(name, size, "aoti"), "aoti")
    for seed in (1, 2):
        image = random_image(*size, seed=seed)
        assert_agrees(eager_scores(model, image), run_graph(image.numpy()))


def test_sidecar_describes_the_graph(models, exports):
    cfg, _, _ = models["demo"]
    path = exports("demo", SIZES[1], "pt2")
    with open(path + ".json") as f:
        info = json.load(f)
    assert info["format"] == "pt2"
    assert (info["height"], info["width"]) == SIZES[1]
    assert info["input_format"] == cfg.INPUT.FORMAT
    assert info["num_outputs"] == 5
    assert info["resize_backend"] == cfg.INPUT.RESIZE_BACKEND
    assert info["precision"] == "fp32"


def test_reduced_precision_is_exported_as_it_runs_or_refused_in_one_line(
    models, tmp_path, monkeypatch
):
    """TEST.PRECISION bf16: refused in one line for ONNX (and where the CPU cannot run it);
    forced on any CPU, a .pt2 export runs the backbone in bf16 and says so in its sidecar."""
    cfg, _, model = models["demo"]
    cfg = cfg.clone()
    cfg.merge_from_list(["TEST.PRECISION", "bf16"])
    size, path = SIZES[0], str(tmp_path / "bf16.pt2")
    try:
        build_inference_model(model, cfg)
    except UserValueError as error:  # this CPU refuses bf16: so does export, in one line
        with pytest.raises(UserValueError, match="TEST.PRECISION bf16 cannot run"):
            export_model(cfg, model, "pt2", *size, path)
        assert "\n" not in str(error)
    monkeypatch.setattr(builder, "resolve_precision", lambda name, device: torch.bfloat16)
    with pytest.raises(UnsupportedExportOption, match="cannot be exported to ONNX") as error:
        export_model(cfg, model, "onnx", *size, str(tmp_path / "bf16.onnx"))
    assert "\n" not in str(error.value)
    module = export_model(cfg, model, "pt2", *size, path)
    with open(path + ".json") as f:
        assert json.load(f)["precision"] == "bf16"
    backbone = module.inference_model.model.backbone
    assert {p.dtype for p in backbone.parameters()} == {torch.bfloat16}
    image = random_image(*size, seed=1)
    got = load_graph(path, "pt2")(image.numpy())
    result = agreement(eager_scores(module.inference_model, image), torch.as_tensor(got))
    assert result["same_class"] >= 0.999, result


@pytest.mark.parametrize("fmt", ["onnx", "pt2"])
def test_runner_is_the_predictor_at_the_export_size(models, exports, tmp_path, fmt):
    """An image that the test resize leaves at the export size gets the predictor's scores; one
    of another size gets scores at its own size."""
    from pointrend_sem.predictor import SemSegPredictor

    cfg, _, model = models["demo"]
    weights = str(tmp_path / "model.pth")
    torch.save({"model": model.state_dict()}, weights)
    cfg = cfg.clone()
    # the test resize leaves a 64 x 96 image as it is
    cfg.merge_from_list(
        ["MODEL.WEIGHTS", weights, "INPUT.MIN_SIZE_TEST", 64, "INPUT.MAX_SIZE_TEST", 96]
    )
    image_bgr = np.random.RandomState(0).randint(0, 256, (64, 96, 3), dtype=np.uint8)
    runner = ExportedPredictor(exports("demo", SIZES[0], fmt))
    assert_agrees(
        SemSegPredictor(cfg)(image_bgr)["sem_seg"][None], runner(image_bgr)["sem_seg"][None]
    )
    assert runner(image_bgr[:50, :70])["sem_seg"].shape == (5, 50, 70)


def test_runner_needs_no_training_stack(exports):
    """runner.py runs as a file of its own (no detectron2, no pointrend_sem loaded), and from
    the package where detectron2 is not installed."""
    path = exports("demo", SIZES[0], "onnx")
    runner = os.path.join(REPO_ROOT, "pointrend_sem", "export", "runner.py")
    code = (
        "import importlib, importlib.util, sys\n"
        "import numpy as np\n"
        f"spec = importlib.util.spec_from_file_location('runner', {runner!r})\n"
        "runner = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(runner)\n"
        f"out = runner.ExportedPredictor({path!r})(np.zeros((40, 50, 3), np.uint8))\n"
        "assert out['sem_seg'].shape == (5, 40, 50), out['sem_seg'].shape\n"
        "loaded = [m for m in sys.modules if m.startswith(('detectron2', 'pointrend_sem'))]\n"
        "assert not loaded, loaded\n"
        "sys.modules['detectron2'] = None  # as if it were not installed\n"
        "from pointrend_sem.export.runner import ExportedPredictor\n"
        f"out = ExportedPredictor({path!r})(np.zeros((40, 50, 3), np.uint8))\n"
        "assert out['sem_seg'].shape == (5, 40, 50), out['sem_seg'].shape\n"
        "import pointrend_sem\n"
        "try:\n"
        "    pointrend_sem.add_pointrend_sem_config\n"
        "except ImportError as e:\n"
        "    assert 'needs detectron2' in str(e), e\n"
        "else:\n"
        "    raise AssertionError('no ImportError')\n"
    )
    proc = run_command([sys.executable, "-c", code])
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.parametrize(
    "opts, key",
    [
        (["TEST.AUG.ENABLED", True], "TEST.AUG.ENABLED"),
        (["TEST.SLIDING_WINDOW.ENABLED", True], "TEST.SLIDING_WINDOW.ENABLED"),
    ],
)
def test_unsupported_options_are_refused(opts, key):
    with pytest.raises(UnsupportedExportOption, match=key):
        check_exportable(load_config("demo_synthetic.yaml", opts))


def test_tool_checks_the_file_and_refuses_in_one_line(tmp_path, capsys):
    sys.path.insert(0, os.path.join(REPO_ROOT, "tools"))
    try:
        import export_model as tool
    finally:
        sys.path.pop(0)
    from pointrend_sem import main_with_one_line_errors

    config = os.path.join(REPO_ROOT, "configs", "demo_synthetic.yaml")
    output = str(tmp_path / "demo.pt2")
    argv = ["--config-file", config, "--format", "pt2", "--height", "61", "--width", "83"]
    for name, size in [("a.png", (40, 50)), ("b.png", (70, 90))]:
        rng = np.random.default_rng(len(name) + size[0])
        cv2.imwrite(str(tmp_path / name), rng.integers(0, 256, (*size, 3), dtype=np.uint8))
    images = ["--check-images", str(tmp_path / "*.png")]
    result = tool.main(argv + ["--output", output, "--runs", "1", *images, "MODEL.DEVICE", "cpu"])
    assert result["same_class"] >= MIN_SAME_CLASS and os.path.isfile(output + ".json")
    assert result["same_class_on_images"] >= 0.999
    out = capsys.readouterr().out
    assert "latency" in out and "check on 2 images" in out
    with pytest.raises(FileNotFoundError, match="--check-images"):
        tool.main(argv + ["--output", output, "--check-images", str(tmp_path / "none*.jpg")])
    with pytest.raises(SystemExit):
        main_with_one_line_errors(tool.main)(
            argv + ["--output", output, "TEST.SLIDING_WINDOW.ENABLED", "True"]
        )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) >= 1 and err[-1].startswith("error: TEST.SLIDING_WINDOW.ENABLED")
