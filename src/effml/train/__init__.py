"""Efficient training: the memory estimator, precision/checkpointing/accumulation recipes, the training
loop and DDP launch. `train_memory(model, example_inputs, TrainConfig(...))` is the entry point."""

from effml.train.config import Checkpointing, TrainConfig
from effml.train.memory import MemoryEstimate, train_memory

__all__ = ["Checkpointing", "MemoryEstimate", "TrainConfig", "train_memory"]
