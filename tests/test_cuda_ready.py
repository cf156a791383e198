"""What the GPU path would get wrong, checked on the CPU: the CUDA queries are patched where a
decision depends on the GPU (pointrend_sem/capabilities.py, inference/precision.py)."""

import os

import numpy as np
import pytest
import torch
from conftest import child_env, clear_precision_caches, load_config
from detectron2.evaluation import inference_context
from detectron2.modeling import build_model

from pointrend_sem import capabilities
from pointrend_sem.errors import UserValueError
from pointrend_sem.evaluation.sem_seg import predicted_classes
from pointrend_sem.inference import build_inference_model, builder, precision


@pytest.fixture
def gpu(monkeypatch):
    """Makes torch answer as a host with one CUDA GPU of the given compute capability."""

    def simulate(capability):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *args: capability)
        clear_precision_caches()

    yield simulate
    clear_precision_caches()


@pytest.mark.parametrize(
    "capability, bf16", [((7, 0), False), ((7, 5), False), ((8, 0), True), ((9, 0), True)]
)
def test_bf16_and_auto_on_cuda_follow_the_compute_capability(gpu, capability, bf16):
    """T4 (7.5) and V100 (7.0) have no bf16 units: torch.cuda.is_bf16_supported() says yes
    there (emulation), so auto would pick a slow bf16; the compute capability decides."""
    gpu(capability)
    assert capabilities.precision_support(torch.bfloat16, "cuda").runs is bf16
    assert precision.resolve_precision("auto", "cuda") is (torch.bfloat16 if bf16 else None)
    assert precision.resolve_precision("fp16", "cuda") is torch.float16
    if bf16:
        assert precision.resolve_precision("bf16", "cuda") is torch.bfloat16
        assert precision.resolve_precision("tf32", "cuda") is None
    else:
        with pytest.raises(UserValueError, match="compute capability below 8.0"):
            precision.resolve_precision("bf16", "cuda")
        with pytest.raises(UserValueError, match="TEST.PRECISION tf32 is a mode of CUDA GPUs"):
            precision.resolve_precision("tf32", "cuda")


def test_tf32_is_refused_on_a_cpu_in_one_line():
    cfg = load_config("demo_synthetic.yaml", ["TEST.PRECISION", "tf32"])
    with pytest.raises(UserValueError) as error:
        build_inference_model(build_model(cfg), cfg)
    assert "use TEST.PRECISION fp32" in str(error.value) and "\n" not in str(error.value)


BACKENDS = (torch.backends.cudnn.conv, torch.backends.cudnn.rnn, torch.backends.cuda.matmul)


@pytest.mark.parametrize("name, mode", [("fp32", "ieee"), ("bf16", "ieee"), ("tf32", "tf32")])
def test_fp32_on_cuda_is_ieee_unless_tf32_is_asked_for(name, mode):
    """cuDNN convolutions default to TF32 on Ampere+: inside predict, fp32 is IEEE fp32."""
    before = [backend.fp32_precision for backend in BACKENDS]
    with precision.fp32_math(name, "cuda"):
        assert [backend.fp32_precision for backend in BACKENDS] == [mode] * 3
    assert [backend.fp32_precision for backend in BACKENDS] == before
    with precision.fp32_math(name, "cpu"):
        assert [backend.fp32_precision for backend in BACKENDS] == before


def test_inference_runs_inside_the_fp32_mode_of_its_precision(monkeypatch):
    seen = []
    real = builder.fp32_math

    def recording(name, device):
        seen.append((name, torch.device(device).type))
        return real(name, device)

    monkeypatch.setattr(builder, "fp32_math", recording)
    model = build_model(load_config()).eval()
    fast = build_inference_model(model, load_config())
    image = torch.randint(0, 256, (3, 32, 48), dtype=torch.uint8)
    fast.predict([image])
    fast([{"image": image}])
    assert seen == [("fp32", "cpu")] * 2


def test_an_evaluation_during_training_leaves_the_model_as_it_was():
    """Evaluation runs a separate inference module (rebuilt at each evaluation): the training
    model keeps its mode, gains no cached copies (on a GPU they would hold memory for the rest
    of the run), and its weights stay trainable."""
    model = build_model(load_config("demo_synthetic.yaml", ["MODEL.FOLD_NORMS", True])).train()
    attributes = {id(m): set(vars(m)) for m in model.modules()}
    image = torch.randint(0, 256, (3, 32, 48), dtype=torch.uint8)
    fast = build_inference_model(model, load_config())
    with inference_context(fast):  # as detectron2's inference_on_dataset
        fast([{"image": image}])
    assert model.training and all(p.requires_grad for p in model.parameters())
    assert {id(m): set(vars(m)) for m in model.modules()} == attributes


def test_evaluators_share_one_class_map_per_output():
    scores = torch.randn(4, 5, 6)
    output = {"sem_seg": scores, "coarse_sem_seg": -scores}
    first = predicted_classes(output)
    assert predicted_classes(output) is first  # computed and copied to the CPU once
    np.testing.assert_array_equal(first, scores.argmax(0).numpy())
    np.testing.assert_array_equal(
        predicted_classes(output, "coarse_sem_seg"), (-scores).argmax(0).numpy()
    )


def test_test_processes_and_their_children_see_no_gpu():
    """Without POINTREND_SEM_TEST_CUDA=1 a command that a test starts runs on the CPU, also on
    a GPU host."""
    if os.environ.get("POINTREND_SEM_TEST_CUDA") == "1":
        pytest.skip("GPUs are visible on purpose (POINTREND_SEM_TEST_CUDA=1)")
    assert os.environ["CUDA_VISIBLE_DEVICES"] == ""
    assert child_env()["CUDA_VISIBLE_DEVICES"] == ""
    assert not torch.cuda.is_available()


def test_device_fallback_is_decided_in_one_place(gpu, monkeypatch):
    assert capabilities.runnable_device("cpu") == "cpu"
    assert capabilities.device_available("cpu")
    gpu((8, 0))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert capabilities.runnable_device("cuda") == "cuda"
    assert capabilities.device_available("cuda:0") and not capabilities.device_available("cuda:1")
    assert capabilities.runnable_device("cuda:1") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert capabilities.runnable_device("cuda") == "cpu"


def test_evaluation_runs_an_inference_module_of_the_current_weights(monkeypatch):
    """Trainer.test (``--eval-only`` and each evaluation during training) evaluates an inference
    module built at that moment from the model's weights, not the training model."""
    from detectron2.engine import defaults

    from pointrend_sem.engine import Trainer
    from pointrend_sem.inference import InferenceModel

    evaluated = []

    def record(model, loader, evaluator):
        evaluated.append(model)
        return {"sem_seg": {"mIoU": 1.0}}

    monkeypatch.setattr(defaults, "inference_on_dataset", record)
    monkeypatch.setattr(Trainer, "build_test_loader", classmethod(lambda cls, cfg, name: []))
    monkeypatch.setattr(Trainer, "build_evaluator", classmethod(lambda cls, *args: None))
    cfg = load_config()
    model = build_model(cfg).train()
    Trainer.test(cfg, model)
    with torch.no_grad():
        model.sem_seg_head.point_head.predictor.bias.add_(1.0)
    Trainer.test(cfg, model)
    first, second = evaluated
    assert isinstance(first, InferenceModel) and isinstance(second, InferenceModel)
    assert model.training and first.model is not model
    bias = model.sem_seg_head.point_head.predictor.bias
    assert torch.equal(second.model.sem_seg_head.point_head.predictor.bias, bias)
    assert not torch.equal(first.model.sem_seg_head.point_head.predictor.bias, bias)
