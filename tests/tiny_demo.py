"""The tiny demo that the resumption tests train, stop and resume (tests/test_resumption.py),
and what they compare."""

import json
import os
import sys
import tempfile

import torch
from conftest import TINY_MODEL, run_command, start_command

# the demo made tiny; a DataLoader worker (whose randomness must come back too), periodic
# checkpoints at iterations 3 and 7 (the last), no evaluation
TINY = [
    *TINY_MODEL,
    "INPUT.CROP.SIZE", "(32, 32)",
    "SOLVER.MAX_ITER", "8",
    "SOLVER.CHECKPOINT_PERIOD", "4",
    "SOLVER.IMS_PER_BATCH", "4",
    "SOLVER.WARMUP_ITERS", "3",
    "LOG_PERIOD", "1",
    "DATALOADER.NUM_WORKERS", "1",
    "DATASETS.TEST", "()",
]  # fmt: skip


# the synthetic dataset, generated once for all these runs (deterministic; generation is
# cached and safe from several processes: pointrend_sem/data/datasets/synthetic.py)
DATASETS_ROOT = os.path.join(tempfile.gettempdir(), "pointrend_sem_tiny_demo_datasets")


def train_net_command(output_dir, *extra, opts=()):
    """The command and environment of ``train_net.py`` on the tiny demo (flags ``extra``, more
    config overrides ``opts``)."""
    # one thread per process: the test workers and a run's processes share the cores (the
    # runs a test compares bit for bit all run with this setting)
    env = dict(os.environ, DETECTRON2_DATASETS=DATASETS_ROOT, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "train_net.py", "--config-file", "configs/demo_synthetic.yaml", *extra]
    return cmd + [*TINY, *opts, "OUTPUT_DIR", str(output_dir)], env


def train_net(output_dir, *extra, background=False):
    """``train_net.py`` on the tiny demo: started in the background (output to
    ``<output_dir>.log``), or run to completion (returns its output). A process of its own, as
    every run that a test compares bit for bit: none inherits what other tests changed in
    torch's settings."""
    cmd, env = train_net_command(output_dir, *extra)
    if background:
        return start_command(cmd, f"{output_dir}.log", env=env)
    proc = run_command(cmd, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def assert_same_weights(path, reference_path):
    got = torch.load(path, weights_only=False)["model"]
    expected = torch.load(reference_path, weights_only=False)["model"]
    assert got.keys() == expected.keys()
    differ = [name for name in expected if not torch.equal(got[name], expected[name])]
    assert not differ, f"{len(differ)} of {len(expected)} tensors differ, e.g. {differ[:3]}"


def stream_iterations(output_dir):
    """The iterations that ``output_dir``'s metrics.json has reached so far."""
    try:
        with open(output_dir / "metrics.json") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return []
    rows = []
    for line in lines:
        try:
            rows.append(json.loads(line))
        except ValueError:  # a line being written
            pass
    return [row["iteration"] for row in rows if "iteration" in row]
