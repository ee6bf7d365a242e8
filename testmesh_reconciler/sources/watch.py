"""A plain directory of declarations (no Git), for development: read and watched.

``DirectorySource.fetch()`` reads the tree (content-hashed ``FileRef``s) and names the
revision after the content; ``watch_directory`` calls back once per debounced burst of
YAML changes, using ``watchfiles.awatch``.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from pathlib import Path

from watchfiles import Change, awatch

from testmesh_reconciler.config.loader import FileRef, is_yaml_path
from testmesh_reconciler.errors import TestmeshError
from testmesh_reconciler.sources.local import read_tree

DEBOUNCE_MS = 150  # a burst of saves (editor, git checkout) becomes one reload


class DirectorySource:
    """The declarations under ``root/path`` as they are on disk right now."""

    def __init__(self, root: Path, *, path: str = "") -> None:
        self._root = root
        self._path = path.strip("/")

    @property
    def directory(self) -> Path:
        return self._root / self._path if self._path else self._root

    @property
    def description(self) -> str:
        return str(self.directory)

    @property
    def kind(self) -> str:
        return "directory"

    def fetch(self) -> tuple[str, dict[str, FileRef]]:
        """(content revision ``dir-<sha1 prefix>``, files) of the directory."""
        if not self.directory.is_dir():
            raise TestmeshError(f"{self.directory}: no such directory")
        files = read_tree(self.directory)
        digest = hashlib.sha1()
        for name in sorted(files):
            digest.update(f"{name}\0{files[name].digest}\n".encode())
        return f"dir-{digest.hexdigest()[:12]}", files


def _yaml_change(change: Change, path: str) -> bool:
    return is_yaml_path(path) or change == Change.deleted  # a deleted directory, too


async def watch_directory(directory: Path, on_change: Callable[[], object], *,
                          debounce_ms: int = DEBOUNCE_MS,
                          stop_event: asyncio.Event | None = None) -> None:
    """Call ``on_change()`` after each debounced burst of changes under ``directory``."""
    async for _changes in awatch(directory, watch_filter=_yaml_change, debounce=debounce_ms,
                                 step=50, stop_event=stop_event, recursive=True):
        on_change()


__all__ = ["DirectorySource", "watch_directory"]
