"""The layers keep to their imports (docs/ARCHITECTURE.md): the engine never loads Qt, the
torch-free core of the engine never loads PyTorch, and no module of the window loads PyTorch
when it is imported (the window paints before it loads).

Each check runs in a fresh interpreter, since this one has long loaded everything. When a
forbidden module is found, the child names it and the first module of the project whose
import brought it in.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

TORCH_FREE_CORE = (
    "engine.config",
    "engine.events",
    "engine.paths",
    "engine.choices",
    "engine.layer_spec",
    "engine.limits",
    "engine.metrics",
    "engine.model_spec",
)

# Run in the child: import ``modules`` one after another and report, for each forbidden
# top-level package that appeared, which import first brought it in. A meta-path finder sees
# every import as it starts, so the culprit is the innermost module of the project being
# imported at that moment.
PROBE = textwrap.dedent("""
    import importlib, json, sys

    modules, forbidden = json.loads(sys.argv[1]), tuple(json.loads(sys.argv[2]))
    stack, culprits = [], {}

    class Watch:
        def find_spec(self, name, path=None, target=None):
            top = name.partition(".")[0]
            if top in forbidden and top not in culprits:
                culprits[top] = [m for m in stack]
            return None

    sys.meta_path.insert(0, Watch())
    import builtins
    real_import = builtins.__import__

    def tracking_import(name, globals=None, locals=None, fromlist=(), level=0):
        own = (globals or {}).get("__name__", "")
        pushed = own.partition(".")[0] in ("engine", "ui", "adtn_studio")
        if pushed:
            stack.append(own)
        try:
            return real_import(name, globals, locals, fromlist, level)
        finally:
            if pushed:
                stack.pop()

    builtins.__import__ = tracking_import
    report = {}
    for module in modules:
        before = set(culprits)
        importlib.import_module(module)
        for top in set(culprits) - before:
            report[top] = {"imported": module, "chain": culprits[top]}
    loaded = sorted(top for top in forbidden if top in sys.modules)
    print(json.dumps({"loaded": loaded, "report": report}))
""")


def probe(modules: list[str], forbidden: tuple[str, ...]) -> dict:
    """Import ``modules`` in a fresh interpreter; which of ``forbidden`` got loaded, and by
    what."""
    result = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(modules), json.dumps(forbidden)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**_environment(), "QT_QPA_PLATFORM": "offscreen"},
    )
    assert result.returncode == 0, f"importing {modules} failed:\n{result.stderr[-3000:]}"
    return json.loads(result.stdout.strip().splitlines()[-1])


def _environment() -> dict[str, str]:
    import os

    env = dict(os.environ)
    path = env.get("PYTHONPATH", "")
    env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + path if path else "")
    return env


def explain(found: dict, what: str) -> str:
    lines = [f"{what} loaded {', '.join(found['loaded'])}:"]
    for top, how in sorted(found["report"].items()):
        chain = " -> ".join(how["chain"]) or "(directly)"
        lines.append(f"  {top}: while importing {how['imported']}, through {chain}")
    return "\n".join(lines)


def package_modules(package: str) -> list[str]:
    """Every module of ``package``, found by walking it (not by a list kept here)."""
    import importlib
    import pkgutil

    path = importlib.import_module(package).__path__
    names = [package]
    for info in pkgutil.walk_packages(path, prefix=package + "."):
        names.append(info.name)
    return sorted(names)


def engine_modules() -> list[str]:
    return package_modules("engine")


def test_the_walk_finds_the_engine_modules():
    names = engine_modules()
    # a walk that found nothing would let the check below pass for nothing
    for expected in (
        "engine.trainer",
        "engine.encodings.tt",
        "engine.export.bundle",
        *TORCH_FREE_CORE,
    ):
        assert expected in names


def test_no_engine_module_loads_qt():
    found = probe(engine_modules(), ("PySide6", "PyQt5", "PyQt6", "shiboken6", "pyqtgraph"))
    assert not found["loaded"], explain(found, "the engine")


@pytest.mark.parametrize("module", TORCH_FREE_CORE)
def test_the_torch_free_core_loads_no_torch(module):
    found = probe([module], ("torch", "torchvision", "tensorly", "tltorch", "numpy"))
    assert not found["loaded"], explain(found, module)


def test_the_window_loads_no_torch_before_it_paints():
    """The window's modules import only the engine's torch-free core at the top; PyTorch
    loads later, in a background task, when something needs it."""
    modules = package_modules("ui")
    assert "ui.main_window" in modules and "ui.wizard.layer_plan_model" in modules
    found = probe(modules, ("torch", "torchvision"))
    assert not found["loaded"], explain(found, "the window's modules")


def test_the_probe_names_what_pulled_in_a_forbidden_module():
    """The check can fail, and says why: engine.trainer does load PyTorch."""
    found = probe(["engine.trainer"], ("torch",))
    assert found["loaded"] == ["torch"]
    message = explain(found, "engine.trainer")
    assert "while importing engine.trainer" in message and "engine." in message
