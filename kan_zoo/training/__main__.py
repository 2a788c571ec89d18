"""`accelerate launch -m kan_zoo.training ...` is the same as `accelerate launch train_imagenet.py ...`."""
import os
import sys

from kan_zoo.training.errors import USER_ERRORS, PeerError, exit_on_error
from kan_zoo.training.run import Preempted, SimulatedKill, main

if __name__ == "__main__":
    try:
        main()
    except (PeerError, *USER_ERRORS) as e:
        exit_on_error(e)  # one `error:` line, from the main process only; status 2 on every process
    except Preempted as e:
        print(f"stopped: {e}", file=sys.stderr, flush=True)
        sys.exit(143)  # "terminated": job schedulers requeue on it
    except SimulatedKill:
        os._exit(137)  # test hook: vanish like a killed process, no final save
