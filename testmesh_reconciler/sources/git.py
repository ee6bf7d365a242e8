"""The config repo as a Git remote: clone into the data dir, fetch, hard-reset, list blobs.

``GitSource.fetch()`` (blocking; the reloader runs it in its thread) returns the tracked
branch's commit sha and the YAML files under the sub-path as ``FileRef``s keyed by Git
blob id, read lazily, so the loader parses only blobs it has not seen. Credentials go
through the environment of each git command, never argv, the clone's config or a log.
"""

from __future__ import annotations

import base64
import binascii
import os
import shlex
import shutil
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

# GitPython refuses to import when no git executable exists; a daemon on a plain
# directory (the demo on a machine without git) must still start, so defer that check
# to the first Git command, which then fails with a clear SourceError.
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
import git

from testmesh_reconciler.config.loader import FileRef, is_yaml_path
from testmesh_reconciler.errors import TestmeshError
from testmesh_reconciler.log import redact_url

GIT_TIMEOUT = 120.0  # seconds a single git command may take before it is killed


class SourceError(TestmeshError):
    """The config repo could not be fetched; the message is safe to log and show."""


def looks_like_git_url(text: str) -> bool:
    """``scheme://...`` or scp-like ``user@host:path`` (not a local path)."""
    if "://" in text:
        return True
    head, sep, _ = text.partition(":")
    return bool(sep) and "@" in head and "/" not in head


def is_local_git_repo(path: Path) -> bool:
    return (path / ".git").exists() or ((path / "HEAD").is_file() and (path / "objects").is_dir())


class GitSource:
    """Tracks ``branch`` of the repository at ``url`` (a URL or a local Git repo path)."""

    def __init__(self, url: str, *, branch: str, path: str, clone_dir: Path,
                 token_file: str | None = None, ssh_key_file: str | None = None,
                 environ: Mapping[str, str] | None = None, timeout: float = GIT_TIMEOUT) -> None:
        self._url = url
        self._branch = branch
        self._path = path.strip("/")
        self._clone_dir = clone_dir
        self._token_file = token_file
        self._ssh_key_file = ssh_key_file
        self._environ = dict(os.environ if environ is None else environ)
        self._timeout = timeout
        self._repo: git.Repo | None = None

    @property
    def description(self) -> str:
        """The URL without credentials, branch and path: safe to log."""
        where = f"{redact_url(self._url)}@{self._branch}"
        return f"{where}:{self._path}" if self._path else where

    @property
    def kind(self) -> str:
        return "git"

    # -- git plumbing ----------------------------------------------------------------------
    def _env(self) -> dict[str, str]:
        env = dict(self._environ)
        env.update(GIT_TERMINAL_PROMPT="0", GIT_ASKPASS="true", SSH_ASKPASS="true",
                   LC_ALL="C", GIT_CONFIG_NOSYSTEM="1")
        extra: list[tuple[str, str]] = []
        if self._token_file:
            extra.append(("http.extraHeader", f"Authorization: Basic {self._basic_auth()}"))
        if extra:
            env["GIT_CONFIG_COUNT"] = str(len(extra))
            for i, (key, value) in enumerate(extra):
                env[f"GIT_CONFIG_KEY_{i}"] = key
                env[f"GIT_CONFIG_VALUE_{i}"] = value
        if self._ssh_key_file:
            known_hosts = self._clone_dir.parent / "known_hosts"
            env["GIT_SSH_COMMAND"] = " ".join([
                "ssh", "-i", shlex.quote(self._ssh_key_file), "-o", "IdentitiesOnly=yes",
                "-o", "StrictHostKeyChecking=accept-new",
                "-o", f"UserKnownHostsFile={shlex.quote(str(known_hosts))}",
                "-o", "BatchMode=yes"])
        return env

    def _basic_auth(self) -> str:
        assert self._token_file is not None
        try:
            token = Path(self._token_file).read_text("utf-8").strip()
        except OSError as exc:
            raise SourceError(f"cannot read the config repo token file {self._token_file}: "
                              f"{exc.strerror}") from None
        if not token:
            raise SourceError(f"the config repo token file {self._token_file} is empty")
        user = urlsplit(self._url).username if "://" in self._url else None
        return base64.b64encode(f"{user or 'testmesh'}:{token}".encode()).decode()

    def _git(self, *args: str) -> str:
        repo = self._open()
        try:
            out = repo.git.execute(["git", *args], env=self._env(),
                                   kill_after_timeout=self._timeout,
                                   strip_newline_in_stdout=False)
        except git.GitCommandError as exc:
            raise SourceError(self._explain(args[0], exc)) from None
        return str(out)

    def _explain(self, command: str, exc: git.GitCommandError) -> str:
        stderr = str(exc.stderr or "").strip().strip("'").strip()
        lines = [ln.strip() for ln in stderr.splitlines()
                 if ln.strip() and not ln.strip().startswith("stderr:")]
        detail = redact_url(lines[-1]) if lines else f"exit status {exc.status}"
        if self._token_file or self._ssh_key_file:
            detail = detail.replace(self._basic_auth_safe(), "***")
        return f"git {command} of {self.description} failed: {detail}"

    def _basic_auth_safe(self) -> str:
        try:
            return self._basic_auth() if self._token_file else "\0"
        except SourceError:
            return "\0"

    def _open(self) -> git.Repo:
        if self._repo is not None:
            return self._repo
        d = self._clone_dir
        if (d / ".git").is_dir():
            repo = git.Repo(d)
        else:
            d.mkdir(parents=True, exist_ok=True)
            repo = git.Repo.init(d, initial_branch=self._branch)
        self._repo = repo
        return repo

    def _ensure_remote(self) -> None:
        repo = self._open()
        wanted = self._remote_url()
        try:
            current = repo.git.config("--get", "remote.origin.url")
        except git.GitCommandError:
            current = None
        if current is None:
            repo.git.remote("add", "origin", wanted)
        elif current != wanted:
            repo.git.remote("set-url", "origin", wanted)

    def _remote_url(self) -> str:
        if looks_like_git_url(self._url):
            return self._url
        return str(Path(self._url).resolve())

    # -- the one operation -----------------------------------------------------------------
    def fetch(self) -> tuple[str, dict[str, FileRef]]:
        """Fetch the branch (force: history rewrites are followed), reset, list the files."""
        if shutil.which(git.Git.GIT_PYTHON_GIT_EXECUTABLE or "git") is None:
            raise SourceError("git is not installed: install it (e.g. apt-get install git), "
                              "or point --config-repo at a plain directory")
        self._ensure_remote()
        tracking = f"refs/remotes/origin/{self._branch}"
        self._git("fetch", "--force", "--prune", "--no-tags", "--quiet", "origin",
                  f"+refs/heads/{self._branch}:{tracking}")
        sha = self._git("rev-parse", "--verify", "--quiet", f"{tracking}^{{commit}}").strip()
        if not sha:
            raise SourceError(f"branch {self._branch!r} not found in {self.description}")
        self._git("reset", "--hard", "--quiet", sha)
        return sha, self.files_at(sha)

    def files_at(self, sha: str) -> dict[str, FileRef]:
        """YAML files under the sub-path at commit ``sha``, keyed relative to the sub-path."""
        args = ["ls-tree", "-r", "-z", "--full-tree", sha]
        if self._path:
            args += ["--", f"{self._path}/"]
        listing = self._git(*args)
        prefix = f"{self._path}/" if self._path else ""
        out: dict[str, FileRef] = {}
        for entry in listing.split("\0"):
            if not entry:
                continue
            meta, _, name = entry.partition("\t")
            parts = meta.split()
            if len(parts) != 3 or parts[1] != "blob" or not is_yaml_path(name):
                continue
            if prefix and not name.startswith(prefix):
                continue
            blob = parts[2]
            out[name[len(prefix):]] = FileRef(blob, self._reader(blob))
        return out

    def _reader(self, blob: str) -> _BlobReader:
        return _BlobReader(self, blob)

    def read_blob(self, blob: str) -> bytes:
        """Contents of one blob (through git's persistent ``cat-file --batch``)."""
        return bytes(self._open().odb.stream(binascii.unhexlify(blob)).read())

    def close(self) -> None:
        if self._repo is not None:
            self._repo.close()
            self._repo = None


class _BlobReader:
    __slots__ = ("_blob", "_source")

    def __init__(self, source: GitSource, blob: str) -> None:
        self._source = source
        self._blob = blob

    def __call__(self) -> bytes:
        return self._source.read_blob(self._blob)


__all__ = ["GitSource", "SourceError", "is_local_git_repo", "looks_like_git_url"]
