"""Offline stand-ins for the Hugging Face Hub, shared by the hub and pretrained-weights tests.

* ``build_local_hf_cache`` lays files out exactly as ``huggingface_hub`` caches a downloaded repo,
  so ``timm.create_model("hf-hub:org/name", pretrained=True)`` finds them without a network.
* ``use_local_hf_cache`` points huggingface_hub at such a cache and switches it to offline mode
  (``local_hf_cache`` is the same as a pytest fixture returning the empty hub cache folder).
* ``FakeHfApi`` records ``create_repo`` / ``upload_folder`` calls and keeps a copy of the uploaded files.

Import as ``from hub_helpers import ...`` (pytest puts ``tests/`` on sys.path).
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import huggingface_hub.constants as hf_constants
import pytest

__all__ = ["build_local_hf_cache", "use_local_hf_cache", "local_hf_cache", "repo_cache_folder", "FakeHfApi",
           "FakeRepoUrl", "serve_reference_checkpoints"]


def repo_cache_folder(cache_dir: str | Path, repo_id: str, repo_type: str = "model") -> Path:
    """The folder huggingface_hub uses for ``repo_id`` inside a hub cache (``models--org--name``)."""
    return Path(cache_dir) / f"{repo_type}s--{repo_id.replace('/', '--')}"


def _as_bytes(content: bytes | str | os.PathLike) -> bytes:
    if isinstance(content, (bytes, bytearray)):
        return bytes(content)
    return Path(content).read_bytes()


def build_local_hf_cache(
    cache_dir: str | Path,
    repo_id: str,
    files: Mapping[str, bytes | str | os.PathLike],
    *,
    revision: str = "main",
    commit_hash: str | None = None,
) -> Path:
    """Write ``files`` (name -> bytes or a path to copy) as a cached snapshot of ``repo_id``.

    Layout: ``<cache_dir>/models--org--name/snapshots/<commit>/<file>`` and ``refs/<revision>``
    holding the commit hash, which is all an offline ``hf_hub_download`` consults. Files are plain
    copies rather than blob symlinks, which huggingface_hub reads the same way and which works on any OS.
    Returns the snapshot folder.
    """
    contents = {name: _as_bytes(value) for name, value in files.items()}
    if commit_hash is None:
        # A deterministic 40-hex id derived from the content, like a git commit id would be.
        digest = hashlib.sha1(repo_id.encode())
        for name in sorted(contents):
            digest.update(name.encode() + b"\0" + hashlib.sha1(contents[name]).digest())
        commit_hash = digest.hexdigest()
    if len(commit_hash) != 40 or any(c not in "0123456789abcdef" for c in commit_hash):
        raise ValueError(f"commit_hash must be 40 lowercase hex digits, got {commit_hash!r}")

    repo_folder = repo_cache_folder(cache_dir, repo_id)
    snapshot = repo_folder / "snapshots" / commit_hash
    for name, data in contents.items():
        target = snapshot / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    snapshot.mkdir(parents=True, exist_ok=True)
    refs = repo_folder / "refs" / revision
    refs.parent.mkdir(parents=True, exist_ok=True)
    refs.write_text(commit_hash)
    return snapshot


def use_local_hf_cache(monkeypatch: Any, hf_home: str | Path) -> Path:
    """Point huggingface_hub at ``<hf_home>/hub`` and turn on offline mode; returns the hub cache dir.

    huggingface_hub copies HF_HOME / HF_HUB_CACHE / HF_HUB_OFFLINE into ``huggingface_hub.constants``
    when it is imported, so setting the environment alone would not reach an already imported module:
    both are patched (and restored by ``monkeypatch``).
    """
    hf_home = Path(hf_home)
    hub_cache = hf_home / "hub"
    hub_cache.mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setattr(hf_constants, "HF_HOME", str(hf_home))
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    if hasattr(hf_constants, "HF_HUB_DISABLE_TELEMETRY"):
        monkeypatch.setattr(hf_constants, "HF_HUB_DISABLE_TELEMETRY", True)
    return hub_cache


def serve_reference_checkpoints(monkeypatch: Any, hf_home: str | Path, tags: Iterable[str]) -> dict:
    """An offline hub cache (``use_local_hf_cache``) holding the published repo of each pretrained tag:
    the fixture's checkpoint in the reference layout (filled by the fixtures' fill.py) and its config.json.
    Returns the fixture's forward tensors per tag."""
    from kan_zoo.models.kan_vgg import PRETRAINED_WEIGHTS
    from reference_fixtures import PRETRAINED_CASES, checkpoint_repo_files, load_model_case

    cache = use_local_hf_cache(monkeypatch, hf_home)
    forwards = {}
    for tag in tags:
        case = PRETRAINED_CASES[tag]
        _, forwards[tag], state = load_model_case(case)
        build_local_hf_cache(cache, PRETRAINED_WEIGHTS[tag]["hf_hub_id"], checkpoint_repo_files(case, state))
    return forwards


class FakeRepoUrl(str):
    """Stands in for huggingface_hub.RepoUrl: a str (the URL) with a ``repo_id`` attribute."""

    repo_id: str

    def __new__(cls, url: str, repo_id: str) -> "FakeRepoUrl":
        obj = super().__new__(cls, url)
        obj.repo_id = repo_id
        return obj


@pytest.fixture
def local_hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty offline hub cache, active for one test; fill it with ``build_local_hf_cache``.

    Use with ``from hub_helpers import local_hf_cache`` in a test module (pytest then sees the fixture).
    """
    return use_local_hf_cache(monkeypatch, tmp_path / "hf_home")


@dataclass
class FakeHfApi:
    """Records what ``push_to_hub`` asks of the Hub, without a network.

    ``uploads`` keeps, per ``upload_folder`` call, the call's arguments and a copy of every file in the
    folder (relative posix path -> bytes) taken at call time, since callers upload from temp folders.
    ``owner`` is prepended to repo ids without one, as the Hub does for the token's user.
    """

    owner: str = "fake-user"
    endpoint: str = "https://hub.invalid"
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    uploads: list[dict[str, Any]] = field(default_factory=list)
    repos: dict[str, dict[str, Any]] = field(default_factory=dict)

    def _full_id(self, repo_id: str) -> str:
        return repo_id if "/" in repo_id else f"{self.owner}/{repo_id}"

    def create_repo(self, repo_id: str, *, private: bool | None = None, exist_ok: bool = False,
                    **kwargs: Any) -> FakeRepoUrl:
        self.calls.append(("create_repo", dict(repo_id=repo_id, private=private, exist_ok=exist_ok, **kwargs)))
        full_id = self._full_id(repo_id)
        if full_id in self.repos and not exist_ok:
            raise RuntimeError(f"409 Conflict: repo {full_id} already exists")
        self.repos.setdefault(full_id, {"private": private, "branches": {"main"}})
        return FakeRepoUrl(f"{self.endpoint}/{full_id}", repo_id=full_id)

    def create_branch(self, repo_id: str, *, branch: str, exist_ok: bool = False, **kwargs: Any) -> None:
        self.calls.append(("create_branch", dict(repo_id=repo_id, branch=branch, exist_ok=exist_ok, **kwargs)))
        branches = self.repos[self._full_id(repo_id)]["branches"]
        if branch in branches and not exist_ok:
            raise RuntimeError(f"409 Conflict: branch {branch} already exists")
        branches.add(branch)

    def upload_folder(self, *, repo_id: str, folder_path: str | Path, commit_message: str | None = None,
                      revision: str | None = None, **kwargs: Any) -> str:
        args = dict(repo_id=repo_id, folder_path=str(folder_path), commit_message=commit_message,
                    revision=revision, **kwargs)
        self.calls.append(("upload_folder", args))
        full_id = self._full_id(repo_id)
        if full_id not in self.repos:
            raise RuntimeError(f"404 Not Found: repo {full_id} does not exist (create_repo first)")
        if revision is not None and revision not in self.repos[full_id]["branches"]:
            raise RuntimeError(f"404 Not Found: branch {revision} does not exist in {full_id}")
        root = Path(folder_path)
        files = {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
        oid = hashlib.sha1(repr(sorted((k, hashlib.sha1(v).hexdigest()) for k, v in files.items())).encode())
        self.uploads.append(dict(args, files=files, oid=oid.hexdigest()))
        return f"{self.endpoint}/{full_id}/commit/{oid.hexdigest()}"

    @property
    def last_files(self) -> dict[str, bytes]:
        """Files of the most recent upload."""
        if not self.uploads:
            raise AssertionError("upload_folder was never called")
        return self.uploads[-1]["files"]
