"""Model cards: the README.md written next to exported weights, and one card per registered pretrained tag.

One writer, shared pieces: ``make_model_card`` describes a model being published (its metrics passed
in), ``pretrained_model_card`` a tag registered with timm (every fact read from the registry: the
tag's pretrained cfg, its meta-built model, and the cfg's ``"key: value"`` notes, see CARD_NOTE_KEYS).
``model_card_files`` / ``check_model_cards`` / ``write_model_cards`` keep ``model_cards/`` in step
with the registry (``scripts/make_model_cards.py``).
"""
from __future__ import annotations

import math
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from torch import nn

__all__ = [
    "make_model_card", "pretrained_model_card", "pretrained_tags", "model_card_files", "check_model_cards",
    "write_model_cards", "parse_card_notes", "CARD_NOTE_KEYS", "KAN_CITATION", "KAN_CONV_CITATION",
]

KAN_CITATION = """@article{liu2024kan,
  title={KAN: Kolmogorov-Arnold Networks},
  author={Liu, Ziming and Wang, Yixuan and Vaidya, Sachin and Ruehle, Fabian and Halverson, James and Solja{\\v{c}}i{\\'c}, Marin and Hou, Thomas Y. and Tegmark, Max},
  journal={arXiv preprint arXiv:2404.19756},
  year={2024}
}"""

KAN_CONV_CITATION = """@article{drokin2024kolmogorov,
  title={Kolmogorov-Arnold Convolutions: Design Principles and Empirical Studies},
  author={Drokin, Ivan},
  journal={arXiv preprint arXiv:2407.01092},
  year={2024}
}"""

# The "key: value" entries of a pretrained cfg's ``notes`` that a card reads. timm's PretrainedCfg is a
# dataclass that rejects unknown keys (also when a config.json is loaded back), so card facts travel
# as notes. Other notes are listed verbatim under "Notes".
CARD_NOTE_KEYS: Dict[str, str] = {
    "dataset": "training / evaluation dataset, e.g. ImageNet-1k",
    "top1": "top-1 accuracy (%) on the dataset's validation set",
    "top5": "top-5 accuracy (%)",
    "metrics": "where the accuracies come from (split, resolution, who measured them)",
    "params": "parameter count as published (checked against the built model)",
    "recipe": "how the weights were trained",
    "source": "where the weights come from (URL)",
    "licence": "licence of the weights, with its holder",
}


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        text = f"{value:.6g}"  # enough digits for accuracies/losses without float noise
        return text if any(c in text for c in ".en") else text + ".0"  # 71.0 stays visibly a float
    return str(value).replace("|", "\\|")  # a bare | would split the markdown table cell


def _kan_layers(model: nn.Module) -> str | None:
    """One line summarising the KAN layers (type x count, bases), or None for a non-KAN model."""
    from kan_zoo.layers import KANConvNd

    kinds: Counter[str] = Counter()
    bases: Counter[str] = Counter()
    for module in model.modules():
        if isinstance(module, KANConvNd):
            # A private subclass (e.g. a stem variant) is reported as its public base class.
            cls = next(c for c in type(module).__mro__ if not c.__name__.startswith("_"))
            kinds[cls.__name__] += 1
            basis = getattr(module, "basis", None)
            bases[getattr(basis, "name", None) or type(basis).__name__] += 1
    if not kinds:
        return None
    layers = ", ".join(f"{n} x {k}" for k, n in sorted(kinds.items()))
    return f"{layers}; basis: {', '.join(sorted(bases))}"


def _front_matter(licence: str, kan: bool, extra: Sequence[str] = ()) -> List[str]:
    """Hub YAML metadata: library, licence, task and tags (plus e.g. ``datasets:`` lines)."""
    tags = ["image-classification", "timm", "kan_zoo"] + (["kan", "kolmogorov-arnold"] if kan else [])
    lines = ["---", "library_name: timm", f"license: {licence}", "pipeline_tag: image-classification", "tags:"]
    return lines + [f"- {t}" for t in tags] + list(extra) + ["---", ""]


def _input_lines(cfg: Mapping[str, Any]) -> List[str]:
    """Input size and normalisation bullets of a pretrained cfg (as a dict)."""
    lines = []
    if cfg.get("input_size"):
        lines.append(f"- **Input size:** {' x '.join(str(s) for s in cfg['input_size'])}"
                     + (" (fixed)" if cfg.get("fixed_input_size") else ""))
    if cfg.get("mean") and cfg.get("std"):
        lines.append(f"- **Normalisation:** mean {tuple(cfg['mean'])}, std {tuple(cfg['std'])}")
    return lines


def _usage_lines(model_ref: str) -> List[str]:
    """Python snippet: create ``model_ref`` with its weights, build its eval transform, classify."""
    return ["## Usage", "", "```python", "import timm", "import torch",
            "import kan_zoo  # registers the kan_* architectures with timm", "",
            f'model = timm.create_model("{model_ref}", pretrained=True).eval()',
            "data_config = timm.data.resolve_data_config(model=model)",
            "transform = timm.data.create_transform(**data_config)  # eval transform",
            "with torch.no_grad():",
            "    probs = model(transform(image).unsqueeze(0)).softmax(dim=-1)  # image: a PIL image",
            "```", ""]


def _citation_lines() -> List[str]:
    return ["## Citation", "", "```bibtex", KAN_CITATION, "", KAN_CONV_CITATION, "```", ""]


def make_model_card(
    model: nn.Module,
    config: Mapping[str, Any],
    *,
    repo_id: str | None = None,
    metrics: Mapping[str, Any] | None = None,
) -> str:
    """Markdown model card (with Hub YAML metadata) for ``model`` exported with ``config``."""
    arch = config["architecture"]
    cfg = config.get("pretrained_cfg", {})
    licence = cfg.get("license") or "mit"
    hub_name = repo_id or f"<org>/{arch}"
    n_params = sum(p.numel() for p in model.parameters())
    kan = _kan_layers(model)

    lines = _front_matter(licence, bool(kan)) + [f"# {hub_name.split('/')[-1]}", ""]
    kind = "Kolmogorov-Arnold convolutional network (KAN conv)" if kan else "image classification model"
    lines += [f"A `{arch}` {kind} exported with `kan_zoo`, "
              "in timm's format: `config.json` + `model.safetensors`.", ""]

    lines += ["## Model details", "", f"- **Architecture:** `{arch}`",
              f"- **Parameters:** {n_params / 1e6:.3f} M ({n_params:,})",
              f"- **Classes:** {config.get('num_classes')}",
              f"- **Features before the classifier:** {config.get('num_features')}"]
    if kan:
        lines.append(f"- **KAN layers:** {kan}")
    lines += _input_lines(cfg)
    if config.get("model_args"):
        lines.append(f"- **Model args:** `{dict(config['model_args'])}`")
    lines.append("")

    if metrics:
        lines += ["## Metrics", "", "| Metric | Value |", "| --- | --- |"]
        lines += [f"| {_format_value(k)} | {_format_value(v)} |" for k, v in metrics.items()]
        lines.append("")

    lines += _usage_lines(f"hf-hub:{hub_name}")
    lines += ["With `transformers` installed, `AutoModelForImageClassification.from_pretrained"
              f'("{hub_name}")` loads the same weights (import `kan_zoo` first).', ""]

    lines += ["## Licence", "", f"The weights are released under the `{licence}` licence.", ""]
    lines += _citation_lines()
    return "\n".join(lines)


# --- cards of registered pretrained tags -----------------------------------------------------------

CARDS_README = "README.md"
_GENERATED = "<!-- Generated by scripts/make_model_cards.py from the kan_zoo registry; edits here are overwritten. -->"


def parse_card_notes(notes: Optional[Sequence[str]]) -> Tuple[Dict[str, str], List[str]]:
    """Splits cfg notes into ({CARD_NOTE_KEYS key: value}, [other notes verbatim])."""
    facts: Dict[str, str] = {}
    other: List[str] = []
    for note in notes or ():
        key, sep, value = str(note).partition(":")
        if sep and key.strip() in CARD_NOTE_KEYS:
            facts[key.strip()] = value.strip()
        else:
            other.append(str(note))
    return facts, other


def pretrained_tags() -> List[str]:
    """Every kan_* 'architecture.tag' registered with timm with weights, sorted."""
    import timm

    import kan_zoo  # noqa: F401  (registers the kan_* models)

    return sorted(timm.list_pretrained("kan_*"))


@dataclass
class _TagFacts:
    """What a card and the index row say about one pretrained tag, all read from the registry."""

    tag: str
    arch: str
    cfg: Dict[str, Any]
    notes: Dict[str, str]
    other_notes: List[str]
    params: int
    gmacs: Optional[float]
    kan: Optional[str]
    model_args: Dict[str, Any] = field(default_factory=dict)


def _family_model_args(arch: str) -> Dict[str, Any]:
    """The family table's build args of ``arch`` (``MODEL_ARGS`` of its module), or {} if it has none."""
    from timm.models import model_entrypoint

    module = sys.modules.get(model_entrypoint(arch).__module__)
    table = getattr(module, "MODEL_ARGS", None)
    return dict(table.get(arch, {})) if isinstance(table, Mapping) else {}


def _tag_facts(tag: str) -> _TagFacts:
    import timm
    import torch

    from ..complexity import count

    tags = pretrained_tags()
    if tag not in tags:
        raise ValueError(f"{tag!r} is not a registered pretrained kan_* tag; registered: {', '.join(tags)}")
    cfg = timm.models.get_pretrained_cfg(tag).to_dict()
    arch = cfg.get("architecture") or tag.split(".")[0]
    notes, other = parse_card_notes(cfg.get("notes"))
    # Meta device: shapes only, so even a large model costs milliseconds and no memory.
    with torch.device("meta"):
        model = timm.create_model(tag).eval()
    params, gmacs = count(model, tuple(cfg["input_size"]), name=tag)
    published = notes.get("params")
    if published is not None and int(published.replace(",", "").replace("_", "")) != params:
        # The registry contradicts itself; a card must not print either number silently.
        raise ValueError(f"{tag}: notes say params {published}, the built model has {params:,}")
    return _TagFacts(tag, arch, cfg, notes, other, params, gmacs, _kan_layers(model), _family_model_args(arch))


def _resize_line(cfg: Mapping[str, Any]) -> str:
    size = cfg["input_size"][-1]
    crop_pct = cfg.get("crop_pct") or 1.0
    # timm's eval transform: resize the short side to floor(size / crop_pct), then crop.
    scale = math.floor(size / crop_pct)
    mode = cfg.get("crop_mode") or "center"
    crop = "centre crop" if mode == "center" else f"{mode} crop"
    return (f"- **Eval resize / crop:** resize {scale}, {crop} {size} (crop_pct {crop_pct}), "
            f"{cfg.get('interpolation')} interpolation")


def _card_text(f: _TagFacts) -> str:
    from ..complexity import MAC_COUNT_NOTE, WAVELET_MAC_NOTE

    cfg, notes = f.cfg, f.notes
    tag_name = f.tag.split(".", 1)[1]
    dataset = notes.get("dataset")
    licence_id = cfg.get("license") or "unknown"
    extra = ["datasets:", f"- {dataset.lower().replace(' ', '-')}"] if dataset else []
    lines = _front_matter(licence_id, bool(f.kan), extra) + [_GENERATED, "", f"# {f.tag}", ""]
    if cfg.get("description"):
        lines += [cfg["description"].rstrip(".") + ".", ""]

    kind = "a Kolmogorov-Arnold convolutional network (KAN conv)" if f.kan else "an image classification model"
    lines += ["## Model details", "", f"- **Architecture:** `{f.arch}` (pretrained tag `{tag_name}`), {kind}"]
    if f.model_args:
        lines.append("- **Key args:** " + ", ".join(f"`{k}={v!r}`" for k, v in f.model_args.items()))
    if f.kan:
        lines.append(f"- **KAN layers:** {f.kan}")
    size = " x ".join(str(s) for s in cfg["input_size"])
    gmacs = "n/a" if f.gmacs is None else f"{f.gmacs:.2f}"
    mac_note = MAC_COUNT_NOTE + (f"; {WAVELET_MAC_NOTE}" if f.kan and "wavelet" in f.kan else "")
    lines += [f"- **Parameters:** {f.params / 1e6:.2f} M ({f.params:,})",
              f"- **GMACs:** {gmacs} per {size} image ({mac_note})",
              f"- **Classes:** {cfg.get('num_classes')}", ""]

    lines += ["## Preprocessing", ""] + _input_lines(cfg) + [_resize_line(cfg), ""]

    if "top1" in notes or "top5" in notes:
        lines += ["## Accuracy", "", "| Dataset | Top-1 (%) | Top-5 (%) |", "| --- | --- | --- |",
                  f"| {dataset or 'validation set'} | {notes.get('top1', 'n/a')} | {notes.get('top5', 'n/a')} |", ""]
        if notes.get("metrics"):
            lines += [f"Provenance: {notes['metrics']}.", ""]

    if dataset or notes.get("recipe"):
        lines += ["## Training", ""]
        lines += [f"- **Dataset:** {dataset}"] if dataset else []
        lines += [f"- **Recipe:** {notes['recipe']}"] if notes.get("recipe") else []
        lines.append("")

    lines += ["## Source and licence", ""]
    source = notes.get("source") or (f"https://huggingface.co/{cfg['hf_hub_id']}" if cfg.get("hf_hub_id") else cfg.get("url"))
    if source:
        file = f" (file `{cfg['hf_hub_filename']}`)" if cfg.get("hf_hub_filename") else ""
        lines.append(f"- **Weights:** {source}{file}")
    if cfg.get("origin_url"):
        lines.append(f"- **Original code:** {cfg['origin_url']}")
    lines.append(f"- **Licence:** {notes.get('licence') or licence_id}")
    if cfg.get("paper_ids"):  # a family may cite its topology's paper next to the KAN ones
        ids = cfg["paper_ids"].split(",") if isinstance(cfg["paper_ids"], str) else cfg["paper_ids"]
        lines.append(f"- **Papers:** {', '.join(i.strip() for i in ids)}")
    lines.append("")

    if f.other_notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in f.other_notes] + [""]

    lines += _usage_lines(f.tag) + _citation_lines()
    return "\n".join(lines)


def pretrained_model_card(tag: str) -> str:
    """Markdown model card of a registered pretrained tag ('architecture.tag'), from the registry alone."""
    return _card_text(_tag_facts(tag))


def _index_text(facts: Sequence[_TagFacts]) -> str:
    lines = ["# Model cards", "", _GENERATED, "",
             "One card per pretrained tag registered with timm (`timm.list_pretrained(\"kan_*\")` after "
             "`import kan_zoo`). Regenerate with `python scripts/make_model_cards.py`; "
             "`tests/test_model_cards.py` fails when a card is missing, stale or left over.", "",
             "| Tag | Architecture | Params (M) | GMACs | Input | Top-1 (%) | Top-5 (%) | Dataset | Licence |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for f in facts:
        gmacs = "n/a" if f.gmacs is None else f"{f.gmacs:.2f}"
        size = "x".join(str(s) for s in f.cfg["input_size"][1:])
        lines.append(f"| [{f.tag}]({f.tag}.md) | `{f.arch}` | {f.params / 1e6:.2f} | {gmacs} | {size} | "
                     f"{f.notes.get('top1', 'n/a')} | {f.notes.get('top5', 'n/a')} | {f.notes.get('dataset', 'n/a')} | "
                     f"{f.cfg.get('license') or 'n/a'} |")
    return "\n".join(lines + [""])


def model_card_files() -> Dict[str, str]:
    """{file name: content} of the model_cards/ folder: '<tag>.md' per pretrained tag and README.md."""
    facts = [_tag_facts(tag) for tag in pretrained_tags()]
    files = {f"{f.tag}.md": _card_text(f) for f in facts}
    files[CARDS_README] = _index_text(facts)
    return files


def check_model_cards(folder: Path | str, files: Optional[Mapping[str, str]] = None) -> List[str]:
    """Problems of ``folder`` against the registry ('missing: x', 'stale: x', 'extra: x'); [] when in step."""
    folder = Path(folder)
    files = model_card_files() if files is None else files
    present = {p.name for p in folder.glob("*.md")} if folder.is_dir() else set()
    problems = [f"missing: {name}" for name in sorted(set(files) - present)]
    problems += [f"stale: {name}" for name in sorted(set(files) & present)
                 if (folder / name).read_text(encoding="utf-8") != files[name]]
    # A card whose tag is no longer registered would advertise weights timm cannot load.
    problems += [f"extra: {name}" for name in sorted(present - set(files))]
    return problems


def write_model_cards(folder: Path | str) -> Tuple[List[Path], List[Path]]:
    """Writes every card and the index into ``folder`` and deletes left-over cards; (written, removed)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files = model_card_files()
    written, removed = [], []
    for name, text in files.items():
        path = folder / name
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8", newline="\n")  # \n on every OS: the check compares bytes
            written.append(path)
    for path in sorted(folder.glob("*.md")):
        if path.name not in files:
            path.unlink()
            removed.append(path)
    return written, removed
