"""``--exported PATH``: a file of ``tools/export_model.py`` timed next to eager PyTorch.

The exported file runs as :mod:`pointrend_sem.export.runner` runs it (onnxruntime on CPU for
``.onnx``, ``torch.export.load`` for a ``.pt2`` ExportedProgram, ``aoti_load_package`` for an
AOTInductor package; the last two on the sidecar's "device", a ``.pt2`` on CPU where CUDA is
absent; scores brought back to CPU), on the benchmark image as the graph's (1, 3, H, W)
float32 input, once per image of the batch. It takes the place of the reference of
``--compare``: the table's "reference" columns are the exported file's, "time_ratio" is
PyTorch / exported, "agreement" the fraction of pixels of the same class (the same checkpoint
must be in both: pass it to --weights).
"""

from typing import List

import numpy as np
import torch

from pointrend_sem.export.runner import load_graph, read_sidecar

from .measure import Contender


def build_exported_contender(path: str, image: torch.Tensor, batch_size: int) -> Contender:
    """The contender running the exported ``path`` on ``image``, (3, H, W) uint8 in the model's
    input format, ``batch_size`` times per pass.

    Raises:
        SystemExit: the file was exported at another size than the image's.
    """
    info = read_sidecar(path)
    size = (int(info["height"]), int(info["width"]))
    if size != tuple(image.shape[-2:]):
        raise SystemExit(
            f"{path} was exported at {size[0]}x{size[1]}; run the benchmark with --height "
            f"{size[0]} --width {size[1]}."
        )
    run_graph = load_graph(path, info["format"])
    array = np.ascontiguousarray(image.float()[None].numpy())

    def forward() -> List[np.ndarray]:
        return [run_graph(array) for _ in range(batch_size)]

    def labels(outputs: List[np.ndarray]) -> List[torch.Tensor]:
        return [torch.from_numpy(np.asarray(out[0])).argmax(0) for out in outputs]

    return Contender("reference", forward, labels)
