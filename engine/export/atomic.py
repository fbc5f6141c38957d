"""Stage files beside their destination and publish them only when all of them are good.

Every export file is written to a hidden temporary file in the destination folder (so the final
``os.replace`` is an atomic rename on the same file system). Nothing reaches its final name
until ``commit()``; leaving the ``with`` block any other way (an error, a failed verification,
Ctrl-C) deletes every staged file, so a user never finds a partial export.
"""

from __future__ import annotations

import errno
import os
import stat
import uuid
from pathlib import Path

from engine.export.errors import ExportError

# How safetensors' Rust writer words an I/O error (it raises SafetensorError, not OSError).
_DISK_FULL_WORDS = ("no space left", "storagefull", "disk quota", "quota exceeded")


class StagedFiles:
    """Temporary paths for a set of final paths, published together by ``commit()``."""

    def __init__(self) -> None:
        self._staged: dict[Path, Path] = {}  # final path -> temporary path
        self._modes: dict[Path, int] = {}  # final path -> permission bits it should get

    def path_for(self, final: str | Path) -> Path:
        """The temporary path to write instead of ``final`` (same folder, hidden name)."""
        final = Path(final)
        final.parent.mkdir(parents=True, exist_ok=True)
        temporary = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}.partial")
        # Creating the file reserves the name and shows the mode a new file gets here (umask);
        # writers such as safetensors replace it with a private (0600) file of their own.
        with open(temporary, "xb"):
            pass
        self._modes[final] = stat.S_IMODE(temporary.stat().st_mode)
        self._staged[final] = temporary
        return temporary

    def commit(self) -> list[Path]:
        """Rename every staged file to its final name; return the final paths."""
        published = []
        for final, temporary in list(self._staged.items()):
            os.chmod(temporary, self._modes[final])
            os.replace(temporary, final)
            del self._staged[final]
            published.append(final)
        return published

    def discard(self) -> None:
        """Delete every file still staged."""
        for temporary in self._staged.values():
            temporary.unlink(missing_ok=True)
        self._staged.clear()
        self._modes.clear()

    def __enter__(self) -> StagedFiles:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.discard()  # after a commit nothing is left to discard


def write_failure(exc: BaseException, destination: Path) -> ExportError | None:
    """The one-line ``ExportError`` for a failed write (a full disk, no permission, a read-only
    file system), or None when ``exc`` is not a write failure. Writers raise ``OSError`` or,
    for safetensors, ``SafetensorError`` with the system's message inside."""
    from safetensors import SafetensorError

    if isinstance(exc, OSError):
        code, reason = exc.errno, exc.strerror or str(exc)
    elif isinstance(exc, SafetensorError):
        code, reason = None, " ".join(str(exc).split())
    else:
        return None
    lowered = reason.lower()
    if code in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)) or any(
        w in lowered for w in _DISK_FULL_WORDS
    ):
        return ExportError(
            f"cannot write {destination}: the disk is full; free some space or "
            "choose another folder (nothing was written)"
        )
    return ExportError(f"cannot write {destination}: {reason} (nothing was written)")
