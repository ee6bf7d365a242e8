"""Replicas in the app: presence (each says which config revision it runs) and config broadcast.

``extension(app)`` adds the presence loop, the ``replica`` / ``replicas`` fields of
``/api/v1/status`` and, when the store can broadcast (PostgreSQL ``LISTEN``/``NOTIFY``), a hook
on the config webhook plus a listener loop: a push received by one replica reloads them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import timedelta
from typing import Any, Final, Protocol, runtime_checkable

from aiohttp import web

from testmesh_reconciler.log import get_logger
from testmesh_reconciler.reload import Reloader
from testmesh_reconciler.replica import replica_name
from testmesh_reconciler.state import StateHolder
from testmesh_reconciler.store.base import Store, StoreError
from testmesh_reconciler.store.clock import Clock
from testmesh_reconciler.web import CONFIG_BROADCASTS, SERVICES
from testmesh_reconciler.web.app import add_loop, add_status_provider

log = get_logger("testmesh.web.replicas")

PRESENCE_LOOP: Final = "replica-presence"
BROADCAST_LOOP: Final = "config-broadcast-listener"
#: Seconds between presence heartbeats (one is also written whenever the config changes).
PRESENCE_INTERVAL: Final = 5.0
#: A replica counts as live while its last heartbeat is at most this many intervals old.
LIVE_HEARTBEATS: Final = 3


@runtime_checkable
class ConfigBroadcaster(Protocol):
    """A store that can tell every replica about a config push (``PostgresStore``)."""

    async def notify_config(self, payload: str) -> None: ...

    def listen_config(self, on_listening: Callable[[], None] | None = None
                      ) -> AsyncIterator[str]: ...


def broadcaster_of(store: object) -> ConfigBroadcaster | None:
    """``store`` when it has ``notify_config`` and ``listen_config``; else ``None`` (SQLite:
    one replica, nothing to tell)."""
    return store if isinstance(store, ConfigBroadcaster) else None


def encode_notice(sender: str, revision: str | None) -> str:
    """The ``NOTIFY`` payload: who received the push, and the revision when known."""
    return json.dumps({"replica": sender, "revision": revision}, separators=(",", ":"))


def decode_notice(payload: str) -> tuple[str | None, str | None]:
    """(sender, revision) of a payload; anything else (a bare revision, junk) -> no sender."""
    try:
        data = json.loads(payload) if payload else {}
    except ValueError:
        return None, payload or None
    if not isinstance(data, Mapping):
        return None, None
    sender, revision = data.get("replica"), data.get("revision")
    return (sender if isinstance(sender, str) else None,
            revision if isinstance(revision, str) else None)


async def presence_loop(store: Store, state: StateHolder, clock: Clock, name: str, *,
                        interval: float = PRESENCE_INTERVAL) -> None:
    """Eternal: record this replica and its active revision every ``interval`` seconds and
    at once whenever the config state changes."""
    while True:
        version = state.version
        snapshot = state.snapshot
        try:
            await store.heartbeat_replica(name, snapshot.revision if snapshot else None,
                                          clock.now())
        except StoreError as exc:
            log.warning("replica_heartbeat_failed", replica=name, error=str(exc))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(interval):
                await state.wait_for_change(version)


async def listen_loop(broadcaster: ConfigBroadcaster, reloader: Reloader, name: str) -> None:
    """Reload whenever another replica broadcasts a config push. After a reconnect, reload
    once too: a broadcast may have been missed while the connection was down."""
    connected = 0

    def on_listening() -> None:
        nonlocal connected
        connected += 1
        log.info("config_broadcast_listening", replica=name, reconnect=connected > 1)
        if connected > 1:
            reloader.trigger("broadcast-resync")

    while True:
        try:
            async for payload in broadcaster.listen_config(on_listening=on_listening):
                sender, revision = decode_notice(payload)
                if sender == name:
                    continue
                log.info("config_broadcast_received", sender=sender, revision=revision)
                reloader.trigger("broadcast")
        except StoreError as exc:
            log.warning("config_broadcast_listen_failed", error=str(exc), retry_in=1.0)
        await asyncio.sleep(1.0)


def install(app: web.Application, *, name: str | None = None,
            interval: float = PRESENCE_INTERVAL) -> None:
    """Presence loop, status fields and (when the store can) the config broadcast."""
    services = app[SERVICES]
    store = services.store
    me = name or replica_name()
    if not isinstance(store, Store):
        log.warning("replica_presence_disabled", reason="no runtime store")
        return
    state, clock = services.state, services.clock
    add_loop(app, PRESENCE_LOOP,
             lambda: presence_loop(store, state, clock, me, interval=interval))

    async def status() -> dict[str, Any]:
        since = clock.now() - timedelta(seconds=interval * LIVE_HEARTBEATS)
        try:
            replicas = [r.to_json() for r in await store.list_replicas(since)]
        except StoreError as exc:
            log.warning("replica_list_failed", error=str(exc))
            replicas = []
        return {"replica": me, "replicas": replicas}

    add_status_provider(app, status)
    broadcaster, reloader = broadcaster_of(store), services.reloader
    if broadcaster is None or reloader is None:
        return

    async def broadcast() -> None:
        await broadcaster.notify_config(encode_notice(me, None))
        log.info("config_broadcast_sent", replica=me)

    app[CONFIG_BROADCASTS].append(broadcast)
    add_loop(app, BROADCAST_LOOP, lambda: listen_loop(broadcaster, reloader, me))


def extension(app: web.Application) -> None:
    """The daemon's wiring (``daemon.EXTENSIONS``): this process's ``replica_name()``."""
    install(app)


__all__ = ["BROADCAST_LOOP", "LIVE_HEARTBEATS", "PRESENCE_INTERVAL", "PRESENCE_LOOP",
           "ConfigBroadcaster", "broadcaster_of", "decode_notice", "encode_notice",
           "extension", "install", "listen_loop", "presence_loop"]
