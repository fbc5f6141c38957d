"""Knowledge distillation: the compressed model also learns from a trained model's outputs.

The loss is ``(1 - w) · CE(student, labels) + w · T² · KL(softmax(teacher / T) ‖
softmax(student / T))``: the cross-entropy on the labels, and the divergence between the two
models' outputs softened by the temperature ``T`` (Hinton, Vinyals and Dean, 2015). ``T²``
keeps the second term's gradients at the first's scale whatever the temperature.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from engine.config import RunConfig
from engine.errors import ConfigError
from engine.paths import RunPaths


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    weight: float,
    temperature: float,
) -> torch.Tensor:
    """The training loss of a student taught by ``teacher_logits`` (no gradient reaches the
    teacher); ``weight`` 0 is the plain cross-entropy."""
    hard = F.cross_entropy(student_logits, labels)
    if weight == 0:
        return hard
    soft = F.kl_div(
        F.log_softmax(student_logits / temperature, dim=1),
        F.log_softmax(teacher_logits.detach() / temperature, dim=1),
        reduction="batchmean",
        log_target=True,
    )
    return (1 - weight) * hard + weight * temperature**2 * soft


def load_teacher(config: RunConfig, info, progress=None) -> tuple[nn.Module, str]:
    """The teacher that ``config.teacher`` names, in eval mode with frozen parameters, and a
    line for the log. A run folder gives its best checkpoint's model (dense or compressed);
    anything else is a weights file (or ``torchvision:…``) for the dense ``config.model``."""
    from engine.runs import build_run_model

    source = config.teacher
    folder = Path(source)
    if folder.is_dir():
        if not RunPaths(folder).config.is_file():
            raise ConfigError(
                f"teacher {source}: a folder must be a run folder (it has no "
                f"{RunPaths(folder).config.name})"
            )
        teacher = build_run_model(folder, "best")
        note = f"distilling from the run {folder.name} (its best checkpoint)"
    else:
        from engine.models import build_model_noted
        from engine.weights import load_weights

        built = build_model_noted(config.model, info.in_channels, info.image_size, info.num_classes)
        teacher = built.model
        load_weights(
            teacher,
            source,
            config.model,
            built.adapted,
            allow_download=config.download,
            progress=progress,
        )
        note = f"distilling from {config.model} with the weights {source}"
    teacher.eval()
    for parameter in teacher.parameters():
        parameter.requires_grad_(False)
    note += f" (weight {config.distill_weight:g}, temperature {config.distill_temperature:g})"
    return teacher, note
