"""setup.py asks for a torch that has every API the code calls. Each row of the table names a
call the code makes and the first torch release that has it; a row whose call left the code
fails too, so the table follows the code."""

import ast
import functools
import os
import re

import pytest
from conftest import REPO_ROOT
from packaging.version import Version

# (what the code calls, as a regex over the source; first torch release with it; evidence)
TORCH_APIS = [
    (r"weights_only=True", "1.13", "torch.load(weights_only=...): pytorch#86812, 1.13"),
    (r"FlopCounterMode", "2.1", "torch.utils.flop_counter: 2.1"),
    (r"torch\.export\.(export|save|load)\(", "2.1", "torch.export: 2.1"),
    (r"torch\.amp\.GradScaler\(", "2.3", "torch.amp.GradScaler(device): 2.3"),
    (
        r"torch\.serialization\.safe_globals\(",
        "2.5",
        "the safe_globals context manager: after add_safe_globals (2.4), pytorch/xla#7799",
    ),
    (r"torch\.onnx\.export\(.*dynamo=True", "2.5", "torch.onnx.export(dynamo=True): 2.5"),
    (
        r"torch\.export\.passes import move_to_device_pass",
        "2.5",
        "public move_to_device_pass: pytorch#134263 (Aug 2024), 2.5",
    ),
    (
        r"aoti_compile_and_package\(\s*\w+\s*,\s*package_path=",
        "2.6",
        "without example args: pytorch#140991, landed before the 2.6 branch cut",
    ),
    (
        r"aoti_load_package\(.*device_index=",
        "2.8",
        "device_index: pytorch#152093, merged May 2025 (after 2.7.0), 2.8",
    ),
]

SOURCE_DIRS = ("pointrend_sem", "tools", "demo", "datasets")


def without_docstrings(source: str) -> str:
    """``source`` as code only: docstrings and comments dropped, each call on one line."""
    tree = ast.parse(source)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr):
            if isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return ast.unparse(tree)


@functools.lru_cache(maxsize=None)
def product_code() -> str:
    """The code of the product's .py files (package, tools, demo, train_net.py); not tests,
    not docstrings: a row is kept by a call, not by a mention."""
    paths = [os.path.join(REPO_ROOT, "train_net.py")]
    for top in SOURCE_DIRS:
        for root, _, files in os.walk(os.path.join(REPO_ROOT, top)):
            paths += [os.path.join(root, f) for f in sorted(files) if f.endswith(".py")]
    texts = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            texts.append(without_docstrings(f.read()))
    return "\n".join(texts)


def required(package: str) -> Version:
    """The minimum version of ``package`` in setup.py's install_requires."""
    with open(os.path.join(REPO_ROOT, "setup.py"), encoding="utf-8") as f:
        match = re.search(rf'"{package}>=([0-9.]+)"', f.read())
    assert match, f"setup.py does not require {package}>=..."
    return Version(match.group(1))


@pytest.mark.parametrize("pattern, version, evidence", TORCH_APIS, ids=[r[0] for r in TORCH_APIS])
def test_each_api_in_the_table_is_still_called(pattern, version, evidence):
    assert re.search(pattern, product_code()), f"no longer called: {pattern} ({evidence})"


def test_setup_requires_a_torch_with_every_api():
    newest = max(Version(version) for _, version, _ in TORCH_APIS)
    assert required("torch") >= newest
    # and no more than that: the requirement is the newest API's release
    assert required("torch") == newest


def test_torchvision_is_the_release_paired_with_that_torch():
    torch_min, vision_min = required("torch"), required("torchvision")
    # torch 2.x ships with torchvision 0.(x + 15): 2.6 / 0.21, 2.8 / 0.23
    assert (torch_min.major, vision_min.major) == (2, 0)
    assert vision_min.minor == torch_min.minor + 15
