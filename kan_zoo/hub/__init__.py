"""Publishing kan_zoo models: export to timm's Hub format, push to the Hugging Face Hub, load strictly.

    from kan_zoo.hub import export_to_folder, push_to_hub
    export_to_folder(model, "out/kan_vgg_gram", metrics={"top1": 71.2})
    push_to_hub(model, "my-org/kan_vgg_gram", metrics={"top1": 71.2})

The folder holds ``model.safetensors``, a timm ``config.json`` and a ``README.md`` model card; it loads
with ``timm.create_model("local-dir:<folder>" or "hf-hub:<repo>", pretrained=True)`` and with
transformers' ``AutoModelForImageClassification``. Command line: ``python -m kan_zoo.hub --help``.
"""
from ._card import check_model_cards, make_model_card, model_card_files, pretrained_model_card, write_model_cards
from ..errors import (
    CheckpointMismatchError,
    CorruptCheckpointError,
    HubError,
    HubFileNotCachedError,
    UnknownModelError,
)
from ._export import build_config, export_state_dict, export_to_folder
from ._load import create_model_checked, create_pretrained_model, load_checkpoint_strict, read_safetensors
from ._push import push_to_hub

__all__ = [
    "export_to_folder", "push_to_hub", "load_checkpoint_strict", "create_pretrained_model",
    "create_model_checked", "read_safetensors", "build_config", "export_state_dict", "make_model_card",
    "HubError", "CorruptCheckpointError", "CheckpointMismatchError", "HubFileNotCachedError",
    "UnknownModelError", "pretrained_model_card", "model_card_files", "check_model_cards", "write_model_cards",
]
