"""kan_* model families; importing a family module registers its models in timm."""
