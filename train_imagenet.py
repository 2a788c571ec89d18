#!/usr/bin/env python
"""Train a kan_zoo / timm image classifier on ImageNet (or any HF image dataset) with accelerate.

    accelerate launch train_imagenet.py --model kan_vgg11_gram --output runs/vgg11
    accelerate launch train_imagenet.py --model kan_vgg11_gram --output runs/vgg11 --resume

See `python train_imagenet.py --help`; the code lives in kan_zoo.training (also runnable as
`accelerate launch -m kan_zoo.training ...`).
"""
import runpy

if __name__ == "__main__":
    runpy.run_module("kan_zoo.training", run_name="__main__", alter_sys=True)
