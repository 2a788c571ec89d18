"""``python -m kan_zoo.hub {export,push}``: export or publish a model from the command line."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, Sequence

from torch import nn

from ..errors import HubError
from ._export import export_to_folder
from ._load import create_model_checked, create_pretrained_model, load_checkpoint_strict
from ._push import push_to_hub

__all__ = ["main", "load_model_for_cli"]

PROG = "python -m kan_zoo.hub"


class CliError(Exception):
    """A user error the CLI reports as one line, without a traceback."""


def _json_arg(value: str | None, what: str) -> Dict[str, Any]:
    """Inline JSON or the path of a .json file."""
    if value is None:
        return {}
    text = value
    if not value.lstrip().startswith("{"):
        path = Path(value)
        if not path.is_file():
            raise CliError(f"{what}: {value!r} is neither inline JSON nor an existing file")
        text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise CliError(f"{what}: invalid JSON ({e})") from e
    if not isinstance(data, dict):
        raise CliError(f"{what}: expected a JSON object, got {type(data).__name__}")
    return data


def _looks_like_path(name: str) -> bool:
    # timm names never contain path separators; hub ids need the hf-hub: prefix anyway
    return "/" in name or "\\" in name or name.startswith((".", "~")) or name.endswith((".safetensors", ".json"))


def load_model_for_cli(model: str, checkpoint: str | None = None, pretrained: bool = False,
                       model_kwargs: Dict[str, Any] | None = None) -> nn.Module:
    """Resolve ``--model`` (timm name, exported folder, hf-hub:/local-dir: name) and ``--checkpoint``."""
    kwargs = dict(model_kwargs or {})
    prefixed = model.startswith(("hf-hub:", "hf_hub:", "local-dir:"))
    if not prefixed and _looks_like_path(model):
        path = Path(model).expanduser()
        if not path.exists():
            raise CliError(f"--model {model!r}: no such directory (give a timm model name, a folder written "
                           f"by `export`, or hf-hub:org/name)")
        if path.is_file():
            raise CliError(f"--model {model!r} is a file: pass the architecture name with --model and the "
                           f"weights with --checkpoint {model}")
        if not (path / "config.json").is_file():
            raise CliError(f"--model {model!r}: {path / 'config.json'} not found (is this an exported folder?)")
        model, prefixed = f"local-dir:{path}", True
    elif not prefixed and Path(model).is_dir():
        model, prefixed = f"local-dir:{model}", True

    if checkpoint is not None and not Path(checkpoint).is_file():
        raise CliError(f"--checkpoint: file not found: {checkpoint}")
    try:
        if prefixed:
            net = (create_pretrained_model(model, **kwargs) if checkpoint is None
                   else create_model_checked(model, **kwargs))
        else:
            net = create_model_checked(model, pretrained=pretrained, **kwargs)
    except TypeError as e:  # an argument the architecture does not take, e.g. from --model-kwargs
        raise CliError(f"cannot build {model} with {kwargs}: {e}") from e
    if checkpoint is not None:
        load_checkpoint_strict(net, checkpoint)
    elif not (prefixed or pretrained):
        print(f"{PROG}: warning: no --checkpoint given; exporting {model} with random initial weights",
              file=sys.stderr)
    return net.eval()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Export kan_zoo/timm models in timm's Hub format "
                                     "(model.safetensors + config.json + README.md) or push them to the Hub.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (("export", "write the model to a local folder"),
                            ("push", "upload the model to a Hugging Face Hub repo")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--model", required=True,
                       help="timm/kan_zoo model name, a folder written by `export`, or hf-hub:org/name")
        p.add_argument("--checkpoint", help="weights to load into --model (.safetensors; keys must match)")
        p.add_argument("--pretrained", action="store_true", help="load timm's default pretrained weights")
        p.add_argument("--num-classes", type=int, help="classifier size (must match --checkpoint)")
        p.add_argument("--model-kwargs", help="extra timm.create_model kwargs: inline JSON or a .json file")
        p.add_argument("--metrics", help="metrics for the model card: inline JSON or a .json file")
        p.add_argument("--model-card", help="a README.md to use instead of the generated card")
        p.add_argument("--pretrained-cfg", help="pretrained_cfg overrides (license, mean, std, label_names...): "
                                                "inline JSON or a .json file")
        if name == "export":
            p.add_argument("--out", required=True, help="output folder")
            p.add_argument("--repo-id", help="Hub repo id shown in the card's usage snippet")
        else:
            p.add_argument("--repo-id", required=True, help="Hub repo id, e.g. my-org/kan_vgg_gram")
            p.add_argument("--private", action="store_true", help="create the repo as private")
            p.add_argument("--revision", help="branch to commit to (created if missing)")
            p.add_argument("--commit-message", default="Upload kan_zoo model")
            p.add_argument("--token", help="Hub token (default: HF_TOKEN or the cached login)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        kwargs = _json_arg(args.model_kwargs, "--model-kwargs")
        if args.num_classes is not None:
            kwargs["num_classes"] = args.num_classes
        metrics = _json_arg(args.metrics, "--metrics") or None
        overrides = _json_arg(args.pretrained_cfg, "--pretrained-cfg") or None
        card = None
        if args.model_card is not None:
            if not Path(args.model_card).is_file():
                raise CliError(f"--model-card: file not found: {args.model_card}")
            card = Path(args.model_card).read_text(encoding="utf-8")
        model = load_model_for_cli(args.model, args.checkpoint, args.pretrained, kwargs)
        if args.command == "export":
            out = export_to_folder(model, args.out, metrics=metrics, model_card=card,
                                   pretrained_cfg_overrides=overrides, repo_id=args.repo_id)
            print(out)
        else:
            url = push_to_hub(model, args.repo_id, metrics=metrics, model_card=card,
                              pretrained_cfg_overrides=overrides, private=args.private,
                              commit_message=args.commit_message, revision=args.revision, token=args.token)
            print(url)
    except (CliError, HubError, OSError, ValueError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 1
    return 0
