"""A plain directory of declarations, read into ``FileRef``s (content-hashed).

Used by ``validate``, ``run`` and the daemon when the config repo is not Git. Hidden
directories (``.git``) are skipped except ``.testmesh``, which holds public keys.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from testmesh_reconciler.config.loader import FileRef, constant

_SKIP_DIRS = {".git", "node_modules", "__pycache__", ".venv"}


def read_tree(root: Path, *, suffixes: tuple[str, ...] = (".yaml", ".yml")) -> dict[str, FileRef]:
    """Every file under ``root`` with one of ``suffixes``, keyed by relative POSIX path."""
    out: dict[str, FileRef] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
        rel_dir = os.path.relpath(dirpath, root)
        for name in filenames:
            if not name.endswith(suffixes):
                continue
            full = os.path.join(dirpath, name)
            try:
                with open(full, "rb") as fh:
                    data = fh.read()
            except OSError:
                continue  # vanished or unreadable between listing and reading
            rel = name if rel_dir == "." else f"{rel_dir}/{name}".replace(os.sep, "/")
            out[rel] = FileRef(hashlib.sha1(data).hexdigest(), constant(data))
    return out


def read_public_keys(root: Path) -> dict[str, bytes]:
    """Contents of ``.testmesh/public-key*`` (the keys sealed values must be made with)."""
    keydir = root / ".testmesh"
    if not keydir.is_dir():
        return {}
    return {f".testmesh/{p.name}": p.read_bytes()
            for p in sorted(keydir.glob("public-key*")) if p.is_file()}
