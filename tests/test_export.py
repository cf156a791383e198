"""Export of the whole inference (``pointrend_sem.export``, ``tools/export_model.py``): every
format reproduces eager PyTorch, the runner needs no training stack, unsupported options are
refused.

ONNX and torch.export's .pt2 are tested at two sizes (one odd) of the demo config, and at the
odd one of the R-50 mmsegmentation recipe. AOTInductor generates and compiles C++ for 40 s to
2 min a model on 2 cores (85 s of the suite's 5-minute budget at one size), so it is tested when
POINTREND_SEM_TEST_AOTI=1 (both configs at both sizes), not in every run.
"""

import json
import os
import shutil
import sys

import cv2
import numpy as np
import pytest
import torch
from conftest import ONEDNN_ENV, REPO_ROOT, load_config, run_command, run_script
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
from pointrend_sem.export.quantize import in_quantized_scope, node_scope, write_int8
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
# exported to ONNX and .pt2: the demo at both sizes, the R-50 recipe at the odd one (where the
# padding is)
EXPORTED = [("demo", SIZES[0]), ("demo", SIZES[1]), ("r50", SIZES[1])]
# AOTInductor is tested with this set to 1: all of CONFIGS x SIZES
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
@pytest.mark.parametrize("name, size", EXPORTED, ids=[f"{n}-{h}x{w}" for n, (h, w) in EXPORTED])
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
    if os.environ.get(ALL_AOTI_ENV) != "1":
        pytest.skip(f"AOTInductor compiles for up to 2 min a model; {ALL_AOTI_ENV}=1 runs it")
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


# the first lines of a child Python in which torch (and anything under it) cannot be imported, as
# on a machine where PyTorch is not installed
NO_TORCH = """\
import importlib.abc, sys


class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
        return None


sys.meta_path.insert(0, NoTorch())
assert "torch" not in sys.modules
"""


def test_runner_needs_no_training_stack(exports, int8_export, tmp_path):
    """runner.py runs .onnx files, fp32 and int8, where torch cannot be imported: as a file of
    its own (no detectron2, no pointrend_sem loaded), and from the package (whose other parts
    then say that they need PyTorch), with the scores it gives where torch is installed."""
    paths = [exports("demo", SIZES[0], "onnx"), int8_export["path"]]
    image = np.random.RandomState(3).randint(0, 256, (40, 50, 3), dtype=np.uint8)
    for index, path in enumerate(paths):
        np.save(tmp_path / f"expected_{index}.npy", ExportedPredictor(path)(image)["sem_seg"])
    np.save(tmp_path / "image.npy", image)
    runner = os.path.join(REPO_ROOT, "pointrend_sem", "export", "runner.py")
    code = NO_TORCH + (
        "import importlib, importlib.util, os\n"
        "import numpy as np\n"
        "try:\n"
        "    import torch\n"
        "except ModuleNotFoundError:\n"
        "    pass\n"
        "else:\n"
        "    raise AssertionError('torch imported')\n"
        f"folder, paths = {str(tmp_path)!r}, {paths!r}\n"
        "image = np.load(os.path.join(folder, 'image.npy'))\n"
        f"spec = importlib.util.spec_from_file_location('runner', {runner!r})\n"
        "runner = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(runner)\n"
        "for i, path in enumerate(paths):\n"
        "    out = runner.ExportedPredictor(path)(image)['sem_seg']\n"
        "    expected = np.load(os.path.join(folder, f'expected_{i}.npy'))\n"
        "    assert out.shape == (5, 40, 50) and np.array_equal(out, expected), path\n"
        "loaded = [m for m in sys.modules if m.startswith(('detectron2', 'pointrend_sem'))]\n"
        "assert not loaded, loaded\n"
        "from pointrend_sem.export.runner import ExportedPredictor\n"
        "out = ExportedPredictor(paths[1])(image)['sem_seg']\n"
        "assert np.array_equal(out, np.load(os.path.join(folder, 'expected_1.npy')))\n"
        "import pointrend_sem\n"
        "try:\n"
        "    pointrend_sem.add_pointrend_sem_config\n"
        "except ImportError as e:\n"
        "    assert 'needs PyTorch and detectron2, and torch is not installed' in str(e), e\n"
        "else:\n"
        "    raise AssertionError('no ImportError')\n"
        "assert 'torch' not in sys.modules\n"
    )
    env = dict(os.environ)
    env.pop(ONEDNN_ENV, None)  # its start-up module imports torch: this child has none
    proc = run_command([sys.executable, "-c", code], env=env)
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


def write_images(folder, count: int, size, seed: int):
    """``count`` generated BGR PNGs of ``size``: filled shapes of random colours on a gradient
    with noise, something like photos for a quantizer's calibration; returns their paths."""
    rng = np.random.default_rng(seed)
    height, width = size
    paths = []
    for index in range(count):
        ramp = np.linspace(0, 1, width)[None, :, None] * rng.integers(0, 256, 3)
        image = (ramp + rng.normal(0, 12, (height, width, 3))).clip(0, 255).astype(np.uint8)
        for _ in range(4):
            x, y = int(rng.integers(0, width)), int(rng.integers(0, height))
            color = [int(c) for c in rng.integers(0, 256, 3)]
            radius = int(rng.integers(height // 8, height // 3))
            cv2.circle(image, (x, y), radius, color, -1)
        path = str(folder / f"image_{seed}_{index}.png")
        cv2.imwrite(path, image)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def int8_export(exports, tmp_path_factory):
    """The demo model's ONNX at SIZES[0] quantized to int8 on 3 generated images (as
    ``--quantize int8`` does): {"path", "fp32", "calibration", "info" (its sidecar)}."""
    folder = tmp_path_factory.mktemp("int8")
    fp32 = exports("demo", SIZES[0], "onnx")
    calibration = write_images(folder, 3, SIZES[0], seed=0)
    path = str(folder / "demo_int8.onnx")
    info = write_int8(fp32, path, calibration)
    return {"path": path, "fp32": fp32, "calibration": calibration, "info": info}


def test_int8_quantizes_backbone_and_coarse_head_into_integer_kernels(int8_export):
    """Every convolution of the backbone (ResNet, FPN) and of the coarse head takes int8
    weights in 7 bits (no u8 x s8 saturation on AVX2) and runs as onnxruntime's QLinearConv;
    the point head stays fp32; the sidecar records the quantization and the calibration."""
    import onnx
    import onnxruntime

    model = onnx.load(int8_export["path"])
    producer = {out: node for node in model.graph.node for out in node.output}
    weights = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    quantized, fp32 = [], []
    for node in (n for n in model.graph.node if n.op_type == "Conv"):
        weight = producer.get(node.input[1])
        if weight is not None and weight.op_type == "DequantizeLinear":
            quantized.append(node_scope(node))
            values = weights[weight.input[0]]
            assert values.dtype == np.int8 and np.abs(values.astype(int)).max() <= 64
        else:
            fp32.append(node_scope(node))
    assert quantized and all(in_quantized_scope(scope) for scope in quantized)
    assert any(".coarse_sem_seg_head." in scope for scope in quantized)
    assert fp32 and all(".point_head." in scope for scope in fp32)

    options = onnxruntime.SessionOptions()
    optimized = os.path.join(os.path.dirname(int8_export["path"]), "optimized.onnx")
    options.optimized_model_filepath = optimized
    onnxruntime.InferenceSession(int8_export["path"], options, providers=["CPUExecutionProvider"])
    op_types = [n.op_type for n in onnx.load(optimized).graph.node]
    assert op_types.count("QLinearConv") == len(quantized)

    info = int8_export["info"]
    assert info["precision"] == "int8" and info["format"] == "onnx"
    assert info["quantization"]["format"] == "QDQ" and info["quantization"]["reduce_range"]
    assert info["quantization"]["quantized_nodes"] > len(quantized)  # adds, resizes, ...
    assert info["calibration"] == {"images": 3, "files": int8_export["calibration"]}
    with open(int8_export["path"] + ".json") as f:
        assert json.load(f) == info


def test_tool_quantizes_checks_and_refuses_in_one_line(
    models, int8_export, tmp_path, monkeypatch, capsys
):
    """--quantize int8: the share of pixels with fp32 PyTorch's class that the tool reports on
    the check images is what the runner gives on them; below --min-same-class the command ends
    in one line and OUTPUT is not written. (The fp32 export is the module's, and the refused
    int8 graph the first run's: export_model and write_int8 are replaced by copies, both
    tested above.)"""
    sys.path.insert(0, os.path.join(REPO_ROOT, "tools"))
    try:
        import export_model as tool
    finally:
        sys.path.pop(0)
    from pointrend_sem import main_with_one_line_errors

    cfg, _, model = models["demo"]
    inference_model = build_inference_model(model, cfg)  # as the tool builds it
    weights = str(tmp_path / "model.pth")
    torch.save({"model": model.state_dict()}, weights)

    def copy_export(cfg, model, fmt, height, width, path):
        for suffix in ("", ".json"):
            shutil.copy(int8_export["fp32"] + suffix, path + suffix)

    monkeypatch.setattr(tool, "export_model", copy_export)
    check = write_images(tmp_path, 2, (50, 70), seed=1)  # another size: resized by the runner
    output = str(tmp_path / "out" / "demo_int8.onnx")
    argv = [
        "--config-file", os.path.join(REPO_ROOT, "configs", "demo_synthetic.yaml"),
        "--format", "onnx", "--height", str(SIZES[0][0]), "--width", str(SIZES[0][1]),
        "--runs", "1", "--quantize", "int8",
        "--calibration-images", int8_export["calibration"][0],
        "--calibration-images", int8_export["calibration"][1],
        "--check-images", str(tmp_path / "image_1_*.png"),
    ]  # fmt: skip
    result = tool.main(
        argv + ["--output", output, "--min-same-class", "0.5", "MODEL.WEIGHTS", weights]
    )
    out = capsys.readouterr().out
    assert f"same class as fp32 PyTorch on {result['same_class_int8']:.4%}" in out
    assert sorted(os.listdir(os.path.dirname(output))) == ["demo_int8.onnx", "demo_int8.onnx.json"]
    with open(output + ".json") as f:
        assert json.load(f)["calibration"]["images"] == 2

    # the runner's classes against fp32 PyTorch, computed here
    runner = ExportedPredictor(output)
    same = total = 0
    for file in check:
        image = cv2.imread(file)
        got = runner(image)["sem_seg"].argmax(0)
        graph_input = torch.from_numpy(runner.model_input(image)[0])
        expected = inference_model.predict([graph_input], [image.shape[:2]])[0]["sem_seg"]
        same += int((got == expected.argmax(0).numpy()).sum())
        total += got.size
    assert same / total >= result["same_class_int8"] - 1e-9
    assert same / total >= 0.8  # random weights: near-ties everywhere; 99.9 % trained (docs)

    def copy_int8(fp32_path, int8_path, files):  # quantized as above: the check is under test
        for suffix in ("", ".json"):
            shutil.copy(output + suffix, int8_path + suffix)

    monkeypatch.setattr(tool, "write_int8", copy_int8)
    refused = str(tmp_path / "refused" / "demo_int8.onnx")
    with pytest.raises(SystemExit):
        main_with_one_line_errors(tool.main)(
            argv + ["--output", refused, "--min-same-class", "1", "MODEL.WEIGHTS", weights]
        )
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: The int8 graph gives fp32 PyTorch's class on"), err
    assert f"below --min-same-class 1: nothing was written to {refused}" in err[-1]
    assert os.listdir(os.path.dirname(refused)) == []  # nor the scratch folder
    with pytest.raises(UserValueError, match="--quantize int8 needs --calibration-images"):
        tool.main(argv[:-6] + ["--output", refused, "MODEL.WEIGHTS", weights])
    with pytest.raises(UserValueError, match="use --format onnx, not pt2"):
        tool.main([a if a != "onnx" else "pt2" for a in argv] + ["--output", refused])


def test_exported_file_is_evaluated_as_pytorch_is(models, exports, tmp_path):
    """train_net.py --eval-only --exported: the evaluators' mIoU and boundary IoU of the ONNX
    file on a dataset are PyTorch's (--eval-only) where the runner sees the images as the test
    resize leaves them."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from pointrend_sem.data.datasets.custom import register_sem_seg_folder
    from pointrend_sem.engine import Trainer
    from pointrend_sem.export.evaluation import evaluate_exported

    cfg, _, model = models["demo"]
    images, labels = tmp_path / "images", tmp_path / "labels"
    labels.mkdir()
    images.mkdir()
    for index, file in enumerate(write_images(images, 3, SIZES[0], seed=2)):
        rng = np.random.default_rng(index)
        label = np.zeros(SIZES[0], np.uint8)
        for value in range(1, 5):
            y, x = rng.integers(0, SIZES[0][0] - 20), rng.integers(0, SIZES[0][1] - 20)
            label[y : y + 20, x : x + 30] = value
        cv2.imwrite(str(labels / os.path.basename(file)), label)
    name = "export_eval_t"
    register_sem_seg_folder(name, str(images), str(labels), [f"c{i}" for i in range(5)])
    try:
        cfg = cfg.clone()
        cfg.merge_from_list([
            "DATASETS.TEST", (name,), "OUTPUT_DIR", str(tmp_path / "out"),
            "INPUT.MIN_SIZE_TEST", SIZES[0][0], "INPUT.MAX_SIZE_TEST", SIZES[0][1],
            "DATALOADER.NUM_WORKERS", 0,
        ])  # fmt: skip
        expected = Trainer.test(cfg, model)["sem_seg"]
        got = evaluate_exported(cfg, exports("demo", SIZES[0], "onnx"))["sem_seg"]
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    for key in ("mIoU", "mBoundaryIoU", "pACC"):
        assert got[key] == pytest.approx(expected[key], abs=0.05), key
    with pytest.raises(FileNotFoundError, match="--exported: .*none.onnx not found"):
        evaluate_exported(cfg, str(tmp_path / "none.onnx"))


def test_benchmark_times_exported_files_side_by_side(models, int8_export, tmp_path):
    """tools/benchmark.py --exported FP32 --exported INT8: one table with eager PyTorch, each
    file (and eager bf16 where the CPU has bf16 units, else why not), the same weights in all."""
    _, _, model = models["demo"]
    weights = str(tmp_path / "model.pth")
    torch.save({"model": model.state_dict()}, weights)
    out = tmp_path / "results.json"
    cmd = [
        sys.executable, "tools/benchmark.py", "--config-file", "configs/demo_synthetic.yaml",
        "--height", str(SIZES[0][0]), "--width", str(SIZES[0][1]), "--threads", "1",
        "--runs", "1", "--warmup", "0", "--weights", weights, "--json", str(out),
        "--exported", int8_export["fp32"], "--exported", int8_export["path"],
    ]  # fmt: skip
    proc = run_script(cmd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out) as f:
        results = json.load(f)
    rows = {row["contender"]: row for row in results["side_by_side"]}
    fp32 = f"{int8_export['fp32']} (onnx, fp32)"
    int8 = f"{int8_export['path']} (onnx, int8)"
    bf16 = [name for name in rows if "bf16" in name]
    assert list(rows) == ["ours, eager PyTorch (fp32)", *bf16, fp32, int8]
    assert bf16 or results["eager_bf16"].startswith("not timed: ")
    assert rows["ours, eager PyTorch (fp32)"]["time_vs_ours"] == 1
    assert rows[fp32]["same_class_as_ours"] >= 0.999  # the same weights
    assert rows[int8]["same_class_as_ours"] >= 0.8
    for row in rows.values():
        assert row["latency_min_ms"] <= row["latency_median_ms"] <= row["latency_max_ms"]
    assert "| contender" in proc.stdout and int8 in proc.stdout


def test_demo_draws_an_exported_file(int8_export, tmp_path):
    """demo/demo.py --exported takes the runner's (numpy) scores."""
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((30, 40, 3), np.uint8))
    cmd = [
        sys.executable, "demo/demo.py",
        "--config-file", os.path.join(REPO_ROOT, "configs", "demo_synthetic.yaml"),
        "--input", str(tmp_path / "a.png"), "--output", str(tmp_path / "out"),
        "--exported", int8_export["path"],
    ]  # fmt: skip
    proc = run_script(cmd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert cv2.imread(str(tmp_path / "out" / "a.png")).shape == (30, 40, 3)
