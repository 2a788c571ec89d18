"""Converters from other KAN layouts to kan_zoo's parameter layout."""
from .torch_conv_kan import (
    REFERENCE_FAMILIES,
    check_state_dict_matches,
    convert_block_state_dict,
    convert_layer_state_dict,
    detect_reference_family,
)
from .vgg import adapt_kan_stem, convert_vgg_state_dict, is_reference_vgg_state_dict

__all__ = ["convert_layer_state_dict", "convert_block_state_dict", "check_state_dict_matches",
           "detect_reference_family", "REFERENCE_FAMILIES", "convert_vgg_state_dict", "is_reference_vgg_state_dict",
           "adapt_kan_stem"]
