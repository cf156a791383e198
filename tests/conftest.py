import contextlib
import importlib.util
import io
import logging
import os
import runpy
import subprocess
import sys
import tempfile
import textwrap
import traceback

# The tests run on the CPU, on a GPU host too: its GPUs are hidden from every test process and
# every process a test starts (before torch first asks CUDA), so that a command cannot silently
# run on CUDA (NCCL, torch's SyncBN, launch()'s device count). POINTREND_SEM_TEST_CUDA=1 keeps
# them visible, for the tests marked `cuda` (skipped without a GPU).
CUDA_ENV = "POINTREND_SEM_TEST_CUDA"
if os.environ.get(CUDA_ENV, "0").strip() != "1":
    os.environ["CUDA_VISIBLE_DEVICES"] = ""

import pytest  # noqa: E402
import torch  # noqa: E402
from detectron2.config import get_cfg  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402

from pointrend_sem import add_pointrend_sem_config  # noqa: E402

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
# Set to 0 to run the suite as on a PyTorch without oneDNN: torch.backends.mkldnn.enabled is
# False in every test process and in every Python process a test starts (README, "Tests").
ONEDNN_ENV = "POINTREND_SEM_TEST_ONEDNN"


def onednn_switched_off(env=None) -> bool:
    """Whether ``ONEDNN_ENV`` (in ``env``, default this process's environment) turns oneDNN
    off for the tests."""
    return (os.environ if env is None else env).get(ONEDNN_ENV, "1").strip() == "0"


if onednn_switched_off():
    torch.backends.mkldnn.enabled = False


def child_env(env=None) -> dict:
    """``env`` (default: this process's environment) for a child process, with the start-up noise
    of ``CHILD_NOISE_ENV`` and the oneDNN switch of ``ONEDNN_ENV`` when they are set (through a
    ``sitecustomize`` module that every child Python runs first)."""
    env = dict(os.environ if env is None else env)
    noise_kb = int(env.get(CHILD_NOISE_ENV, "0") or 0)
    onednn_off = onednn_switched_off(env)
    if noise_kb <= 0 and not onednn_off:
        return env
    code = ""
    if noise_kb > 0:
        line = "noise: a library logging at start-up " + "." * 60
        code += textwrap.dedent(f"""\
            import sys
            _lines = ({line!r} + chr(10)) * ({noise_kb} * 1024 // {len(line) + 1} + 1)
            sys.stdout.write(_lines)
            sys.stdout.flush()
            sys.stderr.write(_lines)
            sys.stderr.flush()
            """)
    if onednn_off:
        code += "import torch\ntorch.backends.mkldnn.enabled = False\n"
    name = f"pointrend_sem_child_{noise_kb}kb_onednn{'off' if onednn_off else 'on'}"
    folder = os.path.join(tempfile.gettempdir(), name)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "sitecustomize.py")
    with open(f"{path}.{os.getpid()}", "w") as f:  # whole, also with two workers writing it
        f.write(code)
    os.replace(f"{path}.{os.getpid()}", path)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [folder, env.get("PYTHONPATH")]))
    return env


def needs_precision(name: str):
    """A mark that skips a test of ``name`` ("bf16", "fp16") on a CPU that cannot run it, with
    what the CPU lacks as the reason. What a user of such a CPU gets instead (one line) is
    tested in test_capabilities.py."""
    from pointrend_sem.capabilities import precision_support
    from pointrend_sem.inference.precision import PRECISIONS

    support = precision_support(PRECISIONS[name], "cpu")
    return pytest.mark.skipif(not support.runs, reason=f"{name} cannot run here: {support.detail}")


def clear_precision_caches() -> None:
    """Forget the precision decisions (and their one-time log lines) cached per process, for
    tests that change what the machine answers (pointrend_sem.inference)."""
    from pointrend_sem.inference import builder, precision

    for cached in (precision._check_runs, precision._auto_precision, builder._log_unfused):
        cached.cache_clear()


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


@contextlib.contextmanager
def _environment(env):
    """Inside the block, ``os.environ`` is ``env`` (None: unchanged); restored after."""
    if env is None:
        yield
        return
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _all_loggers():
    manager = logging.Logger.manager
    return [logging.getLogger()] + [
        logger for logger in manager.loggerDict.values() if isinstance(logger, logging.Logger)
    ]


@contextlib.contextmanager
def logging_left_as_found():
    """What a command changes in logging is undone after it: detectron2's ``setup_logger`` adds
    handlers (to the stdout of that command) and stops propagation to the root logger (which
    pytest's ``caplog`` reads); it also forgets its calls (its ``lru_cache``), so that the next
    command's logs go to that command's own output."""
    before = {
        id(logger): (list(logger.handlers), logger.level, logger.propagate, logger.disabled)
        for logger in _all_loggers()
    }
    disabled_below = logging.root.manager.disable
    try:
        yield
    finally:
        for logger in _all_loggers():
            handlers, level, propagate, disabled = before.get(
                id(logger), ([], logging.NOTSET, True, False)
            )
            for handler in [h for h in logger.handlers if h not in handlers]:
                logger.removeHandler(handler)
            logger.setLevel(level)
            logger.propagate, logger.disabled = propagate, disabled
        logging.disable(disabled_below)
        setup_logger.cache_clear()


def run_script(cmd, *, env=None, check=False, cwd=REPO_ROOT) -> subprocess.CompletedProcess:
    """``cmd`` = ``[sys.executable, "<script>.py", *args]`` run in this process, as
    ``python <script>.py args`` would run it (``__name__ == "__main__"``, ``sys.argv``, the
    script's folder first on ``sys.path``, ``env`` as the environment), with what it writes to
    stdout and stderr captured; returns what :func:`run_command` returns (an uncaught exception
    gives exit status 1 and its traceback on stderr).

    Use it for commands whose behaviour is under test (their output, files, errors), not their
    process: it saves the ~5 s of a Python start-up importing torch and detectron2, which is
    most of the time of such a test. What must be a process (a kill, ``launch()`` with several
    processes, an import check) uses :func:`run_command`."""
    assert cmd[0] == sys.executable and cmd[1].endswith(".py"), cmd
    args = [str(a) for a in cmd[1:]]
    script = os.path.join(cwd, args[0])
    stdout, stderr = io.StringIO(), io.StringIO()
    saved_argv, saved_path, saved_cwd = sys.argv, list(sys.path), os.getcwd()
    threads = torch.get_num_threads()
    returncode = 0
    try:
        sys.argv = [script, *args[1:]]
        sys.path.insert(0, os.path.dirname(script))
        os.chdir(cwd)
        with _environment(None if env is None else dict(env)), logging_left_as_found():
            with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
                try:
                    runpy.run_path(script, run_name="__main__")
                except SystemExit as e:
                    if isinstance(e.code, str):
                        print(e.code, file=sys.stderr)
                    returncode = e.code if isinstance(e.code, int) else int(e.code is not None)
                except Exception:
                    traceback.print_exc()
                    returncode = 1
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path
        os.chdir(saved_cwd)
        torch.set_num_threads(threads)
    proc = subprocess.CompletedProcess(cmd, returncode, stdout.getvalue(), stderr.getvalue())
    assert not check or returncode == 0, f"{args} exited with {returncode}: {proc.stderr[-3000:]}"
    return proc


def run_tool(tmp_path, *args):
    """``python <args>`` run in this process (:func:`run_script`) with the datasets under
    ``tmp_path/datasets`` and without ``POINTREND_SEM_DEBUG``, as a user runs a command."""
    from pointrend_sem.errors import DEBUG_ENV

    env = dict(os.environ, DETECTRON2_DATASETS=str(tmp_path / "datasets"))
    env.pop(DEBUG_ENV, None)
    return run_script([sys.executable, *map(str, args)], env=env)


def one_line_error(proc):
    """The ``error: ...`` line of a command that failed on a user error, without a traceback."""
    assert proc.returncode != 0
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("error: "), proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return line


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
    sys.path.insert(0, os.path.dirname(path))  # its neighbours, as `python <path>` would
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(os.path.dirname(path))
    return module


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
    # a process of its own: the built-in datasets take DETECTRON2_DATASETS when they are
    # registered (as detectron2's are), at import
    proc = run_command(cmd, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def pytest_collection_modifyitems(config, items):
    """Tests marked ``slow`` run first, the longest first (``slow(seconds=...)``, default 10),
    so that pytest-xdist's workers, stealing the short ones from each other at the end, finish
    together. Tests marked ``cuda`` need a visible GPU (``POINTREND_SEM_TEST_CUDA=1`` on a GPU
    host)."""

    def expected_seconds(item):
        slow = item.get_closest_marker("slow")
        return slow.kwargs.get("seconds", 10) if slow else 0

    items.sort(key=expected_seconds, reverse=True)  # stable: file order otherwise
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason=f"needs a CUDA GPU, visible with {CUDA_ENV}=1")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def reference_weights(tmp_path_factory):
    """``model_final.pth`` of the uninterrupted tiny demo in one process, trained once for all
    test processes (pytest-xdist's workers share the folder)."""
    from filelock import FileLock  # torch's dependency
    from tiny_demo import train_net

    shared = tmp_path_factory.getbasetemp().parent / "uninterrupted_tiny_demo"
    with FileLock(f"{shared}.lock"):
        final = shared / "model_final.pth"
        if not final.exists():
            train_net(shared / "out")
            os.replace(shared / "out" / "model_final.pth", final)
    return final
