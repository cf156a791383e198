import importlib.util
import os
import subprocess
import sys
import tempfile
import textwrap

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import MetadataCatalog
from PIL import Image

from pointrend_sem import add_pointrend_sem_config

# Under pytest-xdist (setup.cfg: one worker per core) each worker, and every process it starts,
# uses one thread: workers x threads stays within the cores instead of oversubscribing them.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DIR = os.path.join(REPO_ROOT, "configs")

# A child process that outlives this is killed and its test fails by name (pytest-timeout, set in
# setup.cfg, bounds the whole test too).
COMMAND_TIMEOUT_S = 420
# Set to a number of KiB to make every child Python process print that much to stdout and to
# stderr at start-up, as a library that logs more would: the tests must still pass (no child may
# block writing into a pipe that nobody reads).
CHILD_NOISE_ENV = "POINTREND_SEM_TEST_CHILD_NOISE_KB"


def child_env(env=None) -> dict:
    """``env`` (default: this process's environment) for a child process, with the start-up noise
    of ``CHILD_NOISE_ENV`` when it is set."""
    env = dict(os.environ if env is None else env)
    noise_kb = int(env.get(CHILD_NOISE_ENV, "0") or 0)
    if noise_kb > 0:
        folder = os.path.join(tempfile.gettempdir(), f"pointrend_sem_child_noise_{noise_kb}kb")
        os.makedirs(folder, exist_ok=True)
        line = "noise: a library logging at start-up " + "." * 60
        with open(os.path.join(folder, "sitecustomize.py"), "w") as f:
            f.write(textwrap.dedent(f"""\
                    import sys
                    _lines = ({line!r} + chr(10)) * ({noise_kb} * 1024 // {len(line) + 1} + 1)
                    sys.stdout.write(_lines)
                    sys.stdout.flush()
                    sys.stderr.write(_lines)
                    sys.stderr.flush()
                    """))
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [folder, env.get("PYTHONPATH")]))
    return env


def run_command(cmd, *, env=None, check=False, timeout=COMMAND_TIMEOUT_S, cwd=REPO_ROOT):
    """Run ``cmd`` to completion; stdout and stderr are read while it runs (no full pipe can block
    it) and returned as text; it is killed after ``timeout`` seconds (``TimeoutExpired``)."""
    return subprocess.run(
        cmd,
        cwd=cwd,
        env=child_env(env),
        capture_output=True,
        text=True,
        check=check,
        timeout=timeout,
    )


def start_command(cmd, log_path, *, env=None, cwd=REPO_ROOT) -> subprocess.Popen:
    """Start ``cmd`` in the background with stdout and stderr going to the file ``log_path``
    (never to a pipe); read it with ``tail_of(log_path)``. The caller kills it if it leaves early
    (``kill_all``)."""
    with open(log_path, "w") as log:
        return subprocess.Popen(
            cmd, cwd=cwd, env=child_env(env), stdout=log, stderr=subprocess.STDOUT
        )


def kill_all(*procs):
    """Kill and reap the processes of ``start_command`` that are still running."""
    for proc in procs:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()


def tail_of(log_path, chars=3000) -> str:
    """The last ``chars`` characters (``None``: all) of a log file written by ``start_command``."""
    with open(log_path, errors="replace") as f:
        text = f.read()
    return text[-chars:] if chars else text


def load_script(path: str):
    """A script that is not part of the package (e.g. datasets/prepare_voc.py) as a module."""
    name = os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def label_file_states(folders, suffix: str = "") -> dict:
    """{path: (mtime_ns, pixels)} of the label images in ``folders`` whose names end in
    ``suffix``: what a preparation script wrote, to see what a second run rewrites."""
    out = {}
    for folder in folders:
        for name in sorted(os.listdir(folder)):
            if name.endswith(suffix):
                path = os.path.join(folder, name)
                out[path] = (os.stat(path).st_mtime_ns, np.asarray(Image.open(path)))
    return out


def check_dataset_metadata(meta, num_classes: int, evaluator_type: str, prepare_command: str):
    """What the metadata of every registered split of a benchmark dataset carries."""
    assert len(meta.stuff_classes) == len(meta.stuff_colors) == num_classes
    assert all(len(c) == 3 and all(0 <= v <= 255 for v in c) for c in meta.stuff_colors)
    assert meta.ignore_label == 255
    assert meta.evaluator_type == evaluator_type
    assert meta.prepare_command == prepare_command
    assert os.path.isfile(os.path.join(REPO_ROOT, prepare_command.split()[-1]))


def check_metadata_addition_keeps_values(add_metadata, module, splits_attr: str, monkeypatch):
    """``add_metadata`` runs twice without raising and keeps a value already set; returns the
    metadata of the test split it completed."""
    add_metadata()  # a second call (a second import) must not raise
    name = f"pointrend_sem_test_{splits_attr.lower()}_keeps_values"
    MetadataCatalog.get(name).set(stuff_colors=[[1, 2, 3]])
    monkeypatch.setattr(module, splits_attr, (name,))
    add_metadata()
    assert MetadataCatalog.get(name).stuff_colors == [[1, 2, 3]]
    return MetadataCatalog.get(name)


def load_config(name: str = "demo_synthetic.yaml", opts=()):
    """A config from configs/, on CPU."""
    cfg = get_cfg()
    add_pointrend_sem_config(cfg)
    cfg.merge_from_file(os.path.join(CONFIG_DIR, name))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", *opts])
    return cfg


# overrides that make any recipe tiny and CPU-fast: ResNet-18, 32-channel heads, 2 iterations
TINY_MODEL = [
    "MODEL.WEIGHTS", "",
    "MODEL.RESNETS.DEPTH", "18",
    "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
    "MODEL.RESNETS.NORM", "BN",
    "MODEL.FPN.OUT_CHANNELS", "32",
    "MODEL.SEM_SEG_HEAD.NORM", "BN",
    "MODEL.SEM_SEG_HEAD.CONVS_DIM", "32",
    "MODEL.POINTREND_SEM.FC_DIM", "32",
    "MODEL.POINTREND_SEM.TRAIN_NUM_POINTS", "64",
    "MODEL.POINTREND_SEM.SUBDIVISION_NUM_POINTS", "256",
    "SOLVER.MAX_ITER", "2",
    "SOLVER.IMS_PER_BATCH", "2",
    "INPUT.CROP.SIZE", "(16, 16)",
    "INPUT.MIN_SIZE_TEST", "32",
    "INPUT.MAX_SIZE_TEST", "64",
    "DATALOADER.NUM_WORKERS", "0",
    "TEST.EVAL_PERIOD", "0",
]  # fmt: skip


def tiny_train_net(config: str, datasets_root, output_dir, *opts) -> str:
    """Run ``train_net.py`` on a recipe made tiny (``TINY_MODEL``) with ``DETECTRON2_DATASETS``
    at ``datasets_root``; assert it succeeds and return its output."""
    cmd = [sys.executable, "train_net.py", "--config-file", config, *TINY_MODEL, *opts]
    cmd += ["OUTPUT_DIR", str(output_dir)]
    env = dict(os.environ, DETECTRON2_DATASETS=str(datasets_root))
    proc = run_command(cmd, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout + proc.stderr


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield
