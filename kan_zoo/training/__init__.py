"""Training of kan_zoo / timm classifiers with accelerate (the engine behind train_imagenet.py)."""
from .checkpoint import CheckpointError, TrainState, latest_checkpoint, list_checkpoints
from .config import ConfigError, build_parser, parse_args
from .data import DataError
from .modeling import ModelError

__all__ = ["main", "build_parser", "parse_args", "ConfigError", "DataError", "ModelError", "CheckpointError",
           "TrainState", "latest_checkpoint", "list_checkpoints"]


def main(argv=None):
    """Entry point of train_imagenet.py (imported lazily: it pulls in accelerate and datasets)."""
    from .run import main as _main

    return _main(argv)
