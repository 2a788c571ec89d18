#!/usr/bin/env python
"""Train a kan_zoo / timm image classifier on ImageNet (or any HF image dataset) with accelerate.

    accelerate launch train_imagenet.py --model kan_vgg11_gram --output runs/vgg11
    accelerate launch train_imagenet.py --model kan_vgg11_gram --output runs/vgg11 --resume

See `python train_imagenet.py --help`; the code lives in kan_zoo.training.
"""
import os
import sys

from kan_zoo.training.data import DataError
from kan_zoo.training.run import CheckpointError, ModelError, SimulatedKill, main

if __name__ == "__main__":
    try:
        main()
    except (DataError, ModelError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    except SimulatedKill:
        os._exit(137)  # test hook: vanish like a killed process, no cleanup, no final save
