#!/usr/bin/env python
"""Writes model_cards/<tag>.md for every registered kan_* pretrained tag, and model_cards/README.md.

    python scripts/make_model_cards.py            # (re)write the cards, delete cards of unregistered tags
    python scripts/make_model_cards.py --check    # exit 1 listing missing / stale / extra cards

Everything comes from the registry (``timm.list_pretrained('kan_*')`` after ``import kan_zoo``): a
tag's pretrained cfg, its "key: value" notes (see ``kan_zoo.hub._card.CARD_NOTE_KEYS``) and its model
built on the meta device for params and GMACs. A new tag needs no edit here. The card writer is
``kan_zoo.hub.pretrained_model_card``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional

from kan_zoo.hub import check_model_cards, write_model_cards

DEFAULT_DIR = Path(__file__).resolve().parents[1] / "model_cards"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_DIR, help="cards folder (default: %(default)s)")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if the folder is out of date")
    args = parser.parse_args(argv)

    if args.check:
        problems = check_model_cards(args.out)
        for problem in problems:
            print(problem, file=sys.stderr)
        if problems:
            print(f"{args.out} is out of date: run python scripts/make_model_cards.py", file=sys.stderr)
            return 1
        print(f"{args.out}: up to date")
        return 0

    written, removed = write_model_cards(args.out)
    for path in written:
        print(f"wrote {path}")
    for path in removed:
        print(f"removed {path} (no such registered tag)")
    if not written and not removed:
        print(f"{args.out}: already up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
