"""Knowledge distillation: the loss, the configuration and a run taught by another run."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from engine.config import ConfigError, LayerSpec, RunConfig
from engine.distill import distillation_loss
from engine.models import build_model
from engine.runs import RunPaths
from engine.trainer import train


def quick_config(**changes) -> RunConfig:
    """FC-2 on 256 generated examples, both layers as depth-2 ADTNs."""
    base = RunConfig(
        model="fc2",
        dataset="synthetic",
        layers=[LayerSpec("fc1", depth=2), LayerSpec("fc2", depth=2)],
        epochs=2,
        batch_size=32,
        lr=1e-2,
        limit_train=256,
        limit_test=64,
        device="cpu",
        seed=5,
    )
    return dataclasses.replace(base, **changes)


def test_weight_zero_is_the_plain_cross_entropy():
    torch.manual_seed(0)
    student, teacher = torch.randn(8, 10), torch.randn(8, 10)
    labels = torch.randint(0, 10, (8,))
    loss = distillation_loss(student, teacher, labels, weight=0.0, temperature=4.0)
    torch.testing.assert_close(loss, F.cross_entropy(student, labels))


def test_the_soft_term_is_zero_when_the_outputs_agree_and_positive_otherwise():
    torch.manual_seed(1)
    logits, labels = torch.randn(8, 10), torch.randint(0, 10, (8,))
    same = distillation_loss(logits, logits.clone(), labels, weight=1.0, temperature=3.0)
    assert abs(float(same)) < 1e-6
    other = distillation_loss(logits, torch.randn(8, 10), labels, weight=1.0, temperature=3.0)
    assert float(other) > 1e-3


def test_the_gradient_reaches_the_student_only_and_pulls_it_toward_the_teacher():
    torch.manual_seed(2)
    student = torch.randn(4, 5, requires_grad=True)
    teacher = torch.randn(4, 5, requires_grad=True)
    labels = torch.randint(0, 5, (4,))
    distillation_loss(student, teacher, labels, weight=1.0, temperature=2.0).backward()
    assert teacher.grad is None and student.grad is not None
    # one small step against the gradient brings the softened outputs closer
    grad, student, teacher = student.grad, student.detach(), teacher.detach()
    before = F.kl_div(
        F.log_softmax(student / 2, 1), F.softmax(teacher / 2, 1), reduction="batchmean"
    )
    stepped = student - 0.1 * grad
    after = F.kl_div(
        F.log_softmax(stepped / 2, 1), F.softmax(teacher / 2, 1), reduction="batchmean"
    )
    assert float(after) < float(before)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"distill_weight": 1.5}, "distill_weight must be between 0 and 1"),
        ({"distill_weight": -0.1}, "distill_weight must be 0 or more"),
        ({"distill_temperature": 0.0}, "distill_temperature must be greater than 0"),
        ({"distill_temperature": 1000.0}, "distill_temperature must be at most 100"),
        ({"teacher": 3}, "teacher must be"),
    ],
)
def test_bad_distillation_settings_are_one_line(changes, message):
    with pytest.raises(ConfigError, match=message):
        quick_config(**changes).validate()


def test_a_run_taught_by_a_dense_run_folder(tmp_path):
    teacher_run = tmp_path / "teacher"
    dense = quick_config(layers=[], dense_baseline=True, epochs=2)
    assert train(dense, teacher_run).status == "finished"

    taught = train(quick_config(teacher=str(teacher_run)), tmp_path / "taught")
    plain = train(quick_config(), tmp_path / "plain")
    assert taught.status == "finished" and plain.status == "finished"
    assert any("distilling from the run teacher" in note for note in taught.notes)
    # the same seed and data: only the loss differs, so the first epoch's training loss does
    rows = [
        RunPaths(tmp_path / name).metrics.read_text().splitlines() for name in ("taught", "plain")
    ]
    assert rows[0][1] != rows[1][1]
    written = json.loads(RunPaths(tmp_path / "taught").summary.read_text())
    assert written["status"] == "finished"


def test_a_run_taught_by_a_weights_file(tmp_path):
    torch.manual_seed(0)
    weights = tmp_path / "teacher.safetensors"
    save_file(build_model("fc2", 1, 28, 10).state_dict(), str(weights))
    summary = train(quick_config(teacher=str(weights), epochs=1), tmp_path / "run")
    assert summary.status == "finished"
    assert any(f"with the weights {weights}" in note for note in summary.notes)


def test_a_folder_that_is_no_run_is_a_configuration_failure(tmp_path):
    (tmp_path / "empty").mkdir()
    summary = train(quick_config(teacher=str(tmp_path / "empty")), tmp_path / "run")
    assert summary.status == "failed" and summary.error_kind == "config"
    assert "a folder must be a run folder" in summary.error_message
