"""Stage files beside their destination and publish them only when all of them are good.

Every export file is written to a hidden temporary file in the destination folder (so the final
``os.replace`` is an atomic rename on the same file system). Nothing reaches its final name
until ``commit()``; leaving the ``with`` block any other way (an error, a failed verification,
Ctrl-C) deletes every staged file, so a user never finds a partial export.
"""

from __future__ import annotations

import os
import stat
import uuid
from pathlib import Path


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
