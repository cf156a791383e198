"""`make demo` / `make test` set up only what is missing: read from `make -n`, which prints the
commands that would run (set-up steps included) and runs none of them."""

import os
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import run_command

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")

PIP = "-m pip install"


def make_n(*targets_and_variables, env=None):
    """The commands ``make -n target... [VAR=value...]`` prints, one per line (also when this
    runs under make, whose MAKEFLAGS would add "Entering directory" lines)."""
    cmd = ["make", "--no-print-directory", "-n", f"PYTHON={sys.executable}", *targets_and_variables]
    env = {k: v for k, v in (os.environ if env is None else env).items() if k != "MAKEFLAGS"}
    proc = run_command(cmd, env=env)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


@pytest.mark.slow
def test_nothing_is_installed_when_everything_imports():
    """This machine is set up (the tests run): no pip, no clone; then the commands themselves
    (one make for both goals, which prints demo's command first: one set-up probe)."""
    lines = make_n("demo", "test")
    assert not [line for line in lines if PIP in line or "git clone" in line]
    demo, test = lines[:1], lines[1:]
    assert demo == [f"{sys.executable} train_net.py --config-file configs/demo_synthetic.yaml"]
    assert test[-1] == f"{sys.executable} -m pytest tests"
    assert any("black --check" in line for line in test) and any("flake8" in line for line in test)


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory):
    """A Python with nothing installed: a new virtual environment (without pip: make -n runs
    nothing)."""
    venv = tmp_path_factory.mktemp("bare_venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    return str(venv / "bin" / "python")


def test_a_bare_python_gets_every_piece_in_order(bare_python, tmp_path):
    clone = tmp_path / "third_party" / "detectron2"  # not cloned yet
    test = make_n("test", f"PYTHON={bare_python}", f"DETECTRON2_SRC={clone}")
    expected = [
        f"{bare_python} {PIP} torch torchvision",
        f"git clone https://github.com/facebookresearch/detectron2.git {clone}",
        f"{bare_python} {PIP} --no-build-isolation --use-pep517 -e ",
        f'{bare_python} {PIP} -e ".[dev]"',
        f"{bare_python} {PIP} --no-deps mmcv-lite==2.1.0 mmengine==0.10.7 mmsegmentation==1.2.2",
    ]
    positions = [next(i for i, line in enumerate(test) if line.startswith(e)) for e in expected]
    assert positions == sorted(positions), test
    assert test[-1] == f"{bare_python} -m pytest tests"
    demo = make_n("demo", f"PYTHON={bare_python}", f"DETECTRON2_SRC={clone}")
    assert not [line for line in demo if "mmsegmentation" in line]  # only the tests need it


def test_an_existing_detectron2_checkout_is_installed_not_cloned(bare_python, tmp_path):
    checkout = tmp_path / "detectron2"
    checkout.mkdir()
    (checkout / "setup.py").write_text("")
    demo = make_n("demo", f"PYTHON={bare_python}", f"DETECTRON2_SRC={checkout}")
    assert not [line for line in demo if "git clone" in line]
    assert f"{bare_python} {PIP} --no-build-isolation --use-pep517 -e {checkout}" in demo


def hide(tmp_path, module):
    """This environment, in which ``module`` fails to import."""
    (tmp_path / f"{module}.py").write_text("raise ImportError('hidden by the test')\n")
    path = os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))
    return dict(os.environ, PYTHONPATH=path)


@pytest.mark.slow
def test_only_the_missing_piece_is_installed(tmp_path):
    """detectron2 hidden from this Python: its step alone."""
    demo = make_n("demo", env=hide(tmp_path, "detectron2"))
    installs = [line for line in demo if PIP in line or "git clone" in line]
    assert [line for line in installs if "--no-build-isolation" in line]
    assert not [line for line in installs if "torchvision" in line or ".[dev]" in line]


def test_torchvision_alone_is_matched_to_the_installed_torch(tmp_path):
    demo = make_n("demo", env=hide(tmp_path, "torchvision"))
    version = torch.__version__.split("+")[0]
    assert f"{sys.executable} {PIP} torch=={version} torchvision" in demo


def test_app_trains_the_demo_model_first_only_when_it_is_missing(tmp_path):
    """`make app` serves the demo model; without it, it trains it first and says so (PRESENT
    given: the set-up probe does not run)."""
    pieces = "PRESENT=torch detectron2 package mmseg"
    missing = make_n("app", pieces, f"DEMO_OUTPUT={tmp_path}")
    train = f"{sys.executable} train_net.py --config-file configs/demo_synthetic.yaml"
    assert missing.index(f"{train} OUTPUT_DIR {tmp_path}") < len(missing) - 2, missing
    assert "is missing: training the demo model first" in " ".join(missing)
    (tmp_path / "model_final.pth").touch()
    present = make_n("app", pieces, f"DEMO_OUTPUT={tmp_path}")
    assert not [line for line in present if "train_net.py" in line]
    serve = " ".join(present).replace("\\", " ").split()
    assert serve[:4] == [
        sys.executable,
        "demo/app.py",
        "--config-file",
        "configs/demo_synthetic.yaml",
    ]
    assert serve[-3:] == ["--opts", "MODEL.WEIGHTS", f"{tmp_path}/model_final.pth"]
