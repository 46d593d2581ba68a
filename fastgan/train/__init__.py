"""Training: ``Trainer`` (one loop for every family), ``TrainConfig``, atomic checkpoints, EMA, metrics.

    from fastgan.train import Trainer, TrainConfig
    Trainer(TrainConfig(model="dcgan", data="digits", steps=500, out="runs/demo")).fit()
"""

from .checkpoint import LAST, load_checkpoint, save_checkpoint
from .config import AMP_MODES, FAMILIES, RESUMABLE, FamilyDefaults, TrainConfig, read_config_file, resolve_device
from .ema import EMA
from .graphs import GraphedStep, graphed_step
from .metrics import LossMeter, MetricsWriter, Progress
from .pool import ImagePool
from .trainer import Trainer

__all__ = [
    "AMP_MODES",
    "EMA",
    "FAMILIES",
    "LAST",
    "FamilyDefaults",
    "GraphedStep",
    "ImagePool",
    "LossMeter",
    "MetricsWriter",
    "Progress",
    "RESUMABLE",
    "TrainConfig",
    "Trainer",
    "graphed_step",
    "load_checkpoint",
    "read_config_file",
    "resolve_device",
    "save_checkpoint",
]
