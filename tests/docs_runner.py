"""Runs the code blocks of one documentation page, for tests/test_docs.py.

A page's blocks run in page order in one process, from the page's own copy of the repository (its cwd):
```python blocks in one namespace shared by the page, ```bash blocks as ``bash -e -o pipefail <block>``.
Each finished block appends one JSON line ({"line", "status", "seconds", "cpu_seconds", "error"}) to the page's results
file, so a page that hangs still tells which block it was in. The first failure stops the page: later
blocks may build on it.

    python tests/docs_runner.py SPEC.json    run one page (SPEC: see run_page)
    python tests/docs_runner.py --serve MODULE...
                                             import the MODULEs once (torch, timm, kan_zoo), then for each SPEC
                                             path read from stdin fork a fresh child that runs it; replies
                                             "started <pid>" and "done <exit status>" on stdout

The server saves every page the imports (seconds of CPU each) and still gives each page a fresh process,
so what one page switches on (memory reuse, kernel switches, thread counts) never reaches another.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Dict, List

try:
    import resource
except ImportError:  # not on Windows: CPU time of subprocesses is then not counted
    resource = None

def run_block(block: Dict[str, Any], page: str, namespace: Dict[str, Any], scratch: Path) -> None:
    """Run one block; raises on failure (a bash block: CalledProcessError with its exit status)."""
    if block["lang"] == "python":
        # Blank lines in front make tracebacks (and linecache) point at the block's lines in the page.
        code = compile("\n" * block["line"] + block["source"], page, "exec")
        exec(code, namespace)
    elif block["lang"] == "bash":
        script = scratch / f"block_{block['line']}.sh"
        script.write_text(block["source"], encoding="utf-8")
        subprocess.run(["bash", "-e", "-o", "pipefail", str(script)], check=True, stdin=subprocess.DEVNULL)
    else:
        raise ValueError(f"{page}:{block['line']}: no runner for language {block['lang']!r}")


def _cpu_seconds() -> float:
    """CPU time of this process and of the subprocesses it waited for (a bash block's commands)."""
    if resource is None:
        return time.process_time()
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def run_page(spec: Dict[str, Any]) -> int:
    """spec: {"page": path shown in tracebacks, "cwd": the page's repository copy, "results": JSONL path,
    "log": file for the blocks' stdout/stderr, "blocks": [{"line": fence line, "lang", "source"}]}.
    Returns 0 when every block passed, 1 otherwise."""
    log = os.open(spec["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)  # a block reading stdin must not read the server's requests
    os.chdir(spec["cwd"])
    namespace: Dict[str, Any] = {"__name__": "__main__"}
    status = 0
    with tempfile.TemporaryDirectory(prefix="doc_blocks_") as scratch, open(spec["results"], "a") as results:
        for block in spec["blocks"]:
            print(f"----- {spec['page']}:{block['line']} ({block['lang']})", flush=True)
            start, cpu_start = time.perf_counter(), _cpu_seconds()
            error = None
            try:
                run_block(block, spec["page"], namespace, Path(scratch))
            except subprocess.CalledProcessError as exc:
                error = f"bash block exited with status {exc.returncode} (its output is in the log below)"
            except BaseException:  # noqa: BLE001  SystemExit from a block is a failure too
                error = traceback.format_exc()
            sys.stdout.flush()
            sys.stderr.flush()
            row = {"line": block["line"], "status": "failed" if error else "passed",
                   "seconds": time.perf_counter() - start, "cpu_seconds": _cpu_seconds() - cpu_start, "error": error}
            results.write(json.dumps(row) + "\n")
            results.flush()
            if error:
                print(error, flush=True)
                status = 1
                break
    return status


def _run_spec_file(path: str) -> int:
    return run_page(json.loads(Path(path).read_text(encoding="utf-8")))


def serve(preload: List[str]) -> None:
    import importlib

    for name in preload:
        importlib.import_module(name)
    for request in sys.stdin:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.setsid()  # one process group per page: a timeout kills the page's subprocesses too
                code = _run_spec_file(request.strip())
            finally:
                os._exit(code)
        print(f"started {pid}", flush=True)
        _, status = os.waitpid(pid, 0)
        print(f"done {status}", flush=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        serve(sys.argv[2:])
    elif len(sys.argv) == 2:
        sys.exit(_run_spec_file(sys.argv[1]))
    else:
        sys.exit(__doc__)
