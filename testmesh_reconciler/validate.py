"""``testmesh-reconciler validate``: the dry-run a pull request runs on the config repo.

No network and no secrets: sealed values are checked for format and key id (and opened
when ``--private-key`` is given); env and file secrets are not read. ``--base`` adds the
plan against another Git revision of the same repository.
"""

from __future__ import annotations

import gc
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from testmesh_reconciler.config.loader import FileRef, Loader, LoadResult, SecretOpener
from testmesh_reconciler.config.plan import Plan, diff
from testmesh_reconciler.config.problems import render_text
from testmesh_reconciler.errors import UsageError
from testmesh_reconciler.loading import make_loader
from testmesh_reconciler.sources.local import read_public_keys, read_tree


def validation_opener(root: Path, private_key_files: Sequence[str]) -> SecretOpener:
    """Checks sealed values against the repo's public keys; opens them with given keys."""
    from testmesh_reconciler import secrets

    keys = []
    for name in private_key_files:
        try:
            keys.append(secrets.load_private_key(Path(name).read_text("utf-8")))
        except OSError as exc:
            raise UsageError(f"cannot read private key {name}: {exc.strerror}") from exc
        except secrets.SecretsError as exc:
            raise UsageError(f"{name}: {exc}") from exc
    key_ids, _ = secrets.load_public_key_ids(read_public_keys(root))
    return secrets.make_secret_opener(
        private_keys=keys or None, public_key_ids=key_ids, environ=None, read_file=None)


@contextmanager
def paused_gc() -> Iterator[None]:
    """Pause the cyclic GC while a load allocates many long-lived objects.

    Loading creates hundreds of thousands of objects that all survive; generation-2
    collections in the middle of it rescan them again and again (about 40% of a cold
    load of 10,000 declarations). Reference counting still frees garbage meanwhile.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def load_directory(root: Path, *, private_key_files: Sequence[str] = (),
                   loader: Loader | None = None) -> LoadResult:
    if not root.is_dir():
        raise UsageError(f"{root}: no such directory (give the config repo's root, or the "
                         "sub-directory that holds the declarations)")
    opener = validation_opener(root, private_key_files)
    with paused_gc():
        return (loader or make_loader()).load(read_tree(root), revision="", open_secret=opener)


def base_files(root: Path, ref: str) -> dict[str, FileRef]:
    """The YAML files under ``root`` as of Git revision ``ref`` (keyed relative to root)."""
    import git

    try:
        repo = git.Repo(root, search_parent_directories=True)
        commit = repo.commit(ref)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError) as exc:
        raise UsageError(f"--base needs {root} to be inside a Git repository") from exc
    except (git.BadName, ValueError) as exc:
        raise UsageError(f"--base {ref}: no such revision in {repo.working_dir} (fetch it "
                         "first, e.g. 'git fetch origin main')") from exc
    top = Path(repo.working_tree_dir or ".").resolve()
    prefix = root.resolve().relative_to(top).as_posix()
    tree = commit.tree
    if prefix not in ("", "."):
        try:
            tree = tree / prefix
        except KeyError:
            return {}
    out: dict[str, FileRef] = {}
    item: Any
    for item in tree.traverse():
        path = str(item.path)
        if item.type == "blob" and path.endswith((".yaml", ".yml")):
            rel = path if prefix in ("", ".") else path[len(prefix) + 1:]
            out[rel] = FileRef(str(item.hexsha), _blob_reader(item))
    return out


def _blob_reader(blob: Any) -> Callable[[], bytes]:
    return lambda: bytes(blob.data_stream.read())


def plan_against(root: Path, ref: str, head: LoadResult) -> Plan:
    base = make_loader().load(base_files(root, ref), revision=ref)
    return diff(base.declarations, head.declarations)


def run_validate(path: str, *, fmt: str, base: str | None, private_keys: Sequence[str],
                 verbose: bool, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    root = Path(path)
    result = load_directory(root, private_key_files=private_keys)
    plan = plan_against(root, base, result) if base else None
    errors = result.errors
    if fmt == "json":
        problems = [p.as_json() for p in result.problems]
        payload: object = problems if plan is None else {"problems": problems,
                                                          "plan": plan.as_json()}
        out.write(json.dumps(payload, indent=2) + "\n")
    else:
        out.write(render_text(result.problems))
        if verbose:
            for ig in result.ignored:
                out.write(f"{ig.file}:{ig.line}: ignored: {ig.reason}\n")
        if plan is not None:
            out.write(f"Plan against {base}:\n{plan.render()}")
        files = len({d.source.file for d in result.declarations})
        if errors:
            err.write(f"{len(errors)} problem{'s' if len(errors) != 1 else ''} in "
                      f"{len({p.file for p in errors})} file(s)\n")
        else:
            err.write(f"ok: {len(result.declarations)} declarations in {files} files\n")
    return 1 if errors else 0
