"""Upload an exported model to the Hugging Face Hub."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

from huggingface_hub import HfApi
from torch import nn

from ._export import export_to_folder

__all__ = ["push_to_hub"]


def push_to_hub(
    model: nn.Module,
    repo_id: str,
    *,
    metrics: Mapping[str, Any] | None = None,
    model_card: str | None = None,
    pretrained_cfg_overrides: Mapping[str, Any] | None = None,
    label_names: Sequence[str] | None = None,
    private: bool = False,
    commit_message: str = "Upload kan_zoo model (model.safetensors, config.json, README.md)",
    revision: str | None = None,
    token: str | None = None,
    api: HfApi | None = None,
) -> str:
    """Export ``model`` (see ``export_to_folder``) and upload it to ``repo_id`` in one commit.

    The repo is created if needed (``exist_ok``), as is the branch ``revision`` when given. ``api``
    defaults to ``HfApi(token=token)``; pass another object with the same methods to test or to
    reach another endpoint. Returns the commit URL (or whatever string ``upload_folder`` returns).
    The README.md is (re)written on every push so the card's metrics match the weights.
    """
    from kan_zoo import __version__

    if api is None:
        api = HfApi(token=token, library_name="kan_zoo", library_version=__version__)
    repo_url = api.create_repo(repo_id, private=private, exist_ok=True, token=token)
    # The Hub may have completed a bare name with the token's user: use the id it answered with.
    repo_id = getattr(repo_url, "repo_id", None) or repo_id
    if revision is not None and revision != "main":
        api.create_branch(repo_id=repo_id, branch=revision, exist_ok=True, token=token)

    with tempfile.TemporaryDirectory(prefix="kan_zoo_push_") as tmp:
        folder = export_to_folder(model, Path(tmp) / "export", metrics=metrics, model_card=model_card,
                                  pretrained_cfg_overrides=pretrained_cfg_overrides, repo_id=repo_id,
                                  label_names=label_names)
        info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=commit_message,
                                 revision=revision, token=token)
    return str(getattr(info, "commit_url", None) or info)
