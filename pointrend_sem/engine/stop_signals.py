"""The signals that stop training with a checkpoint, as clusters send them.

SLURM sends SIGTERM (or the signal of ``--signal``, usually SIGUSR1) to every process of a job
at preemption or near its time limit, then SIGKILL after a grace period; Ctrl-C sends SIGINT to
every process of the terminal's foreground group. :class:`StopSignals` turns the first such
signal into a request that training answers at the end of the current iteration
(:class:`~pointrend_sem.engine.resumption.CheckpointOnSignal`): every process finishes it, rank 0
saves a checkpoint, all exit with :data:`STOPPED_EXIT_CODE`. A second signal ends the process at
once (killed by that signal).

A handler that was installed before (a cluster launcher's: submitit's requeue on SIGUSR2) is not
lost: :meth:`StopSignals.run_previous_handler` calls it once the checkpoint is saved.
DataLoader workers ignore these signals (:func:`ignore_in_worker`): the main process decides.
"""

import contextlib
import logging
import os
import shlex
import signal
import sys
import threading
from multiprocessing import resource_tracker
from typing import Callable, Dict, Iterator, Optional, Sequence

from torch.multiprocessing import ProcessExitedException

from ..errors import UserValueError

# exit status of a run stopped by a signal after saving its checkpoint: "try again later"
# (BSD sysexits EX_TEMPFAIL), distinct from 0 (done), 1 (error) and 128 + N (killed by signal N)
STOPPED_EXIT_CODE = 75


def parse_signals(names: Sequence[str], key: str = "SOLVER.CHECKPOINT_ON_SIGNALS") -> list:
    """``signal.Signals`` of ``names`` ("SIGTERM", "SIGUSR1", ...); a name that is not a signal
    raises :class:`UserValueError` naming ``key``."""
    parsed = []
    for name in names:
        try:
            parsed.append(signal.Signals[str(name).upper()])
        except KeyError:
            raise UserValueError(
                f"{key} has {name!r}, which is not a signal name; use names such as SIGTERM, "
                "SIGINT, SIGUSR1, SIGUSR2 (or an empty list to stop on none)."
            ) from None
    return parsed


class StopSignals:
    """While installed, the first of ``signals`` records a stop request (:attr:`received`); the
    second ends the process at once. Install from the main thread (Python runs signal handlers
    there)."""

    def __init__(self, signals: Sequence[signal.Signals]):
        self.signals = list(signals)
        self.received: Optional[signal.Signals] = None
        self._previous: Dict[signal.Signals, Callable] = {}

    @property
    def requested(self) -> bool:
        return self.received is not None

    def install(self) -> "StopSignals":
        if threading.current_thread() is not threading.main_thread():
            logging.getLogger(__name__).warning(
                "Not in the main thread: stopping with a checkpoint on a signal is off."
            )
            return self
        for signum in self.signals:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def uninstall(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}

    def __enter__(self) -> "StopSignals":
        return self.install()

    def __exit__(self, *exc) -> None:
        self.uninstall()

    def _handle(self, signum: int, frame) -> None:
        if self.received is None:
            self.received = signal.Signals(signum)
            return
        # the second signal: no logging here (its lock may be held by the interrupted code)
        name = signal.Signals(signum).name
        os.write(2, f"\n{name} again: exiting now, without a checkpoint.\n".encode())
        signal.signal(signum, signal.SIG_DFL)
        if signum == signal.SIGINT:
            os._exit(128 + signum)
        os.kill(os.getpid(), signum)

    def run_previous_handler(self) -> None:
        """Call the handler that the received signal had before :meth:`install` (a cluster
        launcher's, e.g. submitit's checkpoint-and-requeue), if it was a Python function."""
        previous = self._previous.get(self.received) if self.received else None
        if callable(previous) and previous is not signal.default_int_handler:
            previous(int(self.received), None)


def start_resource_tracker(signals: Sequence[signal.Signals]) -> None:
    """Start multiprocessing's resource tracker (if not running) with ``signals`` ignored, which
    it keeps across its exec. It runs in the job's process group: a stop signal sent to the
    group (SIGUSR1) would kill it, and every process using shared memory would then print its
    warnings and restart one. It ignores SIGINT and SIGTERM by itself."""
    previous = {signum: signal.signal(signum, signal.SIG_IGN) for signum in signals}
    try:
        resource_tracker.ensure_running()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextlib.contextmanager
def stoppable_launch(signals: Sequence[signal.Signals], num_processes: int) -> Iterator[None]:
    """Around detectron2's ``launch()`` in the process that starts ``num_processes`` > 1
    training processes: the stop signals (sent to every process of the job, this one included)
    do not end this process while the training processes save and stop. When they stopped
    (exit status :data:`STOPPED_EXIT_CODE`), this process runs the handler the signal had
    before (a cluster launcher's requeue) and exits with that status too. A failing training
    process is reported as ``launch()`` reports it (its traceback)."""
    if num_processes <= 1 or not signals:
        yield
        return
    start_resource_tracker(signals)  # before launch() starts it, unprotected
    with StopSignals(signals) as stop:
        try:
            yield
        except ProcessExitedException as e:
            if e.exit_code != STOPPED_EXIT_CODE:
                raise
            logging.getLogger(__name__).info(
                f"Training stopped with a checkpoint (exit status {STOPPED_EXIT_CODE})."
            )
            stop.run_previous_handler()  # if this process received the signal too
            raise SystemExit(STOPPED_EXIT_CODE) from None


def ignore_in_worker(signals: Sequence[signal.Signals]) -> Callable[[int], None]:
    """A DataLoader ``worker_init_fn`` that makes a worker ignore ``signals`` (sent to every
    process of a job, workers included): the main process stops training, and a worker killed
    by one would fail the iteration it is in. Such workers must be shut down by their loader
    (deleting its iterator does), not left to multiprocessing's exit handler, which terminates
    them with SIGTERM and waits."""
    return _IgnoreSignals(list(signals))


class _IgnoreSignals:
    """Picklable (workers may be started by spawn or forkserver)."""

    def __init__(self, signals):
        self.signals = [int(s) for s in signals]

    def __call__(self, worker_id: int) -> None:
        for signum in self.signals:
            signal.signal(signum, signal.SIG_IGN)


def resume_command(argv: Optional[Sequence[str]] = None) -> str:
    """The command line that resumes this run: this process's, with ``--resume`` placed before
    the config overrides (``KEY VALUE`` pairs end the command line of train_net.py)."""
    argv = list(sys.argv if argv is None else argv)
    if "--resume" not in argv:
        first_override = next(
            (i for i, arg in enumerate(argv) if i > 0 and arg.isupper() and "." in arg), len(argv)
        )
        argv.insert(first_override, "--resume")
    return shlex.join(["python"] + argv)
