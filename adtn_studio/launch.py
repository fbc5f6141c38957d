"""Data-parallel runs from the command line: ``--nproc-per-node`` and friends start the run
through torchrun's launcher (``torch.distributed.launcher``), one worker process per GPU (or
per CPU share), each running ``adtn-studio train``/``resume`` on its part of the data.

This module only checks the arguments, starts the workers and turns their end into one line;
the training itself is ``engine.trainer.train``, which finds its rank in the environment.
Hidden options let a parent (the window) follow a run through its event log and steer it
through a control file; they work for one-process runs too.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import sys
import tempfile
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adtn_studio.cli import CommandError
from engine.choices import FailureKind, RunStatus
from engine.paths import RunPaths  # torch-free

if TYPE_CHECKING:
    from torch.distributed.elastic.multiprocessing.errors import ProcessFailure

    from engine.config import RunConfig

DEFAULT_PORT = 29500


def add_launch_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "data-parallel training (torchrun)",
        "Train on several GPUs, or several machines, with DistributedDataParallel. "
        "The batch size in the configuration is the global batch, shared by all processes. "
        "See docs/DISTRIBUTED.md.",
    )
    group.add_argument(
        "--nproc-per-node",
        type=int,
        metavar="N",
        help="processes on this machine, normally one per GPU",
    )
    group.add_argument(
        "--nnodes", type=int, metavar="M", default=1, help="machines taking part (default 1)"
    )
    group.add_argument(
        "--node-rank",
        type=int,
        metavar="R",
        default=0,
        help="this machine's number, 0 to M-1 (default 0)",
    )
    group.add_argument(
        "--master-addr",
        metavar="HOST",
        help="host name or address of machine 0 (default 127.0.0.1 on one machine)",
    )
    group.add_argument(
        "--master-port",
        type=int,
        metavar="P",
        help=f"a free TCP port on machine 0 (default: any free port on one "
        f"machine, {DEFAULT_PORT} on several)",
    )
    group.add_argument(
        "--max-restarts",
        type=int,
        metavar="K",
        default=0,
        help="restart the workers up to K times after a failure, each time from "
        "the last finished epoch (default 0)",
    )
    # for a parent process that follows and steers the run (the window)
    parser.add_argument("--event-log", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--control-file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--nice", type=int, default=0, help=argparse.SUPPRESS)


def lower_priority(args: argparse.Namespace) -> None:
    """Run at a lower CPU priority when asked (the window asks for its training child, so
    that on a busy machine the window's own short bursts of work are scheduled first)."""
    amount = getattr(args, "nice", 0)
    if amount > 0 and hasattr(os, "nice"):
        try:
            os.nice(amount)
        except OSError:
            pass  # not allowed here: train at the normal priority


def every_gpu(config: RunConfig, args: argparse.Namespace) -> None:
    """Device "cuda:all" without ``--nproc-per-node``: one process per GPU of this machine
    (a machine with one GPU trains in this process)."""
    if config.device != "cuda:all" or getattr(args, "nproc_per_node", None) is not None:
        return
    from engine.distributed import detect_environment

    if detect_environment() is not None:
        return  # already one of the workers
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise CommandError(
            "device 'cuda:all' was asked for, but CUDA is not available on "
            "this machine; use device 'auto' or 'cpu'"
        )
    if count > 1:
        args.nproc_per_node = count


def launch_requested(args: argparse.Namespace) -> bool:
    """Whether the options ask for a data-parallel launch; checks them (one-line errors)."""
    nproc = getattr(args, "nproc_per_node", None)
    if nproc is None:
        for flag in ("nnodes", "node_rank", "master_addr", "master_port"):
            value = getattr(args, flag, None)
            if value not in (None, 1 if flag == "nnodes" else 0):
                raise CommandError(f"--{flag.replace('_', '-')} needs --nproc-per-node")
        return False
    if nproc < 1:
        raise CommandError(f"--nproc-per-node must be at least 1 (got {nproc})")
    if args.nnodes < 1:
        raise CommandError(f"--nnodes must be at least 1 (got {args.nnodes})")
    if not 0 <= args.node_rank < args.nnodes:
        raise CommandError(
            f"--node-rank must be between 0 and {args.nnodes - 1} (got {args.node_rank})"
        )
    if args.max_restarts < 0:
        raise CommandError(f"--max-restarts must be 0 or more (got {args.max_restarts})")
    if args.master_port is not None and not 1 <= args.master_port <= 65535:
        raise CommandError(f"--master-port must be between 1 and 65535 (got {args.master_port})")
    if args.nnodes > 1 and not args.master_addr:
        raise CommandError("--nnodes > 1 needs --master-addr (the host name of machine 0)")
    if args.nnodes > 1 and getattr(args, "out", "given") is None:
        raise CommandError(
            "--nnodes > 1 needs --out RUN_DIR (the same path on every machine; machine 0 writes it)"
        )
    from engine.distributed import detect_environment

    if detect_environment() is not None:
        raise CommandError(
            "this process already runs under torchrun or srun; leave out --nproc-per-node"
        )
    return True


def _check_port(host: str, port: int) -> None:
    """Fail now, in one line, when the rendezvous port cannot be opened on this machine."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind((host if host not in ("localhost",) else "127.0.0.1", port))
    except OSError as exc:
        reason = "in use" if exc.errno in (98, 48, 10048) else exc.strerror or str(exc)
        raise CommandError(
            f"port {port} on {host} cannot be used for the rendezvous "
            f"({reason}); choose another with --master-port"
        ) from None


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def self_command() -> list[str]:
    """The command line that runs this program's subcommands: the frozen executable itself,
    or this interpreter with ``-m adtn_studio``."""
    if getattr(sys, "frozen", False):
        return [sys.executable]
    return [sys.executable, "-m", "adtn_studio"]


def worker_options(args: argparse.Namespace) -> list[str]:
    """The hidden options a worker passes on."""
    extra = []
    if getattr(args, "event_log", None):
        extra += ["--event-log", str(args.event_log)]
    if getattr(args, "control_file", None):
        extra += ["--control-file", str(args.control_file)]
    return extra  # --nice is not passed on: the workers inherit the launcher's priority


def launch(args: argparse.Namespace, config: RunConfig, run_dir: Path, resume: bool) -> int:
    """Run ``config`` into ``run_dir`` with ``args.nproc_per_node`` workers on this machine
    (of ``args.nnodes``); print the outcome; raise ``CommandError`` on failure or stop."""
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    addr = args.master_addr or "127.0.0.1"
    port = args.master_port
    if port is None:
        port = _free_port(addr) if args.nnodes == 1 else DEFAULT_PORT
    if args.node_rank == 0:
        _check_port(addr if args.nnodes == 1 else "0.0.0.0", port)
    try:
        if args.node_rank == 0:  # the other machines only read (their data, never the folder)
            run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CommandError(f"cannot create the run folder {run_dir} ({exc.strerror})") from None

    # Workers read the resolved configuration (all command-line changes applied) from a
    # temporary file: the run folder is rank 0's to write.
    handle, config_file = tempfile.mkstemp(prefix="adtn-launch-", suffix=".toml")
    os.close(handle)
    config.save(config_file)
    if resume:
        worker_args = ["resume", str(run_dir)]
        if config.device:
            worker_args += ["--device", config.device]
        if config.data_root:
            worker_args += ["--data-root", str(config.data_root)]
    else:
        worker_args = ["train", "--config", config_file, "--out", str(run_dir)]
    worker_args += worker_options(args)

    launch_config = LaunchConfig(
        min_nodes=args.nnodes,
        max_nodes=args.nnodes,
        nproc_per_node=args.nproc_per_node,
        run_id=f"adtn-{uuid.uuid4().hex[:12]}",
        rdzv_backend="static",
        rdzv_endpoint=f"{addr}:{port}",
        rdzv_configs={"rank": args.node_rank, "timeout": 900},
        max_restarts=args.max_restarts,
        monitor_interval=0.1,
        # Ctrl-C reaches the workers directly and stops them after their batch; the
        # launcher must not kill them for it
        signals_to_handle="SIGTERM,SIGHUP,SIGQUIT",
        logs_specs=DefaultLogsSpecs(log_dir=os.devnull),
    )
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # as torchrun does: N processes share cores
    # torchrun's agent logs each event of the job; the one line below says what matters
    for name in list(logging.root.manager.loggerDict):
        if name.startswith(("torch.distributed.elastic", "torch.distributed.launcher")):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    print(
        f"starting {args.nproc_per_node} process(es) on machine {args.node_rank} of "
        f"{args.nnodes}, rendezvous {addr}:{port} -> {run_dir}",
        file=sys.stderr,
    )
    previous = signal.signal(signal.SIGINT, _note_interrupt)
    try:
        program, *prefix = self_command()
        elastic_launch(launch_config, program)(*prefix, *worker_args)
    except ChildFailedError as exc:
        # A worker stopped mid-epoch leaves its progress bar without a line end on the shared
        # terminal: end that line so that the reason reads on a line of its own.
        print(file=sys.stderr, flush=True)
        raise CommandError(_failure_line(exc.failures, run_dir, args)) from None
    except SignalException as exc:  # the launcher was told to end (SIGTERM, SIGHUP)
        how = f"stopped by {signal.Signals(exc.sigval).name}"
        if args.node_rank == 0:
            _settle_summary(run_dir, RunStatus.STOPPED, FailureKind.SIGNAL, how)
        raise CommandError(
            f"{how}; the workers were stopped too; continue with: adtn-studio "
            f"resume {run_dir} --nproc-per-node {args.nproc_per_node}"
        ) from None
    except (RuntimeError, ValueError) as exc:  # the rendezvous itself failed
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CommandError(f"the workers could not meet at {addr}:{port} ({first})") from None
    finally:
        signal.signal(signal.SIGINT, previous)
        Path(config_file).unlink(missing_ok=True)
    if args.node_rank != 0:
        return 0
    summary = _read_summary(run_dir)
    status = summary.get("status")
    if status == RunStatus.STOPPED:
        raise CommandError(
            f"stopped after epoch {summary.get('epochs_completed', 0)} of "
            f"{summary.get('epochs', '?')}; continue with: adtn-studio resume "
            f"{run_dir} --nproc-per-node {args.nproc_per_node}"
        )
    return 0


def _note_interrupt(signum, frame) -> None:
    print("stopping every process after its current batch", file=sys.stderr)


def _read_summary(run_dir: Path) -> dict[str, Any]:
    try:
        data = json.loads(RunPaths(run_dir).summary.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _settle_summary(run_dir: Path, status: str, kind: FailureKind, message: str) -> None:
    """Rank 0 was ended before it could say how the run ended: the run folder must not
    claim that it still runs."""
    summary = _read_summary(run_dir)
    if summary.get("status") != RunStatus.RUNNING:
        return
    summary.update(status=status, error_kind=kind.value, error_message=message)
    from engine.runs import write_summary

    write_summary(RunPaths(run_dir).summary, summary)


def _failure_line(
    failures: dict[int, ProcessFailure], run_dir: Path, args: argparse.Namespace
) -> str:
    """One line naming the rank that ended the job first, and where the run stands."""
    summary = _read_summary(run_dir) if args.node_rank == 0 else {}
    peer_lost = summary.get("error_kind") == FailureKind.DISTRIBUTED

    def blame(item) -> tuple:
        # The cause: a worker killed by a signal (the launcher stops the others with SIGTERM),
        # then one that failed on its own (not rank 0 reporting a lost peer).
        rank, failure = item
        if failure.exitcode < 0 and failure.exitcode != -signal.SIGTERM:
            order = 0
        elif failure.exitcode > 0 and not (rank == 0 and peer_lost):
            order = 1
        else:
            order = 2
        return order, failure.timestamp, rank

    rank, failure = min(failures.items(), key=blame)
    if failure.exitcode < 0:
        try:
            how = f"was killed by {signal.Signals(-failure.exitcode).name}"
        except ValueError:
            how = f"was killed by signal {-failure.exitcode}"
    else:
        how = f"exited with code {failure.exitcode}"
    cause = (
        summary.get("error_message")
        if summary.get("status") == RunStatus.FAILED and not peer_lost
        else ""
    )
    done = summary.get("epochs_completed", 0)
    if args.node_rank == 0:
        _settle_summary(
            run_dir, RunStatus.FAILED, FailureKind.DISTRIBUTED, f"worker rank {rank} {how}"
        )
    where = (
        f" The run folder keeps epoch {done}; continue with: adtn-studio resume {run_dir} "
        f"--nproc-per-node {args.nproc_per_node}"
        if done
        else ""
    )
    detail = f" ({cause})" if cause else ""
    return (
        f"worker rank {rank} (pid {failure.pid}) {how}; every process of the job was "
        f"stopped{detail}.{where}"
    )
