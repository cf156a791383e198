#!/usr/bin/env python
"""Submit train_net.py to SLURM with submitit; a preempted or timed-out job checkpoints, requeues
itself and resumes exactly (docs/cluster.md).

python tools/submit_slurm.py --config-file configs/cityscapes_r50.yaml \\
    --nodes 1 --gpus-per-node 4 --partition gpu --time 1440 [KEY VALUE ...]

One SLURM task per node runs detectron2's ``launch()`` with one process per GPU, the nodes
meeting at the first node's host name. SLURM sends SIGUSR2 ``--signal-delay`` seconds before the
time limit: training saves a checkpoint at the end of its iteration (``CheckpointOnSignal``) and
submitit requeues the job, which resumes from it (every job runs train_net.py with ``--resume``).
``--cluster local`` runs the job on this machine through submitit's local executor (a test of
the whole path without a cluster).
"""

import argparse
import logging
import os
import signal
import sys
import zlib

import submitit

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

import train_net  # noqa: E402  (the repository's train_net.py)

# the range of the TCP port the nodes of a job meet on (one per job id, so jobs on a node differ)
PORT_BASE, PORT_RANGE = 20000, 20000


class TrainingJob(submitit.helpers.Checkpointable):
    """``train_net.py <train_args> --resume`` on the nodes of a submitit job. Checkpointable:
    on the preemption signal submitit calls :meth:`checkpoint` (after training saved its own)
    and requeues this same job."""

    def __init__(self, train_args, gpus_per_node: int):
        self.train_args = list(train_args)
        self.gpus_per_node = gpus_per_node

    def __call__(self):
        env = submitit.JobEnvironment()
        args = train_net.argument_parser().parse_args(self.train_args)
        args.resume = True  # the first job starts afresh: there is no checkpoint yet
        args.num_gpus, args.num_machines, args.machine_rank = (
            self.gpus_per_node,
            env.num_nodes,
            env.node,
        )
        port = PORT_BASE + zlib.crc32(str(env.job_id).encode()) % PORT_RANGE
        args.dist_url = f"tcp://{env.hostnames[0]}:{port}"
        args.opts = with_stop_signal(args, preemption_signal())
        logging.getLogger(__name__).info(f"{env}: train_net.py {' '.join(self.train_args)}")
        return train_net.launch_main(args)


def preemption_signal() -> signal.Signals:
    """The signal submitit's jobs receive before their time limit (SIGUSR2 unless
    ``SUBMITIT_PREEMPT_SIGNAL`` says otherwise)."""
    return signal.Signals["SIG" + submitit.JobEnvironment.USR_SIG]


def with_stop_signal(args, extra: signal.Signals) -> list:
    """``args.opts`` with ``extra`` added to the config's ``SOLVER.CHECKPOINT_ON_SIGNALS``."""
    names = list(train_net.setup(args, log=False).SOLVER.CHECKPOINT_ON_SIGNALS)
    if extra.name not in names:
        names.append(extra.name)
    return list(args.opts) + ["SOLVER.CHECKPOINT_ON_SIGNALS", repr(tuple(names))]


def argument_parser():
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Other arguments (--config-file, --datasets-file, KEY VALUE ...): train_net.py's.",
    )
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--gpus-per-node", type=int, default=1)
    parser.add_argument("--cpus-per-gpu", type=int, default=8)
    parser.add_argument("--mem-per-gpu", default="", help="e.g. 40G; SLURM's default if unset")
    parser.add_argument("--partition", default="", help="SLURM partition")
    parser.add_argument("--account", default="", help="SLURM account")
    parser.add_argument("--qos", default="", help="SLURM quality of service")
    parser.add_argument("--constraint", default="", help="SLURM constraint, e.g. volta32gb")
    parser.add_argument("--time", type=int, default=24 * 60, help="time limit of a job, minutes")
    parser.add_argument(
        "--signal-delay",
        type=int,
        default=120,
        help="seconds before the time limit at which the job checkpoints and requeues",
    )
    parser.add_argument(
        "--max-requeues", type=int, default=20, help="time-outs after which the job is not requeued"
    )
    parser.add_argument("--job-name", default="pointrend_sem")
    parser.add_argument(
        "--folder", default="", help="submitit's logs and job files (default: OUTPUT_DIR/submitit)"
    )
    parser.add_argument(
        "--cluster",
        default=None,
        choices=["slurm", "local"],
        help="submitit's executor: slurm (default where sbatch exists), local (this machine)",
    )
    return parser


def build_executor(args, folder: str) -> submitit.AutoExecutor:
    executor = submitit.AutoExecutor(
        folder=folder, cluster=args.cluster, slurm_max_num_timeout=args.max_requeues
    )
    additional = {}
    if args.account:
        additional["account"] = args.account
    executor.update_parameters(
        name=args.job_name,
        nodes=args.nodes,
        tasks_per_node=1,  # detectron2's launch() starts one process per GPU
        gpus_per_node=args.gpus_per_node,
        cpus_per_task=args.cpus_per_gpu * args.gpus_per_node,
        timeout_min=args.time,
        slurm_signal_delay_s=args.signal_delay,
        **({"slurm_partition": args.partition} if args.partition else {}),
        **({"slurm_qos": args.qos} if args.qos else {}),
        **({"slurm_constraint": args.constraint} if args.constraint else {}),
        **({"slurm_mem_per_gpu": args.mem_per_gpu} if args.mem_per_gpu else {}),
        **({"slurm_additional_parameters": additional} if additional else {}),
    )
    return executor


def submit(argv=None):
    """Submit the job; returns it (``job.result()`` waits for its end)."""
    args, train_args = argument_parser().parse_known_args(argv)
    train_config = train_net.argument_parser().parse_args(train_args)
    if train_config.eval_only or train_config.num_gpus != 1 or train_config.resume:
        raise SystemExit(
            "error: give submit_slurm.py --nodes/--gpus-per-node, not train_net.py's "
            "--num-gpus/--eval-only/--resume (every job resumes)"
        )
    output_dir = train_net.setup(train_config, log=False).OUTPUT_DIR
    folder = args.folder or os.path.join(output_dir, "submitit")
    # the job unpickles TrainingJob and imports train_net: both importable wherever it starts
    # (sbatch and the local executor pass this environment on)
    paths = [REPO_ROOT, os.path.join(REPO_ROOT, "tools"), os.environ.get("PYTHONPATH", "")]
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    job = build_executor(args, folder).submit(TrainingJob(train_args, args.gpus_per_node))
    print(f"Submitted job {job.job_id}: logs in {folder}, checkpoints in {output_dir}")
    return job


if __name__ == "__main__":
    from pointrend_sem.errors import main_with_one_line_errors

    main_with_one_line_errors(submit)()
