"""Converters from other KAN layouts to kan_zoo's parameter layout."""
from .torch_conv_kan import (
    REFERENCE_FAMILIES,
    check_state_dict_matches,
    convert_layer_state_dict,
    detect_reference_family,
)

__all__ = ["convert_layer_state_dict", "check_state_dict_matches", "detect_reference_family", "REFERENCE_FAMILIES"]
