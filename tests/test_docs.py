"""The documentation runs: every pasteable code block of README.md and docs/**/*.md is executed, offline.

The convention (docs/development.md, "Documentation"):

* ```python blocks of one page run in page order in one shared namespace; ```bash blocks run with
  ``bash -e -o pipefail`` from the repository root. Each page runs in a fresh process (tests/docs_runner.py)
  from its own temporary copy of the repository, so whatever a page writes stays there.
* A block whose fence is preceded, on the line right before it, by ``<!-- doctest: skip (reason) -->`` is not
  run; its test is reported as skipped with that reason. ```text and every other fence are never run.
* Offline: HF_HUB_OFFLINE=1, and ``pretrained=True`` finds the registered kan_* weights in a local Hugging Face
  cache built here (seeded weights in the published repos' names, as tests/models/test_pretrained.py does with
  the fixtures), so blocks show the real calls without a network.

One test per block, named ``page:line`` (the fence's line), so a failure names the block; a failed block
stops its page, and the blocks after it fail as "not run". Links and anchors of every page are checked too.
"""
from __future__ import annotations

import hashlib
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUNNER = Path(__file__).resolve().with_name("docs_runner.py")
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]
RUNNABLE = ("python", "bash")
# Fence languages that look like code a reader would paste but that the convention never runs.
UNTESTED_ALIASES = {"py", "python3", "pycon", "ipython", "sh", "shell", "console", "zsh"}
PAGE_TIMEOUT_S = 600  # a guard against a hung page; a loaded 2-core machine took ~250 s for docs/training.md
# What nearly every page imports: the runner server imports it once, before it forks a process per page.
PRELOAD = ("torch", "timm", "kan_zoo", "kan_zoo.layers", "kan_zoo.hub")
README_MAX_LINES = 220  # the front page's budget ("~200 lines"); detail belongs in docs/

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
_SKIP = re.compile(r"^<!--\s*doctest:\s*skip\s*\((?P<reason>.*)\)\s*-->$")
_MARKER = re.compile(r"<!--\s*doctest\b")


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    lang: str
    source: str
    skip: Optional[str] = None

    @property
    def id(self) -> str:
        return f"{_rel(self.page)}:{self.line}"


@dataclass
class Page:
    path: Path
    blocks: List[Block] = field(default_factory=list)
    prose: List[Tuple[int, str]] = field(default_factory=list)  # (line, text) outside fences
    problems: List[str] = field(default_factory=list)


def _folder_name(path: Path) -> str:
    return re.sub(r"[^\w.-]", "_", _rel(path))


def _rel(path: Path) -> str:
    try:
        return path.resolve().relative_to(ROOT).as_posix()
    except ValueError:
        return str(path)


def parse_page(path: Path, text: Optional[str] = None) -> Page:
    """Fenced blocks (``` or ~~~, indented ones too), the prose between them, and convention problems."""
    lines = (path.read_text(encoding="utf-8") if text is None else text).splitlines()
    page = Page(path)
    name = _rel(path)
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if not opening:
            page.prose.append((i + 1, lines[i]))
            if _MARKER.search(re.sub(r"`[^`]*`", "", lines[i])):  # a marker quoted as inline code is prose
                if not _SKIP.match(lines[i].strip()):
                    page.problems.append(f"{name}:{i + 1}: malformed marker (write <!-- doctest: skip (reason) -->)")
                elif i + 1 >= len(lines) or not _FENCE.match(lines[i + 1]):
                    page.problems.append(f"{name}:{i + 1}: a doctest marker must be the line right before a fence")
            i += 1
            continue
        indent, fence = len(opening["indent"]), opening["fence"]
        info = opening["info"].strip()
        lang = info.split()[0].lower() if info else ""
        start, body = i + 1, []
        i += 1
        while i < len(lines) and not re.match(rf"^[ \t]*{re.escape(fence[0])}{{{len(fence)},}}[ \t]*$", lines[i]):
            body.append(lines[i][indent:] if lines[i][:indent].strip() == "" else lines[i].lstrip())
            i += 1
        if i >= len(lines):
            page.problems.append(f"{name}:{start}: fence never closed")
        i += 1
        skip = None
        previous = lines[start - 2].strip() if start >= 2 else ""
        marker = _SKIP.match(previous)
        if marker:
            skip = marker["reason"].strip()
            if not skip:
                page.problems.append(f"{name}:{start - 1}: a skip must name its reason (GPU, network, hours, ...)")
            if lang not in RUNNABLE:
                page.problems.append(f"{name}:{start - 1}: skip marker on a ```{lang} block, which never runs")
        if lang in UNTESTED_ALIASES:
            page.problems.append(f"{name}:{start}: ```{lang} is never run: use ```python or ```bash (tested) "
                                 "or ```text (an output listing)")
        page.blocks.append(Block(path, start, lang, "\n".join(body) + "\n", skip))
    return page


def runnable_blocks() -> List[Block]:
    return [b for page in PAGES for b in parse_page(page).blocks if b.lang in RUNNABLE]


# ---------------------------------------------------------------------------------------------------------
# Running pages


def _ignore_for_copy(folder: str, names: List[str]) -> List[str]:
    skip = {"__pycache__", ".pytest_cache", ".git"}
    if Path(folder).resolve() == ROOT:
        skip |= {".venv", ".upstream", "runs", "outputs", "build", "dist", "data"}
    return [n for n in names if n in skip or n.endswith(".egg-info")]


def _doc_environment(tmp: Path) -> Dict[str, str]:
    hf_home = tmp / "hf_home"
    (hf_home / "hub").mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.update(
        HF_HOME=str(hf_home), HF_HUB_CACHE=str(hf_home / "hub"), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1", HF_DATASETS_CACHE=str(tmp / "datasets"),
        MPLBACKEND="Agg",
        # One intra-op thread: the blocks are tiny, and under pytest -n 2 more threads only oversubscribe.
        OMP_NUM_THREADS="1",
        # `python`, `accelerate` and the other console scripts of the environment running the tests.
        PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
        PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p),
    )
    return env


def _build_pretrained_cache(hub_cache: Path, scratch: Path, sources: str, built: set) -> None:
    """Cache, under the published repo ids, seeded weights of every pretrained tag the blocks mention."""
    if "pretrained" not in sources:
        return
    import timm
    import torch

    import kan_zoo  # noqa: F401
    from hub_helpers import build_local_hf_cache
    from kan_zoo.hub import export_to_folder
    from kan_zoo.models.kan_vgg import PRETRAINED_WEIGHTS

    for tag, info in PRETRAINED_WEIGHTS.items():
        arch = tag.split(".")[0]
        if tag in built or not re.search(rf"\b{re.escape(arch)}\b", sources):
            continue
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = timm.create_model(arch)
        folder = export_to_folder(model, scratch / tag)
        build_local_hf_cache(hub_cache, info["hf_hub_id"],
                             {name: folder / name for name in ("model.safetensors", "config.json")})
        built.add(tag)


class PageRunner:
    """Runs each page once per test session, on first demand, and keeps each block's result.

    ``tmp`` is this process's scratch folder (its runner server, its Hugging Face cache); ``pages`` holds the pages'
    runs and is shared by the session's xdist workers: a page is run by whichever worker asks first, under a file
    lock, and the others read its results. (pytest 9 ignores xdist's ``--dist loadgroup`` groups, which only
    rewrite ``item._nodeid``, so the blocks of one page can land on both workers.)
    """

    def __init__(self, tmp: Path, pages: Path, preload: Tuple[str, ...] = PRELOAD) -> None:
        self.tmp, self.pages, self.preload = tmp, pages, preload
        self.env = _doc_environment(tmp)
        self.results: Dict[Path, Dict[int, dict]] = {}
        self.logs: Dict[Path, Path] = {}
        self._built: set = set()
        self._server: Optional[subprocess.Popen] = None
        self._replies: "queue.Queue[str]" = queue.Queue()

    def result(self, block: Block) -> Tuple[Optional[dict], Path]:
        if block.page not in self.results:
            self.results[block.page] = self._run(block.page)
        return self.results[block.page].get(block.line), self.logs[block.page]

    def _run(self, path: Path) -> Dict[int, dict]:
        from filelock import FileLock  # a dependency of huggingface_hub

        digest = hashlib.sha1(path.read_bytes()).hexdigest()[:12]
        work = self.pages / f"{_folder_name(path)}-{digest}"
        self.logs[path] = work / "log.txt"
        with FileLock(f"{work}.lock", timeout=2 * PAGE_TIMEOUT_S):
            if not (work / "rows.json").exists():
                shutil.rmtree(work, ignore_errors=True)  # what a killed worker left behind
                rows = self._run_once(path, work)
                (work / "rows.json").write_text(json.dumps(rows), encoding="utf-8")
        return {int(line): row for line, row in json.loads((work / "rows.json").read_text()).items()}

    def _run_once(self, path: Path, work: Path) -> Dict[int, dict]:
        blocks = [b for b in parse_page(path).blocks if b.lang in RUNNABLE and b.skip is None]
        shutil.copytree(ROOT, work / "repo", ignore=_ignore_for_copy, symlinks=True)
        _build_pretrained_cache(Path(self.env["HF_HUB_CACHE"]), self.tmp / "hub_src",
                                "".join(b.source for b in blocks), self._built)
        spec = dict(page=str(path), cwd=str(work / "repo"), results=str(work / "results.jsonl"),
                    log=str(work / "log.txt"),
                    blocks=[dict(line=b.line, lang=b.lang, source=b.source) for b in blocks])
        (work / "spec.json").write_text(json.dumps(spec), encoding="utf-8")
        start = time.monotonic()
        finished, status = self._execute(work / "spec.json", PAGE_TIMEOUT_S)
        rows = {}
        if (work / "results.jsonl").exists():
            for text in (work / "results.jsonl").read_text().splitlines():
                row = json.loads(text)
                rows[row["line"]] = row
        stopped = next((b for b in blocks if b.line not in rows), None)
        if stopped is not None and not any(row["status"] == "failed" for row in rows.values()):
            why = (f"the page ran past its {PAGE_TIMEOUT_S} s limit in this block" if not finished else
                   f"the page's process ended (status {status}) in this block")
            rows[stopped.line] = dict(line=stopped.line, status="failed", seconds=time.monotonic() - start, error=why)
        return rows

    def _execute(self, spec: Path, timeout: float) -> Tuple[bool, Optional[int]]:
        """Run one spec: (False when it ran past the timeout and was killed, the page process's exit status)."""
        if not hasattr(os, "fork"):
            try:
                proc = subprocess.run([sys.executable, str(RUNNER), str(spec)], env=self.env, timeout=timeout,
                                      stdin=subprocess.DEVNULL)
                return True, proc.returncode
            except subprocess.TimeoutExpired:
                return False, None
        deadline = time.monotonic() + timeout
        server = self._start_server()
        server.stdin.write(f"{spec}\n")
        server.stdin.flush()
        pid = None
        while True:
            try:
                reply = self._replies.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                self._kill(pid)
                return False, None
            if reply.startswith("started "):
                pid = int(reply.split()[1])
            elif reply.startswith("done "):
                return True, int(reply.split()[1])
            elif reply == "":  # the server itself died
                self._server = None
                return True, None

    def _start_server(self) -> subprocess.Popen:
        if self._server is None or self._server.poll() is not None:
            self._server = subprocess.Popen([sys.executable, str(RUNNER), "--serve", *self.preload], env=self.env,
                                            cwd=self.tmp, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            self._replies = queue.Queue()
            threading.Thread(target=self._read_replies, args=(self._server, self._replies), daemon=True).start()
        return self._server

    @staticmethod
    def _read_replies(server: subprocess.Popen, replies: "queue.Queue[str]") -> None:
        for reply in server.stdout:
            replies.put(reply.strip())
        replies.put("")

    def _kill(self, pid: Optional[int]) -> None:
        if pid is not None:
            for kill in (lambda: os.killpg(pid, signal.SIGKILL), lambda: os.kill(pid, signal.SIGKILL)):
                try:
                    kill()
                    break
                except (ProcessLookupError, PermissionError):
                    continue
        try:  # the server answers "done" once the child is gone; without that answer it is replaced
            while not self._replies.get(timeout=30).startswith("done"):
                pass
        except queue.Empty:
            self.close()

    def close(self) -> None:
        times = os.environ.get("KAN_ZOO_DOCS_TIMES")
        if times and self.results:  # where the blocks' wall and CPU seconds go, for measuring the doc test's cost
            worker = os.environ.get("PYTEST_XDIST_WORKER")
            timings = {_rel(page): rows for page, rows in self.results.items()}
            Path(f"{times}.{worker}" if worker else times).write_text(json.dumps(timings, indent=1))
        if self._server is not None:
            self._server.kill()
            self._server.wait()
            self._server = None


@pytest.fixture(scope="module")
def page_runner(tmp_path_factory) -> Iterator[PageRunner]:
    base = tmp_path_factory.getbasetemp()
    # Under xdist each worker's basetemp is <session>/popen-gwN: the session folder is the one they share.
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    pages = shared / "doc_pages"
    pages.mkdir(exist_ok=True)
    runner = PageRunner(tmp_path_factory.mktemp("docs"), pages)
    yield runner
    runner.close()


def _tail(path: Path, chars: int = 4000) -> str:
    text = path.read_text(errors="replace") if path.exists() else ""
    return text[-chars:]


@pytest.mark.xdist_group("docs")
@pytest.mark.parametrize("block", runnable_blocks(), ids=lambda b: b.id)
def test_doc_block(block: Block, page_runner: PageRunner) -> None:
    if block.skip is not None:
        pytest.skip(f"{block.id}: {block.skip}")
    row, log = page_runner.result(block)
    if row is None:
        ran = page_runner.results[block.page]
        failed = next((line for line, r in ran.items() if r["status"] == "failed"), None)
        reason = f"block {_rel(block.page)}:{failed} failed before it" if failed else "the page did not reach it"
        pytest.fail(f"{block.id} was not run: {reason}", pytrace=False)
    if row["status"] != "passed":
        pytest.fail(f"{block.id} ({block.lang}) failed:\n{row['error']}\n--- page log (tail) ---\n{_tail(log)}",
                    pytrace=False)


# ---------------------------------------------------------------------------------------------------------
# Form of the pages: markers, links and anchors, the index, the front page's length

_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?(?P<target>[^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFERENCE = re.compile(r"^\s*\[[^\]]+\]:\s*(?P<target>\S+)")
_HTML_LINK = re.compile(r"""<(?:a|img)\b[^>]*\b(?:href|src)\s*=\s*["'](?P<target>[^"']+)["']""", re.IGNORECASE)
_HTML_ANCHOR = re.compile(r"""<a\b[^>]*\b(?:id|name)\s*=\s*["'](?P<anchor>[^"']+)["']""", re.IGNORECASE)


def heading_slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup dropped, lower case, punctuation removed, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # [text](link) -> text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set:
    found, seen = set(), {}
    for _, line in parse_page(path).prose:
        heading = re.match(r"^ {0,3}#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading:
            slug = heading_slug(heading[1])
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            found.add(slug if n == 0 else f"{slug}-{n}")
        found.update(m["anchor"] for m in _HTML_ANCHOR.finditer(line))
    return found


def links(page: Page) -> Iterator[Tuple[int, str]]:
    for number, line in page.prose:
        line = re.sub(r"`[^`]*`", "", line)  # inline code is not a link
        for pattern in (_LINK, _REFERENCE, _HTML_LINK):
            for match in pattern.finditer(line):
                yield number, match["target"]


def broken_links(path: Path) -> List[str]:
    page, problems = parse_page(path), []
    for number, target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):  # http:, https:, mailto:
            continue
        where = f"{_rel(path)}:{number}: {target}"
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path.resolve()
        if ROOT.resolve() not in (linked, *linked.parents):
            problems.append(f"{where} leaves the repository")
        elif not linked.exists():
            problems.append(f"{where} does not exist")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            problems.append(f"{where}: no heading or anchor #{anchor} in {_rel(linked)}")
    return problems


@pytest.mark.parametrize("path", PAGES, ids=_rel)
def test_page_follows_the_doctest_convention(path: Path) -> None:
    assert parse_page(path).problems == []


@pytest.mark.parametrize("path", PAGES, ids=_rel)
def test_links_and_anchors_resolve(path: Path) -> None:
    assert broken_links(path) == []


def test_docs_index_lists_every_page() -> None:
    index = DOCS / "README.md"
    linked = {(index.parent / target.partition("#")[0]).resolve() for _, target in links(parse_page(index))}
    missing = [_rel(p) for p in PAGES if p.parent.resolve() != ROOT and p != index and p.resolve() not in linked]
    assert missing == [], "add a line for each page to docs/README.md"


def test_readme_is_a_front_page() -> None:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines: move detail to a page in docs/"


# ---------------------------------------------------------------------------------------------------------
# The machinery itself, on made-up pages

SAMPLE = """# A page

Intro, with a [link](#a-page) and `inline [not](a-link)` and `<!-- doctest: skip (quoted) -->`.

```python
x = 1
```

<!-- doctest: skip (GPU) -->
```bash
nvidia-smi
```

   ```text
   never run
   ```

- item:
  ```python
  x += 1
  ```
"""


def test_parser_reads_blocks_skips_and_indented_fences(tmp_path: Path) -> None:
    page = parse_page(tmp_path / "p.md", SAMPLE)
    assert [(b.line, b.lang, b.source, b.skip) for b in page.blocks] == [
        (5, "python", "x = 1\n", None), (10, "bash", "nvidia-smi\n", "GPU"),
        (14, "text", "never run\n", None), (19, "python", "x += 1\n", None)]
    assert page.problems == []
    assert [target for _, target in links(page)] == ["#a-page"]


@pytest.mark.parametrize("text, problem", [
    ("<!-- doctest: skip () -->\n```python\npass\n```\n", "must name its reason"),
    ("<!-- doctest: skip (GPU) -->\n\n```python\npass\n```\n", "right before a fence"),
    ("<!-- doctest: skip GPU -->\n```python\npass\n```\n", "malformed marker"),
    ("<!-- doctest: skip (GPU) -->\n```text\nout\n```\n", "never runs"),
    ("```sh\nls\n```\n", "is never run"),
    ("```python\npass\n", "never closed"),
])
def test_parser_reports_convention_problems(tmp_path: Path, text: str, problem: str) -> None:
    problems = parse_page(tmp_path / "p.md", text).problems
    assert len(problems) == 1 and problem in problems[0], problems


def test_slugs_and_anchors_follow_github(tmp_path: Path) -> None:
    assert heading_slug("Speed and memory") == "speed-and-memory"
    assert heading_slug("On a GPU (NVIDIA H200), with `Triton`") == "on-a-gpu-nvidia-h200-with-triton"
    assert heading_slug("KAN vs. [plain](x.md) convs: 1x1") == "kan-vs-plain-convs-1x1"
    page = tmp_path / "p.md"
    page.write_text("# Use\n## Use\n<a id=\"here\"></a>\n```text\n# not a heading\n```\n")
    assert anchors(page) == {"use", "use-1", "here"}


def test_runner_shares_a_namespace_stops_at_a_failure_and_names_the_line(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("```python\nx = 41\n```\n```bash\necho hi > out.txt\n```\n"
                    "```python\nassert x == 41 and open('out.txt').read() == 'hi\\n'\nraise KeyError('boom')\n```\n"
                    "```python\nprint('never')\n```\n")
    blocks = [b for b in parse_page(page).blocks]
    spec = dict(page=str(page), cwd=str(tmp_path), results=str(tmp_path / "r.jsonl"), log=str(tmp_path / "log"),
                blocks=[dict(line=b.line, lang=b.lang, source=b.source) for b in blocks])
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    proc = subprocess.run([sys.executable, str(RUNNER), str(tmp_path / "spec.json")], capture_output=True,
                          text=True, timeout=60)
    rows = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert proc.returncode == 1
    assert [(r["line"], r["status"]) for r in rows] == [(1, "passed"), (4, "passed"), (7, "failed")]
    # The traceback points into the page, at the raising line (page line 9).
    assert f'File "{page}", line 9' in rows[-1]["error"] and "KeyError: 'boom'" in rows[-1]["error"]
    assert "never" not in (tmp_path / "log").read_text()


def test_broken_links_and_anchors_are_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    (tmp_path / "other.md").write_text("# Other page\n")
    page = tmp_path / "page.md"
    page.write_text("# Here\n[ok](other.md#other-page) [self](#here) ![img](missing.png) [gone](other.md#nowhere)\n"
                    "[web](https://example.com/x) <img src=\"pic.png\"> [out](../outside.md)\n")
    assert broken_links(page) == [
        "page.md:2: missing.png does not exist",
        "page.md:2: other.md#nowhere: no heading or anchor #nowhere in other.md",
        "page.md:3: ../outside.md leaves the repository",
        "page.md:3: pic.png does not exist",
    ]


def test_a_block_that_kills_its_page_process_is_named(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("```python\nimport os\n```\n```python\nos._exit(3)\n```\n```python\npass\n```\n")
    runner = PageRunner(tmp_path / "scratch", tmp_path / "pages", preload=())  # nothing to import: quick
    try:
        rows = runner._run_once(page, tmp_path / "work")
    finally:
        runner.close()
    assert [(line, row["status"]) for line, row in sorted(rows.items())] == [(1, "passed"), (4, "failed")]
    assert "ended" in rows[4]["error"]
