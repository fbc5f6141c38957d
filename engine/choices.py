"""The names the engine, the command line and the window share: one place, no PyTorch.

Every choice a user makes (activation, layout, encoding, optimiser, …) and every name the
engine writes (metric columns, failure kinds) is spelled here once; the other modules import it.
"""

from __future__ import annotations

from enum import StrEnum


class RunStatus(StrEnum):
    """A run's state in ``summary.json`` (and the run history)."""

    RUNNING = "running"
    FINISHED = "finished"
    STOPPED = "stopped"  # by the user; it can be resumed
    FAILED = "failed"  # the summary's error_kind says why
    INTERRUPTED = "interrupted"  # "running" in the summary, but its process is gone: killed
    UNREADABLE = "unreadable"  # the run history could not read the folder


class FailureKind(StrEnum):
    """Why a run failed; stored in ``summary.json`` and carried by ``RunFailed``."""

    NAN_LOSS = "nan_loss"
    OUT_OF_MEMORY = "out_of_memory"
    DATA_UNAVAILABLE = "data_unavailable"
    CONFIG = "config"
    DEVICE = "device"
    CHECKPOINT = "checkpoint"
    DISTRIBUTED = "distributed"
    EXPORT = "export"  # an export or bundle file that could not be written or read
    SIGNAL = "signal"  # a data-parallel launcher told to end: the run is "stopped", not failed
    ERROR = "error"  # an unexpected exception: an engine bug, logged with its traceback


# -- one layer's encoding (engine.layer_spec, the wizard's layer table) ---------------------
ENCODINGS = ("adtn", "tt", "lowrank", "tucker", "cp")
ENCODING_LABELS = {
    "adtn": "ADTN (deep tensor network)",
    "tt": "tensor train (TT-matrix)",
    "lowrank": "low rank (U·V)",
    "tucker": "Tucker",
    "cp": "CP (canonical polyadic)",
}
# The same, short, for sentences and table cells ("dense": the uncompressed baseline).
ENCODING_SHORT_TITLES = {
    "adtn": "ADTN",
    "tt": "TT-matrix",
    "lowrank": "low rank",
    "tucker": "Tucker",
    "cp": "CP",
    "dense": "dense",
}
ACTIVATIONS = ("relu", "leaky_relu", "none")  # between the ADTN's gate layers
LAYOUTS = ("brick", "stair")  # how a gate layer pairs neighbouring indices
# ADTN options: the order of the binary indices (the rows' bits before the columns', or a row
# bit and a column bit side by side as a TT-matrix pairs them) and the gates' initialisation.
INDEX_ORDERS = ("rows_first", "interleaved")
DEFAULT_INDEX_ORDER = "interleaved"  # measured the better of the two (docs/RESEARCH.md)
# What an ADTN layer without the key meant in files written before configuration version 2.
LEGACY_INDEX_ORDER = "rows_first"
GATE_INITS = ("orthogonal", "near_identity", "normal")
MATCH_ADTN = "match:adtn"  # a budget: the parameter count of the ADTN of the same depth

# -- training (engine.config, engine.trainer, the wizard's training page) ------------------
INITS = ("scratch", "pretrained")
INIT_TITLES = {
    "scratch": "from scratch",
    "pretrained": "pretrained: train dense, fit ADTNs, fine-tune",
}
OPTIMIZERS = ("adam", "adamw", "sgd")
OPTIMIZER_TITLES = {"adam": "Adam", "adamw": "AdamW", "sgd": "SGD with momentum"}
# Learning rates from which training with each optimiser practically always diverges (the
# window asks before starting such a run).
ABSURD_LEARNING_RATES = {"adam": 1.0, "adamw": 1.0, "sgd": 10.0}
SCHEDULES = ("none", "cosine", "step")
SCHEDULE_TITLES = {
    "none": "constant",
    "cosine": "cosine",
    "step": "step decay (at lr_milestones)",
}
# An epoch's phase: dense pre-training (init = "pretrained") or training the compressed model.
PHASE_PRETRAIN = "pretrain"
PHASE_TRAIN = "train"
PHASES = (PHASE_PRETRAIN, PHASE_TRAIN)

# -- data sets and models (engine.data, engine.models, engine.model_sources) ---------------
DATASET_NAMES = ("mnist", "fashionmnist", "kmnist", "cifar10", "cifar100", "synthetic")
DATASET_TITLES = {
    "mnist": "MNIST",
    "fashionmnist": "Fashion-MNIST",
    "kmnist": "Kuzushiji-MNIST",
    "cifar10": "CIFAR-10",
    "cifar100": "CIFAR-100",
    "synthetic": "Synthetic (MNIST-shaped)",
}
IMAGEFOLDER_PREFIX = "imagefolder:"  # "imagefolder:DIR" names a folder of class folders
MODEL_NAMES = ("fc2", "lenet5", "alexnet", "zfnet", "vgg16")  # the built-in zoo
MODEL_TITLES = {
    "fc2": "FC-2",
    "lenet5": "LeNet-5",
    "alexnet": "AlexNet",
    "zfnet": "ZFNet",
    "vgg16": "VGG-16 (batch norm)",
}
TORCHVISION_PREFIX = "torchvision:"  # "torchvision:resnet18" names a torchvision classifier

# -- what a run writes (engine.trainer, engine.runs, the monitor and the runs page) --------
# The columns of metrics.csv, and the keys of the trainer's per-epoch rows, in file order.
METRIC_COLUMNS = (
    "epoch",
    "phase",
    "train_loss",
    "train_acc",
    "test_loss",
    "test_acc",
    "best_test_acc",
    "params_total",
    "dense_params_total",
    "seconds",
    "lr",
)
CHECKPOINT_KINDS = ("last", "best")  # checkpoints/<kind>.safetensors
CHECKPOINT_TITLES = {"best": "best (highest test accuracy)", "last": "last"}

# -- export (engine.export, the export dialog, ``adtn-studio export``) ---------------------
EXPORT_FORMATS = ("adtn", "dense", "onnx")
EXPORT_FORMAT_TITLES = {
    "adtn": "ADTN bundle (.adtn)",
    "dense": "dense safetensors",
    "onnx": "ONNX (dense)",
}
