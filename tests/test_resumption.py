"""Nothing lost when a run is stopped: a stop signal saves a checkpoint at the end of the
iteration (exit 75), and ``--resume`` continues the same run, bit for bit; a crashed process
ends a multi-process job; submitit's requeue resumes the same way. The end-to-end runs train the
tiny demo of tests/tiny_demo.py, compared with its uninterrupted run (``reference_weights``)."""

import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import (
    REPO_ROOT,
    TINY_MODEL,
    child_env,
    kill_all,
    load_config,
    load_script,
    run_command,
    run_script,
    tail_of,
)
from detectron2.engine import HookBase
from tiny_demo import assert_same_weights, stream_iterations, train_net_command

from pointrend_sem.data.resumable_loader import (
    ResumableTrainLoader,
    SampleOrder,
    process_positions,
    sample_randomness,
)
from pointrend_sem.engine import resumption
from pointrend_sem.engine.stop_signals import (
    STOPPED_EXIT_CODE,
    StopSignals,
    parse_signals,
    resume_command,
)
from pointrend_sem.errors import UserValueError

# --- the resumable loader ------------------------------------------------------------------


def test_each_epoch_is_a_permutation_drawn_from_the_seed():
    order = SampleOrder(7, seed=3)
    epochs = [[order[e * 7 + i] for i in range(7)] for e in range(3)]
    assert all(sorted(epoch) == list(range(7)) for epoch in epochs)
    assert epochs[0] != epochs[1]
    again = SampleOrder(7, seed=3)
    assert [again[p] for p in reversed(range(21))] == [x for e in epochs for x in e][::-1]
    assert [SampleOrder(7, seed=4)[p] for p in range(7)] != epochs[0]


def test_the_global_batch_is_the_same_samples_for_any_number_of_processes():
    for iteration in (0, 5):
        one = list(process_positions(iteration, 8, 0, 1))
        split = [p for rank in range(4) for p in process_positions(iteration, 8, rank, 4)]
        assert split == one == list(range(iteration * 8, iteration * 8 + 8))


def test_sample_randomness_depends_on_the_position_and_leaves_the_callers_state():
    torch.manual_seed(1)
    before = (random.random(), np.random.rand(), torch.rand(1).item())
    torch.manual_seed(1)
    draws = []
    for position in (5, 6, 5):
        with sample_randomness(seed=9, position=position):
            draws.append((random.random(), np.random.rand(), torch.rand(1).item()))
    after = (random.random(), np.random.rand(), torch.rand(1).item())
    assert draws[0] == draws[2] != draws[1]
    assert after[2] == before[2]  # torch's state came back (Python's and NumPy's too:)
    random.seed(0), np.random.seed(0)
    with sample_randomness(seed=9, position=1):
        pass
    assert random.random() == random.Random(0).random()
    assert np.random.rand() == np.random.RandomState(0).rand()


def noisy_mapper(dataset_dict):
    """A mapper with augmentation randomness from each global generator."""
    return (dataset_dict["i"], random.random(), float(np.random.rand()), torch.rand(1).item())


@pytest.mark.parametrize("workers", [0, 2])
def test_the_loader_started_at_an_iteration_reads_what_the_full_stream_reads(workers):
    dicts = [{"i": i} for i in range(5)]

    def batches(start, num_workers, count):
        loader = ResumableTrainLoader(
            dicts, noisy_mapper, seed=11, global_batch=4, num_workers=num_workers, rank=1,
            world_size=2,
        )  # fmt: skip
        loader.start_at(start, seed=11)
        iterator = iter(loader)
        return [next(iterator) for _ in range(count)]

    full = batches(0, 0, 6)
    assert [len(b) for b in full] == [2] * 6
    assert batches(0, workers, 6) == full
    assert batches(3, workers, 3) == full[3:]


def test_a_sampler_other_than_training_sampler_is_refused_in_one_line():
    from detectron2.config import get_cfg

    from pointrend_sem.data.resumable_loader import build_resumable_train_loader

    cfg = get_cfg()
    cfg.DATALOADER.SAMPLER_TRAIN = "RepeatFactorTrainingSampler"
    with pytest.raises(UserValueError, match="DATALOADER.SAMPLER_TRAIN .* 'TrainingSampler'"):
        build_resumable_train_loader(cfg, noisy_mapper, rank=0, world_size=1)


# --- signals ---------------------------------------------------------------------------------


def test_signal_names_are_checked():
    assert parse_signals(["SIGTERM", "sigusr1"]) == [signal.SIGTERM, signal.SIGUSR1]
    with pytest.raises(UserValueError, match="SOLVER.CHECKPOINT_ON_SIGNALS has 'SIGFOO'"):
        parse_signals(["SIGFOO"])


def test_the_first_signal_is_a_request_and_the_previous_handler_runs_after():
    calls = []
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: calls.append(signum))
    try:
        stop = StopSignals([signal.SIGUSR2]).install()
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGUSR2)
        assert stop.received == signal.SIGUSR2 and calls == []
        stop.run_previous_handler()
        assert calls == [signal.SIGUSR2]
        stop.uninstall()
    finally:
        signal.signal(signal.SIGUSR2, previous)


def test_a_second_signal_exits_at_once():
    script = (
        "import os, signal, time\n"
        "from pointrend_sem.engine.stop_signals import StopSignals\n"
        "stop = StopSignals([signal.SIGTERM]).install()\n"
        "os.kill(os.getpid(), signal.SIGTERM)\n"
        "print('requested', stop.requested, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGTERM)\n"
        "time.sleep(30)\n"
    )
    proc = run_command([sys.executable, "-c", script], timeout=60)
    assert proc.returncode == -signal.SIGTERM
    assert "requested True" in proc.stdout and "SIGTERM again: exiting now" in proc.stderr


def test_the_resume_command_puts_resume_before_the_config_overrides():
    argv = ["train_net.py", "--config-file", "c.yaml", "--num-gpus", "2", "SOLVER.MAX_ITER", "9"]
    assert resume_command(argv) == (
        "python train_net.py --config-file c.yaml --num-gpus 2 --resume SOLVER.MAX_ITER 9"
    )
    assert resume_command(argv[:3] + ["--resume"]).count("--resume") == 1


class RequestedStop:
    """What AbandonOnStop reads of the training's stop hook."""

    def __init__(self, requested):
        self.requested, self.abandoned_evaluation = requested, False

    def requested_everywhere(self):
        return self.requested

    def common_count(self, count):
        return count


def test_a_stop_request_abandons_an_evaluation_at_its_next_batch(monkeypatch):
    loader = resumption.AbandonOnStop([1, 2, 3])
    assert list(loader) == [1, 2, 3] and len(loader) == 3  # outside training
    stop = RequestedStop(False)
    monkeypatch.setattr(resumption, "_active_stop", stop)
    seen = []
    with pytest.raises(resumption.EvaluationAbandoned):
        for batch in loader:
            seen.append(batch)
            stop.requested = True
    assert seen == [1] and stop.abandoned_evaluation


class SignalInTheFirstStep(HookBase):
    """A hook that sends ``signum`` to this process during the first iteration of a run."""

    def __init__(self, signum):
        self.signum = signum

    def before_step(self):
        if self.trainer.iter == self.trainer.start_iter:
            os.kill(os.getpid(), self.signum)


def test_a_stop_in_the_first_iteration_saves_it_and_writes_its_metrics_once(tmp_path, monkeypatch):
    """A stop within detectron2's 3 timing warm-up iterations of a start (the first, with metrics
    written every iteration): a checkpoint at that iteration, exit status 75, one metrics row
    for it (a second write divided by zero in detectron2's console printer), the train loader
    released."""
    from pointrend_sem.engine import Trainer

    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "datasets"))
    output_dir = tmp_path / "out"
    opts = [*TINY_MODEL, "SOLVER.MAX_ITER", "3", "LOG_PERIOD", "1", "DATASETS.TEST", "()"]
    opts += ["SOLVER.CHECKPOINT_ON_SIGNALS", "('SIGUSR2',)", "OUTPUT_DIR", str(output_dir)]
    trainer = Trainer(load_config("demo_synthetic.yaml", opts))
    trainer.register_hooks([SignalInTheFirstStep(signal.SIGUSR2)])
    with pytest.raises(SystemExit) as stopped:
        trainer.train()
    assert stopped.value.code == STOPPED_EXIT_CODE
    assert (output_dir / "last_checkpoint").read_text() == "model_0000000.pth"
    assert stream_iterations(output_dir) == [0]
    assert trainer._trainer._data_loader_iter_obj is None
    assert signal.getsignal(signal.SIGUSR2) is signal.SIG_DFL


# --- end to end ------------------------------------------------------------------------------


def stop_when_training_reaches(proc, output_dir, iteration, send, *, rows_before=0, timeout=240):
    """Wait until ``output_dir``'s metrics show ``iteration`` in a row after the first
    ``rows_before`` ones (those of earlier runs in that folder), then ``send(proc)``."""
    deadline = time.time() + timeout
    while proc.poll() is None and time.time() < deadline:
        if max(stream_iterations(output_dir)[rows_before:], default=-1) >= iteration:
            send(proc)
            return
        time.sleep(0.05)
    raise AssertionError(f"training did not reach iteration {iteration}")


def signal_job_at(output_dir, log_name, signum, iteration, *extra, opts=()):
    """Run the tiny demo in a process group of its own (flags ``extra``, e.g. ``--resume``);
    once this run's metrics show ``iteration``, send ``signum`` to every process of the group, as
    SLURM does. Returns the exit status and the log."""
    rows_before = len(stream_iterations(output_dir))
    cmd, env = train_net_command(output_dir, *extra, opts=opts)
    log_path = output_dir.parent / f"{log_name}.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            cmd, cwd=REPO_ROOT, env=child_env(env), stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        stop_when_training_reaches(
            proc, output_dir, iteration, lambda p: os.killpg(p.pid, signum), rows_before=rows_before
        )
        returncode = proc.wait(timeout=120)
    finally:
        kill_all(proc)
    return returncode, tail_of(log_path, None)


def checkpointed_iteration(output_dir):
    checkpoint = (output_dir / "last_checkpoint").read_text().strip()
    return torch.load(output_dir / checkpoint, weights_only=False)["iteration"]


def assert_stopped_by(signum, returncode, log, output_dir, between):
    """A stop by ``signum``: exit status 75, a checkpoint at the stop iteration (returned), which
    lies in ``between`` (the iterations after one periodic checkpoint, before the next), and the
    log line that says so and how to resume."""
    assert returncode == STOPPED_EXIT_CODE, log[-3000:]
    iteration = checkpointed_iteration(output_dir)
    assert iteration in between, iteration
    line = next(line for line in log.splitlines() if "Resume with:" in line)
    assert f"{signum.name} " in line and f"stopped at iteration {iteration}" in line
    assert "Traceback" not in log and "resource_tracker" not in log, log[-3000:]
    return iteration


def resume_to_the_end(output_dir, from_iteration, *extra, opts=()):
    cmd, env = train_net_command(output_dir, "--resume", *extra, opts=opts)
    resumed = run_command(cmd, env=env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    log = resumed.stdout + resumed.stderr
    assert f"Starting training from iteration {from_iteration}" in log
    assert torch.load(output_dir / "model_final.pth", weights_only=False)["iteration"] == 7
    return log


@pytest.mark.slow(seconds=40)
def test_sigkill_then_sigterm_then_resume_is_the_uninterrupted_run(tmp_path, reference_weights):
    """One run stopped twice, as a cluster may: SIGKILL (no warning) right after the periodic
    checkpoint of iteration 3, resumed from it; then SIGTERM at an iteration before the next
    periodic checkpoint (7): a checkpoint at that iteration and exit 75; resumed to the end. Each
    resumption must be exact for the final weights to be the uninterrupted run's, bit for bit."""
    output_dir = tmp_path / "run"
    returncode, log = signal_job_at(output_dir, "killed", signal.SIGKILL, 3)
    assert returncode == -signal.SIGKILL, log[-3000:]
    assert checkpointed_iteration(output_dir) == 3

    returncode, log = signal_job_at(output_dir, "terminated", signal.SIGTERM, 4, "--resume")
    assert "Starting training from iteration 4" in log
    stopped_at = assert_stopped_by(signal.SIGTERM, returncode, log, output_dir, range(4, 7))

    resume_to_the_end(output_dir, stopped_at + 1)
    assert_same_weights(output_dir / "model_final.pth", reference_weights)


SYNC_BN = ["MODEL.RESNETS.NORM", "SyncBN", "MODEL.SEM_SEG_HEAD.NORM", "SyncBN"]
EVALUATED = ["DATASETS.TEST", "('synthetic_shapes_sem_seg_val',)"]
METRICS = os.path.join("inference", "synthetic_shapes_sem_seg_val", "sem_seg_evaluation.pth")


@pytest.mark.slow(seconds=90)
def test_two_processes_stop_on_sigusr1_resume_bitwise_exact_and_evaluate_as_one(tmp_path):
    """Two gloo processes with synchronized BN and a DataLoader worker each: stopped by SIGUSR1,
    resumed, the final weights are the uninterrupted 2-process run's, bit for bit. The resumed
    run ends with detectron2's evaluation in both processes, whose metrics equal those of
    evaluating the final weights in one process. (The uninterrupted run does not evaluate: an
    evaluation after the last checkpoint does not change the weights.)"""
    two = ["--num-gpus", "2", "--dist-url", "auto"]
    opts = SYNC_BN + EVALUATED
    reference = tmp_path / "reference"
    cmd, env = train_net_command(reference, *two, opts=SYNC_BN)
    proc = run_command(cmd, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert "SyncBN replaced by naiveSyncBN" in log
    assert "plain BatchNorm layers" not in log  # SyncBN: buffers stay per process (no broadcast)
    assert "Rank of current process: 0. World size: 2" in log

    stopped = tmp_path / "stopped"
    returncode, log = signal_job_at(stopped, "stopped", signal.SIGUSR1, 4, *two, opts=opts)
    stopped_at = assert_stopped_by(signal.SIGUSR1, returncode, log, stopped, range(4, 7))
    assert not (stopped / METRICS).exists()  # no evaluation before the end
    resume_to_the_end(stopped, stopped_at + 1, *two, opts=opts)
    assert_same_weights(stopped / "model_final.pth", reference / "model_final.pth")

    cmd, env = train_net_command(tmp_path / "eval1", "--eval-only", opts=opts)
    run_script(cmd + ["MODEL.WEIGHTS", str(stopped / "model_final.pth")], env=env, check=True)
    single = torch.load(tmp_path / "eval1" / METRICS, weights_only=False)
    assert torch.load(stopped / METRICS, weights_only=False) == single


NO_WORKERS = ["DATALOADER.NUM_WORKERS", "0"]

FAILING_RANK = """
import sys
import time
sys.path.insert(0, {repo!r})
import train_net
from detectron2.engine import HookBase
from detectron2.utils import comm
from pointrend_sem.engine import Trainer


class FailInRank1(HookBase):
    def after_step(self):
        if comm.get_rank() == 1 and self.trainer.iter == 2:
            with open({failed_at!r}, "w") as f:
                f.write(repr(time.time()))
            raise RuntimeError("injected failure of rank 1 at iteration 2")


build_hooks = Trainer.build_hooks
Trainer.build_hooks = lambda self: build_hooks(self) + [FailInRank1()]

if __name__ == "__main__":
    train_net.launch_main(train_net.argument_parser().parse_args())
"""


@pytest.mark.slow(seconds=17)
def test_a_failing_process_ends_the_job_and_names_its_error(tmp_path):
    script = tmp_path / "failing_rank.py"
    failed_at = tmp_path / "failed_at"
    script.write_text(FAILING_RANK.format(repo=REPO_ROOT, failed_at=str(failed_at)))
    # no DataLoader worker: fewer processes to start (their shutdown is tested with SIGUSR1)
    cmd, env = train_net_command(
        tmp_path / "out", "--num-gpus", "2", "--dist-url", "auto", opts=NO_WORKERS
    )
    cmd[1] = str(script)
    proc = run_command(cmd, env=env, timeout=240)
    ended_at = time.time()
    assert proc.returncode != 0
    # every process (the job's run_command waited for) is gone within 60 s of the failure
    assert ended_at - float(failed_at.read_text()) < 60
    tail = "\n".join(proc.stderr.strip().splitlines()[-40:])
    assert "Process 1 terminated with the following error" in tail, proc.stderr[-3000:]
    assert tail.strip().endswith("RuntimeError: injected failure of rank 1 at iteration 2")


@pytest.mark.slow(seconds=25)
def test_submitit_job_requeued_after_preemption_resumes_exactly(tmp_path, reference_weights):
    pytest.importorskip("submitit")
    submit_slurm = load_script("tools/submit_slurm.py")
    output_dir = tmp_path / "job"
    cmd, env = train_net_command(output_dir)
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        job = submit_slurm.submit(
            ["--cluster", "local", "--time", "20", "--folder", str(tmp_path / "submitit")] + cmd[2:]
        )
        # the job's task is the process that runs submitit's _submit; preempt it at iteration 4
        task = TaskProcess(job)
        stop_when_training_reaches(task, output_dir, 4, lambda t: t.send(signal.SIGUSR2))
        job.result()  # waits for the requeued job; raises if it failed
    finally:
        os.environ.clear()
        os.environ.update(saved)
    logs = "".join(p.read_text() for p in (tmp_path / "submitit").glob("*_log.*"))
    assert "Requeued job" in logs, logs[-3000:]
    assert "stopped at iteration" in logs, logs[-3000:]
    assert_same_weights(output_dir / "model_final.pth", reference_weights)


class TaskProcess:
    """The process of a local submitit job's task (a child of the job's controller)."""

    def __init__(self, job):
        self.controller = job._process

    def poll(self):
        return self.controller.poll()

    def send(self, signum):
        for pid in os.listdir("/proc"):
            if pid.isdigit() and self._parent(pid) == self.controller.pid:
                os.kill(int(pid), signum)

    @staticmethod
    def _parent(pid):
        try:
            with open(f"/proc/{pid}/stat") as f:
                return int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            return None


def test_an_evaluation_abandoned_by_a_stop_returns_no_results(monkeypatch):
    """Trainer.test during training: a stop request ends the evaluation before its first image;
    the evaluator never evaluates (nothing written), and the result is empty."""
    from detectron2.evaluation import DatasetEvaluator
    from detectron2.modeling import build_model

    from pointrend_sem.engine import Trainer

    calls = []

    class Recording(DatasetEvaluator):
        def process(self, inputs, outputs):
            calls.append("process")

        def evaluate(self):
            calls.append("evaluate")
            return {"sem_seg": {"mIoU": 1.0}}

    image = {"image": torch.zeros(3, 32, 32), "height": 32, "width": 32}
    loader = resumption.AbandonOnStop([[image]])
    monkeypatch.setattr(Trainer, "build_test_loader", classmethod(lambda cls, cfg, name: loader))
    monkeypatch.setattr(Trainer, "build_evaluator", classmethod(lambda cls, *a: Recording()))
    monkeypatch.setattr(resumption, "_active_stop", RequestedStop(True))
    cfg = load_config(opts=TINY_MODEL)
    assert Trainer.test(cfg, build_model(cfg)) == {}
    assert calls == []
