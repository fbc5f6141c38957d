"""The limits every reader of user input enforces: one set, so that whatever trains can be
exported and whatever is exported can be loaded.

Configuration reading (``engine.config``), the bundle reader (``engine.export``) and the
format's spec (docs/FORMAT.md) all use these numbers. The module imports nothing heavy, so
the window can show the limits before the engine has loaded.
"""

from __future__ import annotations

# -- the ADTN ------------------------------------------------------------------------------
# Binary indices of one weight: 2**28 numbers are a 1 GiB float32 state, already far beyond
# any layer of the model zoo (the largest, 4096 x 4096, needs 24).
MAX_Q = 28
# Gate layers of one ADTN: far beyond any useful network; bounds the work a file can ask for.
MAX_DEPTH = 64

# -- a run ------------------------------------------------------------------------------------
MAX_EPOCHS = 100_000  # per phase (dense pre-training, compressed training)
MAX_BATCH_SIZE = 1 << 20
MAX_FIT_STEPS = 10_000_000  # steps fitting one ADTN to its dense weight
MAX_SEED = 2**63 - 1  # torch.manual_seed takes 64-bit seeds; epoch seeds are taken mod this
MAX_EXAMPLES = 1 << 40  # limit_train / limit_test (0 = all)
MAX_WORKERS = 1024

# -- files ------------------------------------------------------------------------------------
MAX_CONFIG_BYTES = 1 << 20  # a run configuration is a few hundred bytes of TOML
# Memory a bundle may need to be loaded and evaluated (its dense tensors plus, per ADTN
# layer, the 2**Q state vectors its contraction holds), estimated before anything is built.
MAX_LOAD_BYTES = 8 << 30
