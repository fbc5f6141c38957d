"""``adtn-studio selftest`` passes on a working installation and fails when a step breaks."""

from __future__ import annotations

import io

import pytest

from adtn_studio.__main__ import main
from adtn_studio.selftest import run_selftest, selftest_steps

STEPS = [name for name, _, _ in selftest_steps(window=True)]


def test_selftest_command_passes_every_step(capsys):
    assert main(["selftest", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    for name in STEPS:
        assert f"PASS  {name}" in out
    assert "PyTorch" in out and "Qt" in out and "training on cpu" in out
    assert out.rstrip().splitlines()[-1].startswith("selftest: PASS")


def test_a_failed_export_fails_the_selftest_and_skips_the_reload(monkeypatch):
    def broken_export(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("engine.export.export_run", broken_export)
    out = io.StringIO()
    assert run_selftest(device="cpu", window=False, out=out) == 1
    text = out.getvalue()
    assert "PASS  train" in text
    assert "FAIL  export    OSError: disk full" in text
    assert "SKIP  reload" in text
    assert "selftest: FAIL" in text


@pytest.mark.parametrize("window", [True, False])
def test_window_step_is_optional(window):
    names = [name for name, _, _ in selftest_steps(window=window)]
    assert ("window" in names) is window
    assert names[-3:] == ["train", "export", "reload"]
