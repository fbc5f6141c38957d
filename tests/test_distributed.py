"""Data-parallel training: environment detection, sharding, and real two-process runs on the
CPU with gloo through ``adtn-studio train --nproc-per-node 2`` (torchrun's launcher).

The two-process runs start fresh interpreters (a few seconds each on a small machine), so
they are few and short: one equivalence run, one killed-worker run followed by a resume.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from adtn_studio.__main__ import main
from engine.config import RunConfig
from engine.distributed import (
    DistributedSetupError,
    ShardedBatches,
    detect_environment,
    shard_bounds,
)
from engine.event_log import EventLogReader, write_control
from engine.trainer import train

CONFIG = """\
name = "ddp"
model = "fc2"
dataset = "synthetic"
epochs = {epochs}
batch_size = 64
lr = 0.003
seed = 7
device = "cpu"
limit_train = {limit_train}
limit_test = 101
layers = [{{name = "fc1", depth = 2}}]
"""


def write_config(path: Path, epochs: int = 2, limit_train: int = 251) -> Path:
    path.write_text(CONFIG.format(epochs=epochs, limit_train=limit_train), encoding="utf-8")
    return path


def adtn(*args, **kwargs) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen(
        [sys.executable, "-m", "adtn_studio", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        **kwargs,
    )


def model_tensors(run_dir: Path) -> dict[str, torch.Tensor]:
    tensors = load_file(str(run_dir / "checkpoints" / "last.safetensors"))
    return {name: value for name, value in tensors.items() if name.startswith("model.")}


def assert_same_weights(a: Path, b: Path, atol: float = 1e-6) -> None:
    first, second = model_tensors(a), model_tensors(b)
    assert first.keys() == second.keys() and first
    for name in first:
        torch.testing.assert_close(first[name], second[name], rtol=1e-5, atol=atol, msg=name)


# -- the environment -----------------------------------------------------------------------


def test_environment_of_torchrun_and_slurm_is_detected():
    assert detect_environment({}) is None
    assert detect_environment({"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}) is None
    env = detect_environment(
        {
            "RANK": "3",
            "WORLD_SIZE": "4",
            "LOCAL_RANK": "1",
            "MASTER_ADDR": "node0",
            "MASTER_PORT": "1234",
        }
    )
    assert (env.rank, env.world_size, env.local_rank, env.launcher) == (3, 4, 1, "torchrun")
    assert (env.master_addr, env.master_port) == ("node0", 1234)
    slurm = {
        "SLURM_PROCID": "5",
        "SLURM_STEP_NUM_TASKS": "8",
        "SLURM_LOCALID": "1",
        "MASTER_ADDR": "gpu01",
    }
    env = detect_environment(slurm)
    assert (env.rank, env.world_size, env.local_rank, env.launcher) == (5, 8, 1, "slurm")
    assert env.master_port == 29500
    # a batch script itself (no job step of several tasks) is a plain run
    assert detect_environment({"SLURM_PROCID": "0", "SLURM_NTASKS": "8"}) is None
    # torchrun started by srun: torchrun's numbering wins
    env = detect_environment({**slurm, "RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"})
    assert (env.rank, env.world_size, env.launcher) == (1, 2, "torchrun")
    with pytest.raises(DistributedSetupError, match="MASTER_ADDR"):
        detect_environment({k: v for k, v in slurm.items() if k != "MASTER_ADDR"})
    with pytest.raises(DistributedSetupError, match="outside"):
        detect_environment({"RANK": "2", "WORLD_SIZE": "2"})


def test_shares_cover_each_global_batch_once_and_weights_average_to_the_mean():
    for count in (1, 2, 7, 64, 65):
        for world in (1, 2, 3, 5):
            bounds = [shard_bounds(count, rank, world) for rank in range(world)]
            assert bounds[0][0] == 0 and bounds[-1][1] == count
            assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
            sizes = [stop - start for start, stop in bounds]
            assert max(sizes) - min(sizes) <= 1

    class Batches:  # a global batch order as BatchIterator gives it: 5 + 5 + 3 examples
        num_examples = 13

        def batch_bounds(self):
            return [(0, 5), (5, 10), (10, 13)]

        def epoch(self, epoch):
            values = torch.arange(13.0)
            for start, stop in self.batch_bounds():
                yield values[start:stop], values[start:stop]

    shards = [ShardedBatches(Batches(), rank, 2) for rank in range(2)]
    taken, weights = [], []
    for shard in shards:
        for images, _ in shard.epoch(1):
            taken.extend(images.tolist())
            weights.append((len(images), shard.loss_weight, shard.global_size))
    assert sorted(taken) == list(range(13)) and len(shards[0]) == 3
    # mean over ranks of (weight × share mean) is the global mean: weight = world × n / N
    for size, weight, total in weights:
        assert weight == pytest.approx(2 * size / total)


# -- bad arguments ------------------------------------------------------------------------


def test_zero_processes_and_a_busy_port_give_one_line_errors(tmp_path, capsys):
    config = write_config(tmp_path / "run.toml")
    runs_before = set(Path(os.environ["ADTN_RUNS_DIR"]).glob("*"))
    assert main(["train", "--config", str(config), "--nproc-per-node", "0"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == "adtn-studio train: --nproc-per-node must be at least 1 (got 0)"
    assert set(Path(os.environ["ADTN_RUNS_DIR"]).glob("*")) == runs_before  # no folder made

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code = main(
            [
                "train",
                "--config",
                str(config),
                "--out",
                str(tmp_path / "run"),
                "--nproc-per-node",
                "2",
                "--master-port",
                str(port),
            ]
        )
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1, err
    assert f"port {port}" in err and "in use" in err and "--master-port" in err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_launch_options_without_nproc_are_refused(tmp_path, capsys):
    config = write_config(tmp_path / "run.toml")
    assert main(["train", "--config", str(config), "--nnodes", "2"]) == 1
    assert capsys.readouterr().err.strip() == "adtn-studio train: --nnodes needs --nproc-per-node"


# -- two processes with gloo --------------------------------------------------------------


def test_two_processes_match_one_process_and_only_rank_0_writes(tmp_path, one_torch_thread):
    config_path = write_config(tmp_path / "run.toml", epochs=2, limit_train=251)
    two = tmp_path / "two"
    job = adtn(
        "train",
        "--config",
        config_path,
        "--out",
        two,
        "--nproc-per-node",
        2,
        "--event-log",
        two / "events.jsonl",
    )
    out, err = job.communicate(timeout=240)
    assert job.returncode == 0, err

    one = tmp_path / "one"
    summary = train(RunConfig.load(config_path), one)
    assert summary.status == "finished"
    # 251 examples: the last global batch (59) splits 30 + 29, weighted to the exact mean
    assert_same_weights(one, two)
    dist_summary = json.loads((two / "summary.json").read_text())
    assert dist_summary["status"] == "finished" and "×2 (gloo)" in dist_summary["device"]
    assert dist_summary["test_acc"] == pytest.approx(summary.test_acc, abs=1e-6)
    rows = (two / "metrics.csv").read_text().splitlines()
    assert len(rows) == 1 + 2  # header and one row per epoch: one writer

    # rank 0 alone reports: one summary on stdout, one start and one end in the event log
    assert out.count("run folder:") == 1
    events = EventLogReader(two / "events.jsonl").read()
    names = [type(event).__name__ for event in events]
    assert names.count("RunStarted") == 1 and names.count("RunEnded") == 1
    assert names.count("EpochEnded") == 2
    assert "global batch size 64" in events[0].parallel and "2 processes" in events[0].parallel
    assert "global batch size 64" in err
    leftovers = [
        p.name
        for p in two.rglob("*")
        if p.name.endswith(".tmp") or p.name == "run.lock" or p.name.startswith(".")
    ]
    assert leftovers == []


def _worker_pid(launcher_pid: int, rank: int) -> int | None:
    """The pid of the worker of global rank ``rank`` among the launcher's children."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            environ = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if parent == launcher_pid and f"RANK={rank}".encode() in environ:
            return int(entry.name)
    return None


def kill_rank_1_after_an_epoch(tmp_path: Path, *launch_options) -> tuple:
    """Start a 40-epoch two-process run, hold it once an epoch is saved, kill rank 1 (then
    let the run go on); return the finished job's (returncode, stdout, stderr), the killed
    pid and the run folder."""
    config_path = write_config(tmp_path / "run.toml", epochs=40, limit_train=130)
    run = tmp_path / "run"
    control = tmp_path / "control.json"
    write_control(control, "run")
    job = adtn(
        "train",
        "--config",
        config_path,
        "--out",
        run,
        "--nproc-per-node",
        2,
        "--event-log",
        run / "events.jsonl",
        "--control-file",
        control,
        *launch_options,
    )
    reader = EventLogReader(run / "events.jsonl")
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:  # once an epoch is saved, hold every rank
        if any(type(e).__name__ == "EpochEnded" for e in reader.read()):
            write_control(control, "pause")
            break
        assert job.poll() is None, job.communicate()[1]
        time.sleep(0.02)
    # the ranks are held once no event has come for half a second
    quiet_since = time.monotonic()
    while time.monotonic() - quiet_since < 0.5 and time.monotonic() < deadline:
        if reader.read():
            quiet_since = time.monotonic()
        time.sleep(0.02)
    victim = _worker_pid(job.pid, 1)
    assert victim is not None
    os.kill(victim, signal.SIGKILL)
    write_control(control, "run")  # restarted workers must not find the run held
    out, err = job.communicate(timeout=180)
    return job.returncode, out, err, victim, run, config_path


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the worker through /proc")
def test_a_killed_worker_ends_the_job_naming_its_rank_and_the_run_resumes(
    tmp_path, one_torch_thread
):
    code, out, err, victim, run, config_path = kill_rank_1_after_an_epoch(tmp_path)
    last_line = err.strip().splitlines()[-1]
    assert code == 1
    assert last_line.startswith(
        f"adtn-studio train: worker rank 1 (pid {victim}) was killed "
        f"by SIGKILL; every process of the job was stopped"
    )
    assert f"adtn-studio resume {run}" in last_line
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["epochs_completed"] >= 1
    assert summary["epochs_completed"] < 40

    # resume the distributed run in one process; it ends where an uninterrupted run ends
    resumed = main(["resume", str(run), "--device", "cpu"])
    assert resumed == 0
    whole = train(RunConfig.load(config_path), tmp_path / "whole")
    assert whole.status == "finished"
    # 40 epochs of Adam let the last-bit differences of the two summation orders (two
    # processes against one) grow, up to about 3e-5 with the native gate passes' rounding; a
    # lost epoch or optimiser state would differ by orders of magnitude more.
    assert_same_weights(run, tmp_path / "whole", atol=1e-4)


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the worker through /proc")
def test_with_max_restarts_torchrun_restarts_the_workers_and_the_run_continues(
    tmp_path, one_torch_thread
):
    code, out, err, victim, run, config_path = kill_rank_1_after_an_epoch(
        tmp_path, "--max-restarts", 1
    )
    assert code == 0, err[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["epochs_completed"] == 40
    assert "resuming at epoch" in err  # the restarted rank 0 continued the saved run
    train(RunConfig.load(config_path), tmp_path / "whole")
    # 40 epochs on two processes against one: the last-bit differences of the two summation
    # orders grow with every step, here to about 3e-5 (the size depends on the ADTN kernel's
    # rounding, not on the resume); a lost epoch or optimiser state would differ by far more.
    assert_same_weights(run, tmp_path / "whole", atol=1e-4)


# -- the device list ---------------------------------------------------------------------


def test_several_gpus_offer_a_data_parallel_choice(monkeypatch):
    from engine import trainer

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: f"GPU model {index}")
    choices = dict(trainer.list_devices())
    assert choices["cuda:all"] == "all 3 GPUs (data-parallel)"
    assert {"cuda:0", "cuda:1", "cuda:2", "cpu"} <= set(choices)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert "cuda:all" not in dict(trainer.list_devices())  # one GPU: nothing to share


def test_cuda_all_is_a_valid_device_that_needs_cuda(tmp_path, capsys):
    config = RunConfig.load(write_config(tmp_path / "run.toml")).replace(device="cuda:all")
    assert config.validate().device == "cuda:all"
    config.save(tmp_path / "all.toml")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert (
        main(["train", "--config", str(tmp_path / "all.toml"), "--out", str(tmp_path / "run")]) == 1
    )
    err = capsys.readouterr().err.strip()
    assert err == (
        "adtn-studio train: device 'cuda:all' was asked for, but CUDA is not "
        "available on this machine; use device 'auto' or 'cpu'"
    )


def test_tasks_started_the_way_srun_starts_them_train_together(tmp_path, one_torch_thread):
    config_path = write_config(tmp_path / "run.toml", epochs=1, limit_train=200)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    tasks = []
    for rank in range(2):  # what srun sets for each task of a two-task job step
        env = dict(
            os.environ,
            SLURM_PROCID=str(rank),
            SLURM_STEP_NUM_TASKS="2",
            SLURM_LOCALID=str(rank),
            SLURM_NTASKS="2",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            OMP_NUM_THREADS="1",
            TQDM_DISABLE="1",
        )
        tasks.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "adtn_studio",
                    "train",
                    "--config",
                    str(config_path),
                    "--out",
                    str(tmp_path / "run"),
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
        )
    outputs = [task.communicate(timeout=240) for task in tasks]
    assert [task.returncode for task in tasks] == [0, 0], outputs
    assert "run folder:" in outputs[0][0] and outputs[1] == ("", "")  # rank 1 says nothing
    assert "data-parallel on 2 processes (gloo, slurm)" in outputs[0][1]
    train(RunConfig.load(config_path), tmp_path / "one")
    assert_same_weights(tmp_path / "one", tmp_path / "run")
