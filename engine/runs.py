"""Run folders: their layout, the files written into them, listing them, and rebuilding the
trained model of one.

A run folder holds ``config.toml`` (the resolved configuration), ``metrics.csv`` (one row per
epoch), ``summary.json``, ``checkpoints/{last,best}.{safetensors,json}`` and ``log.txt``
(what the engine logged, appended by each session); every file but the log is written
atomically. While a process trains in it, ``run.lock`` names that process (see ``RunLock``).
"""

from __future__ import annotations

import csv
import io
import json
import os
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from engine.checkpoint import CheckpointError, load_checkpoint

# The run folder's names and paths are torch-free (engine.choices, engine.paths); they stay
# importable from here.
from engine.choices import CHECKPOINT_KINDS, METRIC_COLUMNS, RunStatus  # noqa: F401
from engine.compression import CompressionReport, compress, plan_compression
from engine.config import ConfigError, RunConfig
from engine.errors import RunFolderBusy
from engine.paths import CONFIG_FILE, RunPaths, atomic_write_text, default_runs_root


def new_run_dir(config: RunConfig, root: str | Path | None = None) -> Path:
    """Create and return a fresh folder ``<root>/<date>-<time>-<run name>`` (root defaults to
    ``engine.paths.default_runs_root()``)."""
    root = Path(root) if root else default_runs_root()
    stem = time.strftime("%Y%m%d-%H%M%S") + "-" + _safe_name(config.run_name)
    for suffix in ["", *(f"-{n}" for n in range(2, 1000))]:
        candidate = root / (stem + suffix)
        try:
            candidate.mkdir(parents=True)
            return candidate
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a new run folder under {root}")


def write_metrics(path: str | Path, history: Iterable[dict[str, Any]]) -> None:
    """Write the per-epoch ``history`` rows as CSV with ``METRIC_COLUMNS``."""
    buffer = io.StringIO()
    writer = csv.DictWriter(
        buffer, fieldnames=METRIC_COLUMNS, extrasaction="ignore", lineterminator="\n"
    )
    writer.writeheader()
    writer.writerows(history)
    atomic_write_text(path, buffer.getvalue())


def write_summary(path: str | Path, summary: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(summary, indent=2) + "\n")


def read_summary(path: str | Path) -> dict[str, Any] | None:
    """The summary, or None when the file is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


# -- listing ----------------------------------------------------------------------------


@dataclass(frozen=True)
class RunRecord:
    """One run folder as the history view lists it."""

    path: str
    name: str
    model: str
    dataset: str
    started_at: str  # ISO 8601, local time
    status: str  # "running", "interrupted" (killed), "finished", "stopped", "failed", "unreadable"
    epochs_completed: int
    epochs: int
    params_total: int
    dense_params_total: int
    compression_ratio: float
    best_test_acc: float
    test_acc: float
    encoding: str = ""  # the encoding of its compressed layers ("mixed", "dense" without any)


def list_runs(root: str | Path | None = None) -> list[RunRecord]:
    """Every run folder (one with a ``config.toml``) directly under ``root``, and the runs of
    each comparison folder under it (``compare-*/runs/*``), newest first. ``root`` defaults
    to ``engine.paths.default_runs_root()``."""
    root = Path(root) if root else default_runs_root()
    if not root.is_dir():
        return []
    folders = []
    for folder in root.iterdir():
        if (folder / CONFIG_FILE).is_file():
            folders.append(folder)
        elif (folder / "compare.json").is_file() and (folder / "runs").is_dir():
            folders += [run for run in (folder / "runs").iterdir() if (run / CONFIG_FILE).is_file()]
    records = [_run_record(folder) for folder in folders]
    return sorted(records, key=lambda record: record.started_at, reverse=True)


def config_encoding(config: RunConfig) -> str:
    """One word for a run's encodings: the shared one, "mixed", or "dense" (none)."""
    kinds = {spec.encoding for spec in config.layers}
    return kinds.pop() if len(kinds) == 1 else ("mixed" if kinds else "dense")


def _run_record(folder: Path) -> RunRecord:
    paths = RunPaths(folder)
    summary = read_summary(paths.summary) or {}
    try:
        config = RunConfig.load(paths.config)
        model, dataset, name = config.model, config.dataset, config.run_name
        encoding = config_encoding(config)
    except ConfigError:
        model = dataset = "?"
        encoding = ""
        name, summary = folder.name, {**summary, "status": RunStatus.UNREADABLE}
    started = summary.get("started_at") or time.strftime(
        "%Y-%m-%dT%H:%M:%S", time.localtime(paths.config.stat().st_mtime)
    )
    return RunRecord(
        path=str(folder),
        name=name,
        model=model,
        dataset=dataset,
        started_at=started,
        status=_live_status(summary),
        epochs_completed=int(summary.get("epochs_completed", 0)),
        epochs=int(summary.get("epochs", 0)),
        params_total=int(summary.get("params_total", 0)),
        dense_params_total=int(summary.get("dense_params_total", 0)),
        compression_ratio=float(summary.get("compression_ratio", 0.0)),
        best_test_acc=float(summary.get("best_test_acc", 0.0)),
        test_acc=float(summary.get("test_acc", 0.0)),
        encoding=encoding,
    )


def _live_status(summary: dict) -> str:
    """The summary's status, except that a "running" run whose process on this machine has
    ended was killed: it is "interrupted" (and can be resumed). ``RunLock`` uses the same
    test, so the list and ``resume`` agree on which runs are still running."""
    status = summary.get("status", "unknown")
    try:
        pid = int(summary.get("pid") or 0)
    except (TypeError, ValueError):
        pid = 0
    if status != RunStatus.RUNNING or pid <= 0 or summary.get("host") != socket.gethostname():
        return status
    return status if process_exists(pid) else RunStatus.INTERRUPTED


def process_exists(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine (True when that cannot be told)."""
    if pid <= 0:
        return False
    if os.name == "nt":  # os.kill(pid, 0) would terminate the process on Windows
        return _windows_process_exists(pid)
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except OSError:  # exists but belongs to someone else, or cannot be asked
        return True
    return True


def _windows_process_exists(pid: int) -> bool:
    import ctypes

    kernel32 = ctypes.windll.kernel32  # type: ignore[attr-defined]
    handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
    if not handle:
        return kernel32.GetLastError() == 5  # access denied: it exists
    try:
        code = ctypes.c_ulong()
        kernel32.GetExitCodeProcess(handle, ctypes.byref(code))
        return code.value == 259  # STILL_ACTIVE
    finally:
        kernel32.CloseHandle(handle)


# -- one process per run folder -----------------------------------------------------------


class RunLock:
    """Exclusive use of a run folder by one process, held while it trains there.

    ``run.lock`` holds the owner's pid, host and start time as JSON. It is created with
    O_EXCL, so of two processes starting at once exactly one gets it. A lock whose process on
    this host is gone (killed, crashed) is stale: it is taken over, by renaming it aside first
    so that two processes cannot both take over the same stale lock. A lock from another host
    cannot be checked; the message says which file to delete if that run is over.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.path = RunPaths(Path(run_dir)).lock
        self.held = False

    def acquire(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        owner = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                self._take_over_if_stale()
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(owner, handle)
            self.held = True
            self._refuse_if_summary_says_running()
            return self
        raise RunFolderBusy(f"{self.path.parent} is in use by another process; try again")

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def _refuse_if_summary_says_running(self) -> None:
        """A run listed as "running" (its summary names a live process here, e.g. one started
        before run folders were locked) is not taken over either: the list and this lock
        give the same answer."""
        summary = read_summary(RunPaths(self.path.parent).summary)
        if not isinstance(summary, dict) or _live_status(summary) != RunStatus.RUNNING:
            return
        if summary.get("pid") == os.getpid():
            return  # this process's own earlier run (the window trains in a thread)
        self.release()
        raise self._busy(
            {key: summary.get(key) for key in ("pid", "host")}
            | {"since": summary.get("started_at", "?")}
        )

    def _take_over_if_stale(self) -> None:
        holder = read_lock(self.path)
        if holder is None:  # vanished meanwhile, or being written: look again
            time.sleep(0.05)
            holder = read_lock(self.path)
            if holder is None:
                if not self.path.exists():
                    return
                holder = {}
        pid, host = holder.get("pid"), holder.get("host")
        same_host = host == socket.gethostname()
        if same_host and isinstance(pid, int) and not process_exists(pid):
            aside = self.path.with_name(f".{self.path.name}.stale-{os.getpid()}")
            try:
                os.replace(self.path, aside)
            except FileNotFoundError:
                return  # another process took it over first; try to create it again
            if read_lock(aside) != holder:  # we moved a fresh lock: that process won
                os.replace(aside, self.path)
                raise self._busy(read_lock(self.path) or {})
            aside.unlink(missing_ok=True)
            return
        raise self._busy(holder)

    def _busy(self, holder: dict) -> RunFolderBusy:
        who = (
            f"process {holder.get('pid', '?')} on {holder.get('host', '?')}"
            f" (since {holder.get('since', '?')})"
        )
        hint = (
            ""
            if holder.get("host") == socket.gethostname()
            else f"; if that run has ended, delete {self.path}"
        )
        return RunFolderBusy(f"{self.path.parent} is in use: {who} is training in it{hint}")

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def read_lock(path: str | Path) -> dict | None:
    """The owner a lock file names, or None when it is missing or unreadable."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# -- resuming ---------------------------------------------------------------------------


def check_resumable(run_dir: str | Path) -> int:
    """The epoch a resumed run starts at; raise ``CheckpointError`` when the run made
    progress but its ``checkpoints/last.safetensors`` is gone (resuming would silently
    start again at epoch 1 and overwrite its history)."""
    from engine.checkpoint import read_checkpoint_state

    paths = RunPaths(Path(run_dir))
    last = paths.checkpoint("last")
    if last.exists():
        return int(read_checkpoint_state(last).get("epoch", 0)) + 1
    summary = read_summary(paths.summary) or {}
    completed = summary.get("epochs_completed") if isinstance(summary, dict) else 0
    evidence = []
    if isinstance(completed, int) and completed > 0:
        evidence.append(f"{completed} finished epoch{'s' if completed != 1 else ''}")
    if paths.checkpoint("best").exists():
        evidence.append("a best checkpoint")
    if _metric_rows(paths.metrics):
        evidence.append("metrics")
    if evidence:
        raise CheckpointError(
            f"{last} is missing although the run has {' and '.join(evidence)}; resuming would "
            f"start again at epoch 1. Restore the file, or start over in this folder with "
            f"'adtn-studio resume --restart {paths.root}'"
        )
    return 1


def _metric_rows(path: Path) -> int:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, ValueError):
        return 0
    return max(0, len([line for line in lines if line.strip()]) - 1)


# -- models of a configuration or a run -------------------------------------------------


def build_config_model(
    config: RunConfig, compressed: bool = True
) -> tuple[nn.Module, CompressionReport]:
    """The freshly initialised model of ``config``; with ``compressed`` its chosen layers are
    ADTNs (fresh, not fitted). Also returns the compression report (planned when not
    compressed). Initialisation is seeded by ``config.seed``."""
    model, report, _ = build_config_model_noted(config, compressed)
    return model, report


def build_config_model_noted(
    config: RunConfig, compressed: bool = True, load_weights: bool = False, info=None, progress=None
) -> tuple[nn.Module, CompressionReport, list[str]]:
    """``build_config_model``, plus: with ``load_weights`` the configuration's pretrained
    weights are loaded before compression; ``info`` is the resolved data set (default: from
    the configuration); the third value lists what was adapted or loaded, for the log."""
    import torch

    from engine.data import config_dataset_info
    from engine.models import build_model_noted

    info = info or config_dataset_info(config)
    torch.manual_seed(config.seed)
    built = build_model_noted(config.model, info.in_channels, info.image_size, info.num_classes)
    model, notes = built.model, list(built.notes)
    if load_weights and config.weights:
        from engine.weights import load_weights as load

        notes += load(
            model,
            config.weights,
            config.model,
            built.adapted,
            allow_download=config.download,
            progress=progress,
        )
    if compressed and config.layers:
        report = compress(model, config.layers)
    else:
        report = plan_compression(model, config.layers)
    return model, report, notes


def build_run_model(run_dir: str | Path, checkpoint: str = "best") -> nn.Module:
    """The trained model of run folder ``run_dir`` with the weights of its ``"best"`` or
    ``"last"`` checkpoint, compressed as its ``config.toml`` says, in eval mode on the CPU.

    Raises ``CheckpointError`` when that checkpoint does not exist (a run stopped before its
    first epoch with the compressed model ended has no "best") or cannot be read, and
    ``ConfigError`` when the run's configuration is unreadable.
    """
    paths = RunPaths(Path(run_dir))
    config = RunConfig.load(paths.config)
    loaded = load_checkpoint(paths.checkpoint(checkpoint))
    model, _ = build_config_model(config, compressed=bool(loaded.state.get("compressed")))
    try:
        model.load_state_dict(loaded.model_state)
    except RuntimeError as exc:
        raise CheckpointError(
            f"{paths.checkpoint(checkpoint)} does not match the model of {paths.config} ({exc})"
        ) from exc
    return model.eval()


def _safe_name(name: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "-_." else "-" for c in name).strip("-.")
    return cleaned or "run"
