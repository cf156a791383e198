"""``python -m pointrend_sem``: what this machine runs (:mod:`pointrend_sem.capabilities`): the
precisions on its CPU or GPU, oneDNN's fused convolution, a compiler for AOTInductor."""

import torch

from .capabilities import describe

print(describe("cuda" if torch.cuda.is_available() else "cpu"))
