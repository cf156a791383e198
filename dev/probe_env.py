"""Print which of the pieces that ``make demo`` / ``make test`` set up import already, and the
version of an installed PyTorch.

    python dev/probe_env.py   ->   torch detectron2 package mmseg torch==2.5.1

The Makefile runs it once, when it reads itself, and makes a set-up step a prerequisite only
for a piece this does not print. A piece counts when all its modules import: a broken install
is set up again. ``torch==<version>`` (PyTorch without torchvision) pins torch when torchvision
alone is installed, so that the torchvision chosen matches it.
"""

import importlib
import importlib.metadata
import os
import re

# the modules of each piece; "package" is this package, installed (not only importable from the
# repository root), and its "dev" extra (DEV_REQUIREMENTS, installed distributions)
PIECES = {
    "torch": ["torch", "torchvision"],
    "detectron2": ["detectron2"],
    "package": [],
    "mmseg": ["mmseg"],  # the reference of the parity tests
}
DEV_REQUIREMENTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "requirements.txt")


def dev_distributions() -> list:
    """The distributions of setup.py's "dev" extra (``DEV_REQUIREMENTS``), without their
    version bounds (``gradio>=6.31,<7`` -> ``gradio``)."""
    with open(DEV_REQUIREMENTS, encoding="utf-8") as f:
        lines = [line.split("#")[0].strip() for line in f]
    return [re.split(r"[\s<>=!~;\[]", line, maxsplit=1)[0] for line in lines if line]


def importable(piece: str) -> bool:
    """Whether ``piece`` (a key of ``PIECES``) is set up in this interpreter."""
    try:
        if piece == "package":
            for distribution in ["pointrend-sem", *dev_distributions()]:
                importlib.metadata.version(distribution)
        for module in PIECES[piece]:
            importlib.import_module(module)
    except Exception:  # a broken install fails in many ways: all mean "set it up"
        return False
    return True


def torch_requirement() -> str:
    """``torch==<installed version>`` (without a local label such as +cpu), or "" if none."""
    try:
        version = importlib.import_module("torch").__version__
    except Exception:
        return ""
    return "torch==" + version.split("+")[0]


if __name__ == "__main__":
    print(" ".join([piece for piece in PIECES if importable(piece)] + [torch_requirement()]))
