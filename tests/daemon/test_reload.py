"""Reloader + GitSource on real Git repos, in-process: incremental, last-known-good,
force-pushes, fetch failures, coalesced triggers, and the structured log events."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import threading
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from testmesh_reconciler import secrets
from testmesh_reconciler.config.loader import FileRef, files_from_bytes
from testmesh_reconciler.metrics import Metrics
from testmesh_reconciler.reload import Reloader, poll_loop
from testmesh_reconciler.sources.git import GitSource, looks_like_git_url
from testmesh_reconciler.sources.watch import DirectorySource, watch_directory
from testmesh_reconciler.state import StateHolder
from testmesh_reconciler.store.clock import FakeClock

from .repo import BAD_SUITE, SECRET_ENV, ConfigRepo, basic_repo, flow, suite


def opener() -> secrets.SecretOpener:
    return secrets.make_secret_opener(private_keys=[], environ=SECRET_ENV,
                                      read_file=secrets.read_secret_file)


@contextlib.asynccontextmanager
async def reloader_for(source: object) -> AsyncIterator[tuple[Reloader, StateHolder]]:
    state = StateHolder()
    reloader = Reloader(source=source, state=state, clock=FakeClock(),  # type: ignore[arg-type]
                        metrics=Metrics(), open_secret=opener())
    try:
        yield reloader, state
    finally:
        await reloader.aclose()


def git_source(repo: ConfigRepo, tmp_path: Path, path: str = "") -> GitSource:
    return GitSource(str(repo.path), branch="main", path=path,
                     clone_dir=tmp_path / "data" / "config-repo")


async def test_good_commit_is_loaded_and_one_file_change_parses_one_file(tmp_path: Path) -> None:
    repo = basic_repo(tmp_path / "upstream")
    async with reloader_for(git_source(repo, tmp_path)) as (reloader, state):
        first = await reloader.reload_once("startup")
        assert first is not None and first.result == "ok"
        assert first.parsed_files == 4
        assert state.snapshot is not None and state.snapshot.revision == repo.head()
        assert state.snapshot.counts()["Flow"] == 2

        repo.write("flows/a.yaml", flow("a", "changed") + "---\n" + flow("b"))
        sha = repo.commit("change one flow")
        second = await reloader.reload_once("webhook")
        assert second is not None and second.result == "ok"
        assert second.parsed_files == 1
        assert state.snapshot.revision == sha
        assert (tmp_path / "data" / "config-repo" / "flows" / "a.yaml").read_text() \
            == (repo.path / "flows" / "a.yaml").read_text()  # hard-reset work tree


async def test_unchanged_revision_is_not_reloaded(tmp_path: Path) -> None:
    repo = basic_repo(tmp_path / "upstream")
    async with reloader_for(git_source(repo, tmp_path)) as (reloader, state):
        await reloader.reload_once()
        version = state.version
        assert await reloader.reload_once("poll") is None
        assert state.version == version


async def test_bad_commit_keeps_last_known_good_and_next_good_commit_recovers(
        tmp_path: Path) -> None:
    repo = basic_repo(tmp_path / "upstream")
    async with reloader_for(git_source(repo, tmp_path)) as (reloader, state):
        await reloader.reload_once()
        good = repo.head()
        repo.write("suites/smoke.yaml", BAD_SUITE)
        bad = repo.commit("break the suite")
        with capture_logs() as logs:
            record = await reloader.reload_once("poll")
        assert record is not None and record.result == "failed"
        assert record.revision == bad
        assert state.snapshot is not None and state.snapshot.revision == good
        assert [(p.file, p.line) for p in record.problems] == [("suites/smoke.yaml", 5)]
        assert "no-such-flow" in record.problems[0].message
        failed = [e for e in logs if e["event"] == "config_reload_failed"]
        assert failed and failed[0]["problems"] == 1 and failed[0]["revision"] == bad
        assert failed[0]["keeps_revision"] == good
        assert state.last_success is not None and state.last_success.revision == good

        repo.write("suites/smoke.yaml", suite("smoke", ["a"]))
        fixed = repo.commit("fix the suite")
        with capture_logs() as logs:
            record = await reloader.reload_once("poll")
        assert record is not None and record.result == "ok"
        assert state.snapshot.revision == fixed and state.problems == ()
        assert [e["event"] for e in logs if e["event"].startswith("config_reload")] == [
            "config_reload_succeeded"]


async def test_force_push_is_followed(tmp_path: Path) -> None:
    repo = basic_repo(tmp_path / "upstream")
    repo.write("flows/c.yaml", flow("c"))
    repo.commit("add c")
    async with reloader_for(git_source(repo, tmp_path)) as (reloader, state):
        await reloader.reload_once()
        assert state.snapshot is not None and state.snapshot.counts()["Flow"] == 3
        rewritten = repo.rewrite_last("flows/d.yaml", flow("d") + "---\n" + flow("e"))
        record = await reloader.reload_once()
        assert record is not None and record.result == "ok"
        assert state.snapshot.revision == rewritten
        names = sorted(name for (_, name) in state.snapshot.flows)
        assert names == ["a", "b", "d", "e"]


async def test_unreachable_repo_is_a_recorded_failure_and_keeps_the_snapshot(
        tmp_path: Path) -> None:
    repo = basic_repo(tmp_path / "upstream")
    async with reloader_for(git_source(repo, tmp_path)) as (reloader, state):
        await reloader.reload_once()
        good = repo.head()
        shutil.rmtree(repo.path)
        with capture_logs() as logs:
            record = await reloader.reload_once("poll")
        assert record is not None and record.result == "failed"
        assert record.error is not None and "git fetch" in record.error
        assert state.snapshot is not None and state.snapshot.revision == good
        assert [e["event"] for e in logs] == ["config_fetch_failed"]


async def test_missing_branch_is_reported(tmp_path: Path) -> None:
    repo = basic_repo(tmp_path / "upstream")
    source = GitSource(str(repo.path), branch="nope", path="",
                       clone_dir=tmp_path / "data" / "config-repo")
    async with reloader_for(source) as (reloader, state):
        record = await reloader.reload_once()
        assert record is not None and record.error is not None
        assert state.snapshot is None


async def test_sub_path_limits_the_declarations(tmp_path: Path) -> None:
    repo = ConfigRepo(tmp_path / "upstream")
    repo.write("testmesh/flows.yaml", flow("inside"))
    repo.write("other/flows.yaml", "not: [valid")
    repo.commit()
    async with reloader_for(git_source(repo, tmp_path, path="testmesh")) as (reloader, state):
        record = await reloader.reload_once()
        assert record is not None and record.result == "ok", record
        assert state.snapshot is not None
        assert [d.source.file for d in state.snapshot.all()] == ["flows.yaml"]


class BlockingSource:
    """A source whose fetch blocks until released, counting calls (coalescing test)."""

    kind = "test"
    description = "blocking test source"

    def __init__(self) -> None:
        self.calls = 0
        self.entered = threading.Event()
        self.release = threading.Event()
        self.files = files_from_bytes({"f.yaml": flow("f").encode()})

    def fetch(self) -> tuple[str, Mapping[str, FileRef]]:
        self.calls += 1
        self.entered.set()
        assert self.release.wait(10)
        self.release.clear()
        return f"rev-{self.calls}", self.files


async def test_triggers_during_a_reload_coalesce_into_exactly_one_more() -> None:
    source = BlockingSource()
    async with reloader_for(source) as (reloader, state):
        loop_task = asyncio.create_task(reloader.run())
        try:
            first = reloader.trigger("startup")
            await asyncio.to_thread(source.entered.wait, 5)
            source.entered.clear()
            tickets = [reloader.trigger("webhook") for _ in range(5)]
            source.release.set()  # the first reload finishes
            await asyncio.to_thread(source.entered.wait, 5)
            source.release.set()  # the one coalesced reload finishes
            async with asyncio.timeout(5):
                await reloader.wait(first)
                record = await reloader.wait(tickets[-1])
            assert source.calls == 2
            assert record is not None and record.revision == "rev-2"
            assert state.snapshot is not None and state.snapshot.revision == "rev-2"
        finally:
            loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loop_task


async def test_poll_loop_triggers_on_each_tick() -> None:
    source = BlockingSource()
    ticks: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        ticks.append(seconds)
        if len(ticks) > 3:
            raise asyncio.CancelledError

    async with reloader_for(source) as (reloader, state):
        with pytest.raises(asyncio.CancelledError):
            await poll_loop(reloader, state, 7.0, sleep=fake_sleep)
        assert ticks == [7.0] * 4
        assert reloader.trigger("x") == 4  # three poll triggers came first


async def test_directory_source_and_watch(tmp_path: Path) -> None:
    root = tmp_path / "config"
    root.mkdir()
    (root / "flows.yaml").write_text(flow("x"))
    source = DirectorySource(root)
    rev1, files = source.fetch()
    assert list(files) == ["flows.yaml"]
    (root / "flows.yaml").write_text(flow("x", "changed"))
    rev2, _ = source.fetch()
    assert rev1 != rev2 and rev1.startswith("dir-")

    changed = asyncio.Event()
    stop = asyncio.Event()
    task = asyncio.create_task(watch_directory(root, changed.set, debounce_ms=50,
                                               stop_event=stop))
    try:
        async with asyncio.timeout(10):
            while not changed.is_set():  # the watcher may start after the first write
                (root / "more.yaml").write_text(flow("y"))
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.5):
                        await changed.wait()
    finally:
        stop.set()
        async with asyncio.timeout(5):
            await task


def test_git_source_keeps_the_token_out_of_argv_and_config(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("s3cr3t-token\n")
    source = GitSource("https://gitea.example.com/acme/config.git", branch="main", path="",
                       clone_dir=tmp_path / "clone", token_file=str(token_file),
                       ssh_key_file="/keys/id ed25519", environ={})
    env = source._env()
    assert env["GIT_CONFIG_KEY_0"] == "http.extraHeader"
    assert env["GIT_CONFIG_VALUE_0"].startswith("Authorization: Basic ")
    assert "-i '/keys/id ed25519'" in env["GIT_SSH_COMMAND"]
    assert "IdentitiesOnly=yes" in env["GIT_SSH_COMMAND"]
    assert "StrictHostKeyChecking=accept-new" in env["GIT_SSH_COMMAND"]
    assert "s3cr3t" not in source.description
    assert GitSource("https://u:pw@h/x.git", branch="main", path="",
                     clone_dir=tmp_path / "c2").description == "https://***@h/x.git@main"


@pytest.mark.parametrize(("text", "expected"), [
    ("https://gitea.example.com/a/b.git", True), ("git@gitea.example.com:a/b.git", True),
    ("ssh://git@host/a/b", True), ("file:///srv/x.git", True), ("/srv/config", False),
    ("./config", False), ("C:/x", False)])
def test_looks_like_git_url(text: str, expected: bool) -> None:
    assert looks_like_git_url(text) is expected
