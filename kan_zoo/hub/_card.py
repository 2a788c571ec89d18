"""The README.md model card written next to exported weights."""
from __future__ import annotations

from collections import Counter
from typing import Any, Mapping

from torch import nn

__all__ = ["make_model_card", "KAN_CITATION", "KAN_CONV_CITATION"]

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
            kinds[type(module).__name__] += 1
            basis = getattr(module, "basis", None)
            bases[getattr(basis, "name", None) or type(basis).__name__] += 1
    if not kinds:
        return None
    layers = ", ".join(f"{n} x {k}" for k, n in sorted(kinds.items()))
    return f"{layers}; basis: {', '.join(sorted(bases))}"


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

    tags = ["image-classification", "timm", "kan_zoo"] + (["kan", "kolmogorov-arnold"] if kan else [])
    lines = ["---", "library_name: timm", f"license: {licence}", "pipeline_tag: image-classification", "tags:"]
    lines += [f"- {t}" for t in tags]
    lines += ["---", "", f"# {hub_name.split('/')[-1]}", ""]
    kind = "Kolmogorov-Arnold convolutional network (KAN conv)" if kan else "image classification model"
    lines += [f"A `{arch}` {kind} exported with `kan_zoo`, "
              "in timm's format: `config.json` + `model.safetensors`.", ""]

    lines += ["## Model details", "", f"- **Architecture:** `{arch}`",
              f"- **Parameters:** {n_params / 1e6:.3f} M ({n_params:,})",
              f"- **Classes:** {config.get('num_classes')}",
              f"- **Features before the classifier:** {config.get('num_features')}"]
    if kan:
        lines.append(f"- **KAN layers:** {kan}")
    if cfg.get("input_size"):
        lines.append(f"- **Input size:** {' x '.join(str(s) for s in cfg['input_size'])}"
                     + (" (fixed)" if cfg.get("fixed_input_size") else ""))
    if cfg.get("mean") and cfg.get("std"):
        lines.append(f"- **Normalisation:** mean {tuple(cfg['mean'])}, std {tuple(cfg['std'])}")
    if config.get("model_args"):
        lines.append(f"- **Model args:** `{dict(config['model_args'])}`")
    lines.append("")

    if metrics:
        lines += ["## Metrics", "", "| Metric | Value |", "| --- | --- |"]
        lines += [f"| {_format_value(k)} | {_format_value(v)} |" for k, v in metrics.items()]
        lines.append("")

    lines += ["## Usage", "", "```python", "import timm", "import torch",
              "import kan_zoo  # registers the kan_* architectures with timm", "",
              f'model = timm.create_model("hf-hub:{hub_name}", pretrained=True).eval()',
              "data_config = timm.data.resolve_model_data_config(model)",
              "transform = timm.data.create_transform(**data_config, is_training=False)",
              "with torch.no_grad():",
              "    probs = model(transform(image).unsqueeze(0)).softmax(dim=-1)  # image: a PIL image",
              "```", "",
              "With `transformers` installed, `AutoModelForImageClassification.from_pretrained"
              f'("{hub_name}")` loads the same weights (import `kan_zoo` first).', ""]

    lines += ["## Licence", "", f"The weights are released under the `{licence}` licence.", ""]
    lines += ["## Citation", "", "```bibtex", KAN_CITATION, "", KAN_CONV_CITATION, "```", ""]
    return "\n".join(lines)
