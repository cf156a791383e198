"""Run a model exported by ``tools/export_model.py`` without detectron2 or this package.

For an ``.onnx`` file (fp32 or int8) this file imports only numpy, OpenCV and onnxruntime (and
Pillow for ``INPUT.RESIZE_BACKEND`` "detectron2"): no PyTorch. The ``.pt2`` formats
(``torch.export``, AOTInductor) are PyTorch programs and import torch when loaded. It runs on
its own, e.g. copied next to the exported file, as well as ``pointrend_sem.export.runner``
(which imports without PyTorch or detectron2 too).

    from runner import ExportedPredictor
    predictor = ExportedPredictor("model.onnx")          # reads model.onnx.json
    scores = predictor(cv2.imread("image.png"))["sem_seg"]  # (C, H, W) numpy, at the image's size

Pre- and post-processing are those of :class:`pointrend_sem.predictor.SemSegPredictor` with
one difference, forced by the graph's fixed size: the BGR image is converted to the input format
and resized to the export size H x W itself (not to the config's keep-ratio test size), with the
interpolation of the config's test resize (``INPUT.RESIZE_BACKEND``: OpenCV's bilinear for
"opencv", Pillow's bilinear for "detectron2"), and the graph's (C, H, W) scores are resized back
to the image's size (bilinear with half-pixel centres, as ``TEST.OUTPUT_RESIZE`` resizes: OpenCV's
``INTER_LINEAR``, within 1e-4 of PyTorch's ``interpolate``). Export at the size the test
resize gives your images (e.g. 1024 x 2048 for Cityscapes) and the two agree up to rounding;
images of another aspect ratio are stretched to H x W.

The sidecar ``PATH.json`` written by the exporter holds what is needed: "format" ("onnx",
"pt2": a ``torch.export`` ExportedProgram, "aoti": an AOTInductor package), "input_format"
("RGB"/"BGR"), "height", "width", "num_outputs" (C), "resize_backend" and "device" ("cpu" or
"cuda": the device the graph was traced for; a sidecar without it means "cpu").

Devices (:func:`resolve_device`): an ``.onnx`` graph holds no device and runs with onnxruntime on
CPU. A ``.pt2`` ExportedProgram is saved with its weights on CPU whatever the device it was traced
for, so it loads anywhere; it runs on the sidecar's "device" (or the ``device`` asked for),
moved there by ``torch.export.passes.move_to_device_pass``, and on CPU where CUDA is not
available. An AOTInductor package is compiled code for the device it was exported for and runs
only there. Inputs are moved to the graph's device, scores come back on CPU.
"""

import json
import os
import warnings
import zipfile
from typing import Any, Callable, Dict, Optional

import cv2
import numpy as np

SIDECAR_SUFFIX = ".json"
# the most channels OpenCV's Python binding resizes at once
_CV_MAX_CHANNELS = 128


def read_sidecar(path: str) -> Dict[str, Any]:
    """The exporter's description of the exported file ``path`` (``PATH.json``).

    Raises:
        FileNotFoundError: no sidecar next to ``path``.
    """
    sidecar = path + SIDECAR_SUFFIX
    if not os.path.isfile(sidecar):
        raise FileNotFoundError(
            f"{sidecar} not found: an exported model is run with the JSON file "
            "tools/export_model.py writes next to it."
        )
    with open(sidecar) as f:
        return json.load(f)


def _device_type(device: str) -> str:
    """ "cuda" for "cuda:1", without PyTorch."""
    return str(device).split(":", 1)[0]


def resolve_device(
    fmt: str, traced: str = "cpu", device: Optional[str] = None, path: str = "the graph"
) -> str:
    """The device a graph of format ``fmt`` traced for ``traced`` (the sidecar's "device") runs
    on when ``device`` is asked for (None: ``traced``): "cpu" for "onnx" (onnxruntime on CPU,
    decided without PyTorch); ``device`` or ``traced`` for "pt2", CPU (with a warning) when that
    is CUDA and CUDA is not available; ``traced`` for "aoti" (compiled code for that device).

    Raises:
        ValueError: a device the graph cannot run on, e.g. ``device="cuda"`` without CUDA, an
            AOTInductor package of another device, or "onnx" on another device than CPU.
    """
    if fmt == "onnx":
        if device is not None and _device_type(device) != "cpu":
            raise ValueError(
                f"{path} is run with onnxruntime on CPU here; ask for device 'cpu', not {device!r}."
            )
        return "cpu"
    import torch

    traced_type = torch.device(traced).type
    wanted = torch.device(device if device is not None else traced)
    if fmt == "aoti" and wanted.type != traced_type:
        raise ValueError(
            f"{path} is an AOTInductor package compiled for {traced_type}, it runs only there: "
            f"ask for device {traced_type!r}, or export it again with --device {wanted.type}."
        )
    if wanted.type == "cuda" and not torch.cuda.is_available():
        if fmt == "aoti":
            raise ValueError(
                f"{path} is an AOTInductor package compiled for cuda and CUDA is not available "
                "here: export it again with --device cpu."
            )
        if device is not None:
            raise ValueError(
                f"device {device!r} asked for {path}, but CUDA is not available here: run it "
                "on device 'cpu'."
            )
        warnings.warn(
            f"{path} was exported for {traced_type} and CUDA is not available here: it runs on "
            "CPU.",
            stacklevel=3,
        )
        return "cpu"
    return str(wanted)


def _traced_device(path: str) -> str:
    """The sidecar's "device" of ``path``; "cpu" when there is no sidecar or it has no "device"
    (files exported before it was recorded were traced on CPU or hold CUDA weights, see
    :func:`load_graph`)."""
    if not os.path.isfile(path + SIDECAR_SUFFIX):
        return "cpu"
    return str(read_sidecar(path).get("device", "cpu"))


def _holds_cuda_tensors(path: str) -> bool:
    """Whether the ``torch.export.save`` archive ``path`` records weights or constants on CUDA
    (read from its payload configs, without loading it)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any(
                b'"type": "cuda"' in archive.read(name)
                for name in archive.namelist()
                if name.endswith(("_weights_config.json", "_constants_config.json"))
            )
    except (OSError, zipfile.BadZipFile):
        return False  # torch.export.load says what is wrong


def _load_program(path: str, device: str) -> Callable[..., Any]:
    """``torch.export.load(path)``, moved to ``device``, as a callable module.

    Raises:
        ValueError: ``path`` holds CUDA weights and CUDA is not available (``torch.export.load``
            has no ``map_location``: it cannot load them).
    """
    import torch

    if not torch.cuda.is_available() and _holds_cuda_tensors(path):
        raise ValueError(
            f"{path} holds weights saved on a GPU, and torch.export.load needs CUDA to load "
            "them, which is not available here: export it again with --device cpu."
        )
    program = torch.export.load(path)
    if device != "cpu" or any(t.device.type != "cpu" for t in program.state_dict.values()):
        from torch.export.passes import move_to_device_pass

        program = move_to_device_pass(program, device)
    return program.module()


def onnx_session(path: str, threads: Optional[int] = None, **options: Any):
    """An onnxruntime CPU session of the ``.onnx`` file ``path`` (its default graph
    optimizations: a quantized QDQ graph runs with onnxruntime's integer kernels), with
    ``threads`` intra-op threads (None: onnxruntime's default, one per physical core) and
    ``options`` set on its ``SessionOptions`` (e.g. ``enable_profiling=True``)."""
    import onnxruntime

    session_options = onnxruntime.SessionOptions()
    if threads:
        session_options.intra_op_num_threads = int(threads)
    for name, value in options.items():
        setattr(session_options, name, value)
    return onnxruntime.InferenceSession(path, session_options, providers=["CPUExecutionProvider"])


def load_graph(
    path: str, fmt: str, device: Optional[str] = None, threads: Optional[int] = None
) -> Callable[[np.ndarray], np.ndarray]:
    """A function (1, 3, H, W) float32 array -> (1, C, H, W) float32 scores (on CPU) running the
    exported file ``path`` of format ``fmt`` ("onnx" with onnxruntime on CPU, "pt2" with
    ``torch.export.load``, "aoti" with ``torch._inductor.aoti_load_package``) on ``device``
    (None: the device of the sidecar ``PATH.json``, else CPU), as :func:`resolve_device`
    settles it; the function's ``device`` attribute says which. ``threads``: onnxruntime's
    intra-op threads for "onnx" (None: its default); PyTorch's formats use torch's setting.

    Raises:
        ValueError: an unknown format, or a device the graph cannot run on.
    """
    if fmt not in ("onnx", "pt2", "aoti"):
        raise ValueError(f"Unknown exported format {fmt!r} in {path}{SIDECAR_SUFFIX}.")
    target = resolve_device(fmt, _traced_device(path), device, path)
    if fmt == "onnx":
        session = onnx_session(path, threads)
        name = session.get_inputs()[0].name

        def run_onnx(image: np.ndarray) -> np.ndarray:
            return session.run(None, {name: image})[0]

        run_onnx.device = target
        return run_onnx
    import torch

    if fmt == "pt2":
        module = _load_program(path, target)
    else:
        index = torch.device(target).index
        module = torch._inductor.aoti_load_package(
            path, device_index=-1 if index is None else index
        )

    def run(image: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out = module(torch.from_numpy(image).to(target))
        if isinstance(out, (list, tuple)):
            out = out[0]
        return out.cpu().numpy()

    run.device = target
    return run


def resize_image(image: np.ndarray, height: int, width: int, backend: str) -> np.ndarray:
    """(h, w, 3) uint8 -> (height, width, 3) uint8, bilinear: OpenCV's for "opencv", Pillow's
    for "detectron2" (the interpolations of the config's test resize)."""
    if image.shape[:2] == (height, width):
        return image
    if backend == "detectron2":
        from PIL import Image

        return np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)


def resize_scores(scores: np.ndarray, height: int, width: int) -> np.ndarray:
    """(C, H, W) float32 scores -> (C, height, width), bilinear with half-pixel centres and no
    antialiasing (PyTorch's ``interpolate(..., "bilinear", align_corners=False)``, which
    ``TEST.OUTPUT_RESIZE`` runs), with OpenCV's ``INTER_LINEAR``."""
    if scores.shape[-2:] == (height, width):
        return scores
    planes = np.ascontiguousarray(scores.transpose(1, 2, 0))
    chunks = [
        cv2.resize(planes[:, :, i : i + _CV_MAX_CHANNELS], (width, height), cv2.INTER_LINEAR)
        for i in range(0, planes.shape[2], _CV_MAX_CHANNELS)
    ]
    resized = np.concatenate([c.reshape(height, width, -1) for c in chunks], axis=2)
    return np.ascontiguousarray(resized.transpose(2, 0, 1))


def graph_input(image_bgr: np.ndarray, info: Dict[str, Any]) -> np.ndarray:
    """(h, w, 3) uint8 BGR -> the (1, 3, H, W) float32 input of the graph that the sidecar
    ``info`` describes: in its input format, resized to its export size."""
    image = image_bgr[:, :, ::-1] if info["input_format"] == "RGB" else image_bgr
    height, width = int(info["height"]), int(info["width"])
    image = resize_image(np.ascontiguousarray(image), height, width, info["resize_backend"])
    return np.ascontiguousarray(image.astype(np.float32).transpose(2, 0, 1)[None])


class ExportedPredictor:
    """An exported model, one BGR image in, its scores at the image's size out, like
    :class:`pointrend_sem.predictor.SemSegPredictor` (as a numpy array: no PyTorch needed for
    ``.onnx`` files)."""

    def __init__(self, path: str, device: Optional[str] = None, threads: Optional[int] = None):
        """
        Args:
            path: an exported file with its sidecar ``PATH.json``.
            device: where the graph runs ("cpu", "cuda"); None: the sidecar's "device" (CPU for
                ``.onnx``, and for a ``.pt2`` where CUDA is not available), see
                :func:`resolve_device`.
            threads: onnxruntime's intra-op threads for ``.onnx`` (None: its default).
        """
        self.path = path
        self.info = read_sidecar(path)
        self.height, self.width = int(self.info["height"]), int(self.info["width"])
        self.input_format = self.info["input_format"]
        self.run_graph = load_graph(path, self.info["format"], device, threads)
        self.device: str = self.run_graph.device

    def model_input(self, image_bgr: np.ndarray) -> np.ndarray:
        """(h, w, 3) uint8 BGR -> the graph's (1, 3, H, W) float32 input (:func:`graph_input`)."""
        return graph_input(image_bgr, self.info)

    def __call__(self, image_bgr: np.ndarray) -> Dict[str, np.ndarray]:
        """
        Args:
            image_bgr: (h, w, 3) uint8 image in BGR order, as OpenCV reads it.

        Returns:
            "sem_seg": (C, h, w) float32 scores (logits) at the image's size, a numpy array.
        """
        scores = np.asarray(self.run_graph(self.model_input(image_bgr)), dtype=np.float32)[0]
        return {"sem_seg": resize_scores(scores, *image_bgr.shape[:2])}
