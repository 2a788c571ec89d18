"""kan_* model families; importing a family module registers its models in timm."""
from . import kan_vgg
from . import kan_resnet, kan_densenet, kan_rdnet
from . import kan_unet, kan_u2net
from . import kan_simple, kan_ckan
