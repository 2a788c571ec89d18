"""model_cards/ is in step with the registry: one current card per registered pretrained tag, no others.

Regenerate with ``python scripts/make_model_cards.py`` when these fail.
"""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Dict

import pytest
import timm
import torch

import kan_zoo  # noqa: F401  (registers the kan_* models and their pretrained tags)
from kan_zoo.hub import check_model_cards, model_card_files, pretrained_model_card, write_model_cards
from kan_zoo.hub._card import parse_card_notes

ROOT = Path(__file__).resolve().parents[1]
CARDS = ROOT / "model_cards"
REGENERATE = "run `python scripts/make_model_cards.py` and commit model_cards/"


@pytest.fixture(scope="module")
def generated() -> Dict[str, str]:
    # Built once: every test below compares against the same generator output.
    return model_card_files()


def _tags() -> list[str]:
    return sorted(timm.list_pretrained("kan_*"))


def test_every_registered_tag_has_a_current_card_and_no_card_is_left_over(generated):
    problems = check_model_cards(CARDS, generated)
    assert not problems, f"model_cards/ is out of date ({', '.join(problems)}): {REGENERATE}"


def test_generator_covers_exactly_the_registered_tags(generated):
    assert _tags(), "no kan_* pretrained tag is registered"
    assert set(generated) == {f"{tag}.md" for tag in _tags()} | {"README.md"}


@pytest.mark.parametrize("tag", _tags())
def test_card_states_the_registry_facts(tag, generated):
    card = (CARDS / f"{tag}.md").read_text(encoding="utf-8")
    cfg = timm.models.get_pretrained_cfg(tag)
    notes, _ = parse_card_notes(cfg.notes)
    # Parameters counted here, independently of the generator.
    with torch.device("meta"):
        params = sum(p.numel() for p in timm.create_model(tag).parameters())
    size = cfg.input_size[-1]
    facts = [
        f"# {tag}", f"`{cfg.architecture}`", f"{params:,}", "GMACs:",
        f"resize {math.floor(size / cfg.crop_pct)}, centre crop {size}", cfg.interpolation,
        f"mean {tuple(cfg.mean)}, std {tuple(cfg.std)}", f"license: {cfg.license}",
        f'timm.create_model("{tag}", pretrained=True)', "resolve_data_config", "create_transform",
        "arXiv:2404.19756", "arXiv:2407.01092",  # KAN (Liu et al.) and KAN convolutions (Drokin)
    ]
    facts += [notes[k] for k in ("top1", "top5", "dataset", "recipe", "source", "licence") if k in notes]
    if cfg.hf_hub_id:
        facts.append(f"https://huggingface.co/{cfg.hf_hub_id}")
    for fact in facts:
        assert fact in card, (tag, fact)
    if "params" in notes:  # the published count is the one the model has
        assert int(notes["params"].replace(",", "")) == params
    assert f"[{tag}]({tag}.md)" in generated["README.md"]


def test_torch_conv_kan_checkpoints_cards():
    """Spot values from the reference's published table, so a registry typo does not pass silently."""
    card = pretrained_model_card("kan_vgg11_gram.in1k")
    for fact in ("| ImageNet-1k | 61.17 | 83.26 |", "41,424,516", "14.47", "reported by the authors",
                 "AdamW, lr 9e-4, weight decay 5e-6, 7500 linear warmup steps, polynomial decay (power 0.3) to 1e-7",
                 "label smoothing 0.05", "200 epochs at 224 px", "https://huggingface.co/brivangl/vgg_kagn11_v4",
                 "MIT (torch-conv-kan, Copyright (c) 2024 Ivan Drokin)", "license: mit", "- imagenet-1k"):
        assert fact in card, fact
    assert "| ImageNet-1k | 68.50 | 88.46 |" in pretrained_model_card("kan_vgg11_bottleneck_gram.in1k")


def test_check_reports_missing_stale_and_extra_cards(tmp_path, generated):
    write_model_cards(tmp_path)
    assert check_model_cards(tmp_path, generated) == []
    first = sorted(n for n in generated if n != "README.md")[0]
    (tmp_path / first).unlink()
    (tmp_path / "README.md").write_text(generated["README.md"] + "hand edit\n", encoding="utf-8")
    (tmp_path / "kan_gone.in1k.md").write_text("# gone\n", encoding="utf-8")
    assert check_model_cards(tmp_path, generated) == [f"missing: {first}", "stale: README.md", "extra: kan_gone.in1k.md"]
    written, removed = write_model_cards(tmp_path)
    assert {p.name for p in written} == {first, "README.md"} and [p.name for p in removed] == ["kan_gone.in1k.md"]
    assert check_model_cards(tmp_path, generated) == []


def test_script_check_mode_exit_status(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("make_model_cards", ROOT / "scripts" / "make_model_cards.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main(["--check", "--out", str(tmp_path)]) == 1
    assert "missing: README.md" in capsys.readouterr().err
    assert script.main(["--out", str(tmp_path)]) == 0
    assert script.main(["--check", "--out", str(tmp_path)]) == 0


def test_unregistered_tag_is_refused():
    with pytest.raises(ValueError, match="not a registered pretrained"):
        pretrained_model_card("kan_vgg11_gram.no_such_tag")
