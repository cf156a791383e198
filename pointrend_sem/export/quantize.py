"""int8 static post-training quantization of an exported ONNX graph, calibrated on images.

:func:`quantize_int8` runs onnxruntime's ``quantize_static`` on an fp32 ``.onnx`` file written by
:func:`~pointrend_sem.export.module.export_model`:

* QDQ format (QuantizeLinear / DequantizeLinear pairs around the quantized nodes), which
  onnxruntime's graph optimizer turns into integer kernels (``QLinearConv``, ``QLinearAdd``, ...)
  when the session is created;
* what is quantized: the nodes the exporter traced inside the backbone (ResNet and FPN) and the
  coarse head, found by the module scope that ``torch.onnx.export`` records on each node
  (:data:`QUANTIZED_SCOPES`); the rest (normalization, the uncertainty, top-k and point sampling
  of each subdivision step, the point head, the final resize) stays fp32;
* unsigned 8-bit activations, signed 8-bit weights per output channel, with the weights'
  range reduced to 7 bits (:data:`SETTINGS`): on x86 CPUs without VNNI, onnxruntime's u8 x s8
  kernels add pairs of products in 16 bits (``vpmaddubsw``), which saturates with 8-bit weights
  (2 x 255 x 127 > 32767) and costs quality; with 7-bit weights it cannot saturate, on any x86
  CPU, at the kernels' full speed (u8 x u8 avoids it too, at a third of the speed:
  docs/deploy.md);
* calibration: the images through the runner's pre-processing
  (:func:`~pointrend_sem.export.runner.graph_input`: the input format, resized to the export
  size), the range of each quantized tensor being the minimum and maximum it takes on them
  (:func:`calibrate`).

This module needs onnx and onnxruntime, not PyTorch.
"""

import ast
import json
import logging
import os
import tempfile
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

import cv2
import numpy as np

from ..errors import UserValueError
from .runner import SIDECAR_SUFFIX, graph_input, read_sidecar

logger = logging.getLogger(__name__)

# the module scopes (attribute paths in ExportableSegmentor) whose nodes are quantized
QUANTIZED_SCOPES = (
    "inference_model.model.backbone",
    "inference_model.model.sem_seg_head.coarse_sem_seg_head",
)
# the metadata key in which torch.onnx.export records a node's module scopes
_SCOPES_KEY = "pkg.torch.onnx.name_scopes"
# what quantize_static is given (and the sidecar's "quantization" records)
SETTINGS: Dict[str, Any] = {
    "method": "onnxruntime.quantization.quantize_static",
    "format": "QDQ",
    "activation_type": "uint8",
    "weight_type": "int8",
    "per_channel": True,
    "reduce_range": True,
    "calibrate_method": "MinMax",
}


def node_scope(node) -> str:
    """The innermost module path ("inference_model.model.backbone.bottom_up.res2.0.conv1") that
    ``torch.onnx.export`` recorded for ``node`` (an ``onnx.NodeProto``); "" for nodes traced
    outside any submodule, or without the metadata."""
    for prop in node.metadata_props:
        if prop.key == _SCOPES_KEY:
            try:
                scopes = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                return ""
            modules = [s for s in scopes[:-1] if s]  # the last entry is the operation's name
            return modules[-1] if modules else ""
    return ""


def in_quantized_scope(scope: str) -> bool:
    """Whether a node of module path ``scope`` is quantized (:data:`QUANTIZED_SCOPES`)."""
    return any(scope == s or scope.startswith(s + ".") for s in QUANTIZED_SCOPES)


def nodes_to_quantize(model) -> List[str]:
    """The names of the nodes of ``model`` (an ``onnx.ModelProto`` of the exporter) inside
    :data:`QUANTIZED_SCOPES`.

    Raises:
        UserValueError: no node carries the module scopes (a graph not written by this version
            of the exporter).
    """
    names = [n.name for n in model.graph.node if in_quantized_scope(node_scope(n))]
    if not names:
        raise UserValueError(
            "The ONNX graph records no backbone or coarse-head nodes (torch.onnx.export's "
            f"{_SCOPES_KEY} metadata): export it again with tools/export_model.py and this "
            "PyTorch to quantize it."
        )
    return names


def read_images(files: Sequence[str], option: str) -> Iterator[np.ndarray]:
    """Each of ``files`` as an (h, w, 3) uint8 BGR image.

    Raises:
        UserValueError: a file OpenCV cannot read as an image (named, with ``option``).
    """
    for file in files:
        image = cv2.imread(file, cv2.IMREAD_COLOR)
        if image is None:
            raise UserValueError(f"{option}: cannot read {file} as an image.")
        yield image


def calibration_reader(files: Sequence[str], info: Dict[str, Any], input_name: str):
    """An onnxruntime ``CalibrationDataReader`` feeding ``files`` to the graph input
    ``input_name`` of the graph described by the sidecar ``info``, each through the runner's
    pre-processing (:func:`~pointrend_sem.export.runner.graph_input`)."""
    from onnxruntime.quantization import CalibrationDataReader

    class ImageReader(CalibrationDataReader):
        def __init__(self):
            self.images = read_images(files, "--calibration-images")

        def get_next(self) -> Optional[Dict[str, np.ndarray]]:
            image = next(self.images, None)
            return None if image is None else {input_name: graph_input(image, info)}

    return ImageReader()


def calibrate(fp32_path: str, reader, folder: str) -> str:
    """The range (minimum, maximum) of every float tensor of ``fp32_path`` over what ``reader``
    feeds it (onnxruntime's MinMax calibrator), saved in ``folder`` as the calibration cache
    that ``quantize_static`` reads; returns its path.

    The calibrator runs the graph with a ReduceMin and a ReduceMax added per tensor. In
    onnxruntime's default node order those run after the graph and keep every activation alive
    until then (8 GB at 1024 x 2048 for R-50); in priority order each runs as soon as its tensor
    is computed (1 GB, and twice as fast): its session is made so here.
    """
    import onnxruntime
    from onnxruntime.quantization import CalibrationMethod, create_calibrator, save_tensors_data

    calibrator = create_calibrator(
        fp32_path,
        augmented_model_path=os.path.join(folder, "augmented.onnx"),
        calibrate_method=CalibrationMethod.MinMax,
    )
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.execution_order = onnxruntime.ExecutionOrder.PRIORITY_BASED
    calibrator.infer_session = onnxruntime.InferenceSession(
        calibrator.augmented_model_path, options, providers=["CPUExecutionProvider"]
    )
    calibrator.collect_data(reader)
    cache = os.path.join(folder, "calibration.json")
    save_tensors_data(calibrator.compute_data(), cache)
    return cache


def quantize_int8(
    fp32_path: str,
    int8_path: str,
    calibration_files: Sequence[str],
    progress: Callable[[str], None] = logger.info,
) -> Dict[str, Any]:
    """Quantize the exported fp32 ``fp32_path`` (with its sidecar) to ``int8_path``, calibrated
    on ``calibration_files``; return what the sidecar's "quantization" records (:data:`SETTINGS`,
    the scopes, the number of nodes quantized, onnxruntime's version).

    Raises:
        UserValueError: no calibration image, an unreadable one, or a graph without module
            scopes.
    """
    import onnx
    import onnxruntime
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if not calibration_files:
        raise UserValueError("--quantize int8 needs --calibration-images (a few dozen images).")
    info = read_sidecar(fp32_path)
    model = onnx.load(fp32_path, load_external_data=False)
    nodes = nodes_to_quantize(model)
    input_name = model.graph.input[0].name
    types = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    progress(
        f"Quantizing {len(nodes)} of {len(model.graph.node)} nodes (backbone, FPN, coarse head) "
        f"calibrated on {len(calibration_files)} images."
    )
    del model
    with tempfile.TemporaryDirectory(prefix="calibration-") as folder:
        cache = calibrate(
            fp32_path, calibration_reader(calibration_files, info, input_name), folder
        )
        # quantize_static logs a suggestion to pre-process the model at WARNING on the root
        # logger; the exporter's graph is already optimized (and shape-inferred here)
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)
        try:
            quantize_static(
                fp32_path,
                int8_path,
                None,  # the ranges come from the calibration cache
                quant_format=QuantFormat.QDQ,
                per_channel=SETTINGS["per_channel"],
                reduce_range=SETTINGS["reduce_range"],
                activation_type=types[SETTINGS["activation_type"]],
                weight_type=types[SETTINGS["weight_type"]],
                nodes_to_quantize=nodes,
                calibrate_method=CalibrationMethod.MinMax,
                calibration_cache_path=cache,
            )
        finally:
            root.setLevel(level)
    return {
        **SETTINGS,
        "quantized_scopes": list(QUANTIZED_SCOPES),
        "quantized_nodes": len(nodes),
        "onnxruntime_version": onnxruntime.__version__,
    }


def calibration_record(files: Sequence[str]) -> Dict[str, Any]:
    """What the sidecar's "calibration" records: the number of images and their paths."""
    return {"images": len(files), "files": [os.path.abspath(f) for f in files]}


def write_int8(fp32_path: str, int8_path: str, calibration_files: Sequence[str]) -> Dict[str, Any]:
    """:func:`quantize_int8` and the int8 file's sidecar ``INT8_PATH.json``: the fp32 file's,
    with "precision" "int8", the "quantization" and the "calibration" images; returns it.

    Raises:
        UserValueError: see :func:`quantize_int8`.
    """
    quantization = quantize_int8(fp32_path, int8_path, calibration_files)
    info = dict(read_sidecar(fp32_path), precision="int8", quantization=quantization)
    info["calibration"] = calibration_record(calibration_files)
    with open(int8_path + SIDECAR_SUFFIX, "w") as f:
        json.dump(info, f, indent=2)
    return info
