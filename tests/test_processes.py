"""The test helpers that start processes never let a child block on a full pipe."""

import os
import sys

from conftest import CHILD_NOISE_ENV, kill_all, run_command, start_command, tail_of

# more than a pipe buffer (64 KiB) on each stream
CHATTY_CHILD = "import sys; [print('x' * 99, file=s) for s in (sys.stdout, sys.stderr) for _ in range(3000)]; print('done')"  # noqa: E501


def test_background_child_writing_more_than_a_pipe_holds_finishes(tmp_path):
    log = tmp_path / "child.log"
    proc = start_command([sys.executable, "-c", CHATTY_CHILD], log)
    try:
        assert proc.wait(timeout=60) == 0
    finally:
        kill_all(proc)
    assert os.path.getsize(log) > 2 * 3000 * 100
    assert tail_of(log).endswith("done\n")


def test_run_command_drains_both_streams():
    proc = run_command([sys.executable, "-c", CHATTY_CHILD], check=True, timeout=60)
    assert len(proc.stdout) > 3000 * 100 and len(proc.stderr) >= 3000 * 100


def test_noise_switch_makes_every_python_child_print_at_start_up():
    env = dict(os.environ, **{CHILD_NOISE_ENV: "130"})
    proc = run_command([sys.executable, "-c", "print('real output')"], env=env, timeout=60)
    assert proc.returncode == 0
    assert len(proc.stdout) > 130 * 1024 and len(proc.stderr) > 130 * 1024
    assert proc.stdout.endswith("real output\n")
