"""Entry point of ``python -m kan_zoo.hub``."""
import sys

from ._cli import main

sys.exit(main())
