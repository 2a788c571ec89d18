"""`accelerate launch -m kan_zoo.training ...` is the same as `accelerate launch train_imagenet.py ...`;
an installed wheel also has it as the `kan-zoo-train` command."""
import importlib.util
import os
import sys

# The training stack is the [train] extra: without it, say which install fixes it instead of a traceback.
_MISSING = [name for name in ("accelerate", "datasets") if importlib.util.find_spec(name) is None]


def cli() -> None:
    if _MISSING:
        print(f"error: training needs {' and '.join(_MISSING)}, which `pip install 'kan_zoo[train]'` installs",
              file=sys.stderr, flush=True)
        sys.exit(2)
    from kan_zoo.training.errors import USER_ERRORS, PeerError, exit_on_error
    from kan_zoo.training.run import Preempted, SimulatedKill, main

    try:
        main()
    except (PeerError, *USER_ERRORS) as e:
        exit_on_error(e)  # one `error:` line, from the main process only; status 2 on every process
    except Preempted as e:
        print(f"stopped: {e}", file=sys.stderr, flush=True)
        sys.exit(143)  # "terminated": job schedulers requeue on it
    except SimulatedKill:
        os._exit(137)  # test hook: vanish like a killed process, no final save


if __name__ == "__main__":
    cli()
