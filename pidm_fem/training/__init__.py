"""Training infrastructure in plain PyTorch: run configuration, EMA, checkpoints and the training loop."""

from pidm_fem.training.checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from pidm_fem.training.config import (
    ConfigError,
    RunConfig,
    config_from_dict,
    config_to_dict,
    load_config,
    save_config,
    trained_configuration,
)
from pidm_fem.training.ema import EMA
from pidm_fem.training.trainer import StepRecord, Trainer, TrainingDiverged, TrainingSummary, learning_rate

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "ConfigError",
    "EMA",
    "RunConfig",
    "StepRecord",
    "Trainer",
    "TrainingDiverged",
    "TrainingSummary",
    "config_from_dict",
    "config_to_dict",
    "load_checkpoint",
    "load_config",
    "save_checkpoint",
    "save_config",
    "learning_rate",
    "trained_configuration",
]
