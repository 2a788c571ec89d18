#!/usr/bin/env python
"""What knowledge distillation does to a small KAN student on the bundled digits, over several seeds.

    python benchmarks/distill_digits.py                    # teacher once, then student alone / distilled, seeds 0-2
    python benchmarks/distill_digits.py --seeds 0 1 2 3 --student-epochs 6

1. writes scikit-learn's 8x8 digits as an image folder (``kan_zoo.demo.write_digits_folder``:
   1257 train / 180 validation / 360 test images, split seed 0);
2. trains the teacher (default ``kan_simple4_gram``, the strongest net of the baseline table) once
   with train_imagenet.py's code and the digits recipe;
3. trains the student (default ``kan_test_vgg_chebyshev``) with the same recipe for each seed, once
   alone and once with ``--teacher-path <teacher export>`` (same seed: same initial weights, same
   augmentation draws), and scores every export on the held-out test split after reloading it;
4. prints a table of test accuracy, mean +- sample standard deviation over the seeds, and the
   per-seed differences (distilled - alone), and writes it all to WORKDIR/distill_digits.json.

Every run is one CPU process (``kan_zoo.training.main``, no launcher). Finished runs are reused,
so an interrupted benchmark continues where it stopped.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from compare_baselines import train_args  # noqa: E402  the digits recipe


def _train(model: str, data: Path, out: Path, epochs: int, img_size: int, seed: int, extra: Sequence[str]) -> float:
    """Trains (or reuses a finished run); returns the reloaded export's test accuracy (%)."""
    from kan_zoo.demo import evaluate_folder
    from kan_zoo.training import main as train_main

    timing = out / "train_seconds.txt"
    if not (out / "export" / "config.json").exists() or not timing.exists():
        start = time.time()
        resume = ["--resume"] if (out / "checkpoints").is_dir() else []
        train_main(train_args(model, data, out, epochs, img_size, seed) + list(extra) + resume)
        timing.write_text(f"{time.time() - start:.1f}")
    acc, _ = evaluate_folder(out / "export", data, "test")
    return acc


def _summary(values: List[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} +- {spread:.2f}"


def run(args: argparse.Namespace) -> Dict[str, object]:
    import kan_zoo  # noqa: F401  registers the kan_* models
    from kan_zoo.demo import write_digits_folder

    work = Path(args.workdir).resolve()
    data = write_digits_folder(work / "digits", seed=0)
    teacher_out = work / f"teacher_{args.teacher}_{args.teacher_epochs}ep"
    teacher_acc = _train(args.teacher, data, teacher_out, args.teacher_epochs, args.img_size, 0, [])
    print(f"teacher {args.teacher}: {teacher_acc:.2f}% test accuracy", flush=True)
    distill = ["--teacher-path", str(teacher_out / "export"), "--distill-alpha", str(args.alpha),
               "--distill-temperature", str(args.temperature)]
    rows = []
    for seed in args.seeds:
        alone = _train(args.student, data, work / f"student_{args.student}_{args.student_epochs}ep_s{seed}",
                       args.student_epochs, args.img_size, seed, [])
        with_teacher = _train(args.student, data,
                              work / f"student_{args.student}_{args.student_epochs}ep_s{seed}_kd_a{args.alpha}"
                                     f"_t{args.temperature}",
                              args.student_epochs, args.img_size, seed, distill)
        rows.append(dict(seed=seed, alone=alone, distilled=with_teacher))
        print(f"seed {seed}: alone {alone:.2f}%, distilled {with_teacher:.2f}%", flush=True)
    result = dict(teacher=args.teacher, teacher_epochs=args.teacher_epochs, teacher_accuracy=teacher_acc,
                  student=args.student, student_epochs=args.student_epochs, alpha=args.alpha,
                  temperature=args.temperature, img_size=args.img_size, rows=rows)
    (work / "distill_digits.json").write_text(json.dumps(result, indent=1))
    return result


def table(result: Dict[str, object]) -> str:
    rows = result["rows"]
    alone = [r["alone"] for r in rows]
    kd = [r["distilled"] for r in rows]
    diff = [b - a for a, b in zip(alone, kd)]
    seeds = ", ".join(str(r["seed"]) for r in rows)
    lines = [f"| student {result['student']}, {result['student_epochs']} epochs | test accuracy (%), seeds {seeds} "
             f"| mean +- std |",
             "| --- | --- | ---: |",
             f"| alone | {', '.join(f'{v:.2f}' for v in alone)} | {_summary(alone)} |",
             f"| distilled (alpha {result['alpha']:g}, T {result['temperature']:g}) | "
             f"{', '.join(f'{v:.2f}' for v in kd)} | {_summary(kd)} |",
             f"| difference, same seed | {', '.join(f'{v:+.2f}' for v in diff)} | {_summary(diff)} |",
             f"| teacher {result['teacher']}, {result['teacher_epochs']} epochs | {result['teacher_accuracy']:.2f} | |"]
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, object]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", default="kan_simple4_gram")
    p.add_argument("--teacher-epochs", type=int, default=10)
    p.add_argument("--student", default="kan_test_vgg_chebyshev")
    p.add_argument("--student-epochs", type=int, default=5)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--temperature", type=float, default=4.0)
    p.add_argument("--img-size", type=int, default=16)
    p.add_argument("--workdir", default="outputs/distill_digits")
    args = p.parse_args(argv)
    start = time.time()
    result = run(args)
    print()
    print(table(result))
    print(f"\n360 test digits; wall time {time.time() - start:.0f}s", flush=True)
    return result


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
