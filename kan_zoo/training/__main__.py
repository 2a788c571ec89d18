"""`accelerate launch -m kan_zoo.training ...` is the same as `accelerate launch train_imagenet.py ...`."""
import os
import sys

from kan_zoo.training.data import DataError
from kan_zoo.training.run import CheckpointError, ConfigError, ModelError, Preempted, SimulatedKill, main

if __name__ == "__main__":
    try:
        main()
    except (ConfigError, DataError, ModelError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    except Preempted as e:
        print(f"stopped: {e}", file=sys.stderr, flush=True)
        sys.exit(143)  # "terminated": job schedulers requeue on it
    except SimulatedKill:
        os._exit(137)  # test hook: vanish like a killed process, no final save
