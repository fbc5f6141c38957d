"""Logging, configured in one place: the command line and the window call
``configure_logging`` at start-up, and the trainer adds a run folder's log for each run.

- The application's log file (``adtn-studio.log`` in ``engine.paths.default_log_dir()``,
  rotating) receives everything at DEBUG from the project's own loggers (INFO from other
  libraries), tracebacks included.
- The console shows warnings and errors as one line each. A record that carries a traceback
  is left to the file: whoever logs one also tells the user in words (the command line's
  one line names the log file), so the console would only repeat it. With ``verbose`` the
  console shows everything at DEBUG, tracebacks included.
- ``run_log(path)`` adds, for the duration of a run, a file in its run folder that receives
  the engine's records from the training thread.
"""

from __future__ import annotations

import contextlib
import logging
import logging.handlers
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

from engine.paths import default_log_dir

APP_LOG_NAME = "adtn-studio.log"
APP_LOG_BYTES = 2 << 20  # one file's size before it rotates
APP_LOG_BACKUPS = 3
# the project's own loggers always log at DEBUG into the file (other libraries at INFO)
OWN_LOGGERS = ("engine", "ui", "adtn_studio")
FILE_FORMAT = "%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"
CONSOLE_FORMAT = "%(levelname)s %(name)s: %(message)s"

_installed: list[logging.Handler] = []  # the handlers configure_logging added to the root
_saved_levels: dict[str, int] = {}  # loggers' levels before configure_logging, for reset
_app_log: Path | None = None


class _Stderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of writing (tests replace it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):  # noqa: ANN201 - a text stream
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # noqa: ANN001 - logging assigns it once; ignored
        pass


class _WithoutTraceback(logging.Filter):
    """Leaves records with a traceback to the log file."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info or record.stack_info)


def configure_logging(
    verbose: bool = False, log_dir: str | Path | None = None, console: bool = True
) -> Path | None:
    """Send log records to the application's log file and, with ``console``, to stderr.

    Calling it again replaces what an earlier call installed. Returns the log file, or None
    when its folder cannot be written (logging then goes to the console only).
    """
    global _app_log
    reset_logging()
    root = logging.getLogger()
    for name in ("", *OWN_LOGGERS):
        _saved_levels[name] = logging.getLogger(name).level
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for name in OWN_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG)
    folder = Path(log_dir) if log_dir is not None else default_log_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        file_handler = logging.handlers.RotatingFileHandler(
            folder / APP_LOG_NAME,
            maxBytes=APP_LOG_BYTES,
            backupCount=APP_LOG_BACKUPS,
            encoding="utf-8",
            delay=True,
        )
    except OSError:
        file_handler = None
    if file_handler is not None:
        file_handler.setLevel(logging.DEBUG)
        file_handler.setFormatter(logging.Formatter(FILE_FORMAT))
        _install(root, file_handler)
        _app_log = folder / APP_LOG_NAME
    if console:
        console_handler = _Stderr()
        console_handler.setFormatter(logging.Formatter(CONSOLE_FORMAT))
        console_handler.setLevel(logging.DEBUG if verbose else logging.WARNING)
        if not verbose:
            console_handler.addFilter(_WithoutTraceback())
        _install(root, console_handler)
    return _app_log


def _install(root: logging.Logger, handler: logging.Handler) -> None:
    root.addHandler(handler)
    _installed.append(handler)


def reset_logging() -> None:
    """Remove and close what ``configure_logging`` installed (others' handlers stay) and
    give the loggers their levels back."""
    global _app_log
    root = logging.getLogger()
    while _installed:
        handler = _installed.pop()
        root.removeHandler(handler)
        handler.close()
    for name, level in _saved_levels.items():
        logging.getLogger(name).setLevel(level)
    _saved_levels.clear()
    _app_log = None


def app_log_file() -> Path | None:
    """The application's log file, when ``configure_logging`` opened one."""
    return _app_log


class _SameThread(logging.Filter):
    def __init__(self, thread: int) -> None:
        super().__init__()
        self.thread = thread

    def filter(self, record: logging.LogRecord) -> bool:
        return record.thread == self.thread


@contextlib.contextmanager
def run_log(path: str | Path, logger: str = "engine") -> Iterator[logging.Handler]:
    """While in the block, append the records of ``logger`` (INFO and up, tracebacks
    included) logged by this thread to ``path``."""
    handler = logging.FileHandler(path, mode="a", encoding="utf-8", delay=True)
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter(FILE_FORMAT))
    handler.addFilter(_SameThread(threading.get_ident()))
    target = logging.getLogger(logger)
    previous_level = target.level
    if not target.isEnabledFor(logging.INFO):  # nobody configured logging (a library user)
        target.setLevel(logging.INFO)
    target.addHandler(handler)
    try:
        yield handler
    finally:
        target.removeHandler(handler)
        target.setLevel(previous_level)
        handler.close()
