"""Entry script of the frozen application (PyInstaller needs a script, not a package)."""

import multiprocessing
import sys

from adtn_studio.__main__ import main

if __name__ == "__main__":
    multiprocessing.freeze_support()  # data-loader workers re-enter the frozen executable
    sys.exit(main())
