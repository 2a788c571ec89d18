"""GPU-hours to train each pretrained tag's recipe on ImageNet-1k, from measured training images/s.

    GPU-hours = recipe epochs x 1 281 167 training images / measured images/s / 3600

The epochs are read from each tag's pretrained cfg (its "recipe: ..." note, which the model card
shows too); the images/s from the JSON lines that benchmarks/bench_train_throughput.py (model step
alone, synthetic input) and benchmarks/imagenet_train_run.py (the whole train_imagenet.py loop)
append with --json. Per tag the table takes the fastest successful step measurement of its
architecture (any batch, eager or compiled; the setting is named) and, where there is one, the
whole-loop run. Without measurements the figure cells stay empty.

    python benchmarks/imagenet_cost.py gpu_logs/throughput.jsonl gpu_logs/train_run.jsonl
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Dict, Iterable, List, Optional

IMAGENET_TRAIN_IMAGES = 1_281_167  # ImageNet-1k (ILSVRC-2012) training split
_EPOCHS = re.compile(r"\b(\d+) epochs\b")


def recipe_epochs(tag: str) -> int:
    """Epochs of the recipe behind a pretrained tag, from its cfg's "recipe:" note."""
    from timm.models import get_pretrained_cfg

    import kan_zoo  # noqa: F401  (registers the kan_* cfgs with timm)

    try:
        cfg = get_pretrained_cfg(tag)
    except RuntimeError as e:  # timm: "Invalid pretrained tag ..."
        raise ValueError(f"{tag!r} is not a registered pretrained tag ({e})") from e
    if cfg is None:
        raise ValueError(f"{tag!r} is not a registered pretrained tag")
    recipe = next((n.split(":", 1)[1] for n in (cfg.notes or ()) if n.startswith("recipe:")), None)
    found = _EPOCHS.findall(recipe or "")
    if len(found) != 1:
        raise ValueError(f"the recipe note of {tag!r} does not state one epoch count: {recipe!r}")
    return int(found[0])


def gpu_hours(epochs: int, images_per_s: float, images: int = IMAGENET_TRAIN_IMAGES) -> float:
    if images_per_s <= 0:
        raise ValueError(f"images/s must be > 0, got {images_per_s}")
    return epochs * images / images_per_s / 3600


def pretrained_tags() -> List[str]:
    import timm

    import kan_zoo  # noqa: F401

    return sorted(timm.list_pretrained("kan_*"))


def read_results(paths: Iterable[Path]) -> List[dict]:
    rows = []
    for path in paths:
        rows += [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return rows


def _fastest(rows: List[dict], arch: str, source: str) -> Optional[dict]:
    ok = [r for r in rows if r.get("model") == arch and r.get("source") == source and "images_per_s" in r]
    return max(ok, key=lambda r: r["images_per_s"]) if ok else None


def _rate(images_per_s: float) -> str:
    return f"{images_per_s:.0f}" if images_per_s >= 100 else f"{images_per_s:.3g}"


def _setting(r: dict) -> str:
    return f"batch {r['batch']}, {r['variant']}" + (", bf16" if r.get("amp") else "") + (
        ", channels_last" if r.get("channels_last") else "")


HEADER = ["tag", "recipe epochs", "step measured at", "step images/s", "GPU-hours (step)", "peak GiB",
          "whole-loop images/s", "GPU-hours (whole loop)"]


def cost_rows(results: List[dict], tags: Optional[List[str]] = None) -> List[Dict[str, object]]:
    out = []
    for tag in tags if tags is not None else pretrained_tags():
        arch, epochs = tag.split(".")[0], recipe_epochs(tag)
        step = _fastest(results, arch, "bench_train_throughput")
        loop = _fastest(results, arch, "train_imagenet.py")
        out.append({"tag": tag, "epochs": epochs, "step": step, "loop": loop,
                    "step_hours": gpu_hours(epochs, step["images_per_s"]) if step else None,
                    "loop_hours": gpu_hours(epochs, loop["images_per_s"]) if loop else None})
    return out


def cost_table(results: List[dict], tags: Optional[List[str]] = None) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    rows = cost_rows(results, tags)
    for r in rows:
        step, loop = r["step"], r["loop"]
        cells = [r["tag"], str(r["epochs"]),
                 _setting(step) if step else "", _rate(step["images_per_s"]) if step else "",
                 f"{r['step_hours']:.1f}" if step else "", f"{step['peak_mib'] / 1024:.1f}" if step else "",
                 f"{_rate(loop['images_per_s'])} ({_setting(loop)})" if loop else "",
                 f"{r['loop_hours']:.1f}" if loop else ""]
        lines.append("| " + " | ".join(cells) + " |")
    devices = sorted({str(m["device"]) for r in rows for m in (r["step"], r["loop"]) if m})
    note = f"measured on: {', '.join(devices)}" if devices else "no measurements given: figures left empty"
    return "\n".join(lines + ["", f"({note}; {IMAGENET_TRAIN_IMAGES:,} training images per epoch)"])


def main(argv: Optional[List[str]] = None) -> str:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", nargs="*", type=Path, help="JSON-lines files of the benchmarks (missing ones skipped)")
    ap.add_argument("--markdown", type=Path, default=None, help="also write the table to this file")
    args = ap.parse_args(argv)
    table = cost_table(read_results(p for p in args.results if p.exists()))
    print(table)
    if args.markdown:
        args.markdown.write_text(table + "\n")
    return table


if __name__ == "__main__":
    main()
