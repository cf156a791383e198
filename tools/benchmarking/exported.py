"""``--exported PATH`` (repeatable): files of ``tools/export_model.py`` timed side by side with
eager PyTorch in fp32, eager bf16 where the CPU has bf16 units, and the ``--compare`` reference.

An exported file runs as :mod:`pointrend_sem.export.runner` runs it (onnxruntime on CPU for
``.onnx``, fp32 or int8, with as many intra-op threads as torch has; ``torch.export.load`` for a
``.pt2`` ExportedProgram, ``aoti_load_package`` for an AOTInductor package, these two on the
sidecar's "device", a ``.pt2`` on CPU where CUDA is absent; scores brought back to CPU), on the
benchmark image as the graph's (1, 3, H, W) float32 input, once per image of the batch. Each is
a contender of its own next to ours (and the reference): the side-by-side table gives its
latency, its time relative to ours (eager, ``TEST.PRECISION``) and to the reference, and the
fraction of pixels with our class (the same checkpoint must be in both: pass it to --weights).
"""

from typing import Any, Dict, List, Optional

import numpy as np
import torch

from pointrend_sem.capabilities import DTYPE_NAMES, precision_support
from pointrend_sem.export.module import check_exported_file
from pointrend_sem.export.runner import load_graph, read_sidecar
from pointrend_sem.inference import build_inference_model

from .inputs import sem_seg_labels
from .measure import Contender


def exported_name(index: int) -> str:
    """The contender name of the ``index``-th --exported file."""
    return f"exported_{index}"


def describe_exported(path: str) -> str:
    """The file and what it holds, for the table: "PATH (onnx, int8)"."""
    info = read_sidecar(path)
    return f"{path} ({info['format']}, {info.get('precision', 'fp32')})"


def build_exported_contender(
    path: str, image: torch.Tensor, batch_size: int, name: str, threads: Optional[int] = None
) -> Contender:
    """The contender ``name`` running the exported ``path`` on ``image``, (3, H, W) uint8 in
    the model's input format, ``batch_size`` times per pass; ``threads``: onnxruntime's
    intra-op threads for ``.onnx`` (torch's count, so that both use the same cores).

    Raises:
        UserFileNotFoundError: no such file, or no sidecar next to it.
        SystemExit: the file was exported at another size than the image's.
    """
    check_exported_file(path, "--exported")
    info = read_sidecar(path)
    size = (int(info["height"]), int(info["width"]))
    if size != tuple(image.shape[-2:]):
        raise SystemExit(
            f"{path} was exported at {size[0]}x{size[1]}; run the benchmark with --height "
            f"{size[0]} --width {size[1]}."
        )
    run_graph = load_graph(path, info["format"], threads=threads)
    array = np.ascontiguousarray(image.float()[None].numpy())

    def forward() -> List[np.ndarray]:
        return [run_graph(array) for _ in range(batch_size)]

    def labels(outputs: List[np.ndarray]) -> List[torch.Tensor]:
        return [torch.from_numpy(np.asarray(out[0])).argmax(0) for out in outputs]

    return Contender(name, forward, labels)


def bf16_contender(model, cfg, images, sizes, device: str, keeps_freed_memory: bool):
    """Eager PyTorch in bf16 (the inference module with ``precision="bf16"``) as the contender
    "ours_bf16", when ours runs fp32 on a CPU with bf16 units; else None and the reason.

    Returns:
        (contender or None, a line for the table).
    """
    if device != "cpu":
        return None, "not timed: the side-by-side bf16 run is for CPUs"
    support = precision_support(torch.bfloat16, "cpu")
    if not support.native:
        return None, f"not timed: {support.detail}"
    bf16_model = build_inference_model(model, cfg, precision="bf16")
    contender = Contender(
        "ours_bf16",
        lambda: bf16_model.predict(images, sizes),
        sem_seg_labels,
        keeps_freed_memory=keeps_freed_memory,
    )
    return contender, f"{DTYPE_NAMES[bf16_model.dtype]} ({support.detail})"


def side_by_side(
    records: Dict[str, Dict[str, Any]], descriptions: Dict[str, str], agreement
) -> List[Dict[str, Any]]:
    """One row per contender of ``records`` (:func:`.measure.time_alternating`), in the order
    of ``descriptions`` (name -> what it is): median, min and max latency (ms) and each run's
    (in the order the rounds ran: one round times every contender once), time relative to
    ours and to the reference (when there is one), and the fraction of pixels with our class
    (``agreement(ours_labels, its_labels)``)."""
    medians = {name: float(np.median(r["seconds"])) * 1e3 for name, r in records.items()}
    rows = []
    for name, description in descriptions.items():
        seconds = records[name]["seconds"]
        row = {
            "contender": description,
            "latency_median_ms": medians[name],
            "latency_min_ms": min(seconds) * 1e3,
            "latency_max_ms": max(seconds) * 1e3,
            "latency_runs_ms": [t * 1e3 for t in seconds],
            "time_vs_ours": medians[name] / medians["ours"],
            "same_class_as_ours": agreement(records["ours"]["labels"], records[name]["labels"]),
        }
        if "reference" in medians:
            row["time_vs_reference"] = medians[name] / medians["reference"]
        rows.append(row)
    return rows
