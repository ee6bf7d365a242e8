"""The ``secrets`` CLI commands: ``secrets keygen`` and ``secrets seal``.

Argparse wiring only (``register(subparsers)``, called by ``cli.py``); crypto lives in
``secrets.py``. Messages go to stderr; stdout carries only the key id or the sealed value.
The secret value is read from stdin (or a hidden prompt), never from argv.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from pathlib import Path

from testmesh_reconciler.config.model import SecretBinding
from testmesh_reconciler.secrets import (
    SecretsError,
    check_binding,
    drop_one_newline,
    generate_key_pair,
    read_public_key_file,
    seal,
)

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
PRIVATE_KEY_FILE = "private-key"
PUBLIC_KEY_FILE = "public-key"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``secrets keygen`` and ``secrets seal``; each sets ``func(args) -> exit code``."""
    parser = subparsers.add_parser(
        "secrets",
        help="make key pairs and sealed secret values",
        description="Make the daemon's key pair and seal secret values for the config repo.",
    )
    commands = parser.add_subparsers(dest="secrets_command", metavar="COMMAND", required=True)

    keygen = commands.add_parser(
        "keygen",
        help="write a new private-key / public-key pair",
        description=(
            "Write DIR/private-key (mode 0600, for the daemon only) and DIR/public-key "
            "(commit it to the config repo as .testmesh/public-key); print the key id."
        ),
    )
    keygen.add_argument("--out", metavar="DIR", default=".",
                        help="directory to write the key files to (default: .)")
    keygen.add_argument("--force", action="store_true",
                        help="replace an existing private key (values sealed for it stop opening)")
    keygen.set_defaults(func=run_keygen)

    seal_parser = commands.add_parser(
        "seal",
        help="seal a secret value read from stdin",
        description=(
            "Read a secret value from stdin (one trailing newline dropped; a hidden prompt on "
            "a terminal) and print it sealed for one workspace, integration and key, ready "
            'for {sealed: "..."}.'
        ),
    )
    seal_parser.add_argument("--public-key", metavar="FILE", required=True,
                             help="the public key (e.g. .testmesh/public-key in the config repo)")
    seal_parser.add_argument("--workspace", metavar="W", default="default",
                             help="the integration's workspace (default: default)")
    seal_parser.add_argument("--integration", metavar="NAME", required=True,
                             help="the Integration's metadata.name")
    seal_parser.add_argument("--key", metavar="KEY", required=True,
                             help="the key under spec.secrets (e.g. token, webhook_secret)")
    seal_parser.set_defaults(func=run_seal)


def _error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)


def _write_private_key(path: Path, text: str, *, force: bool) -> None:
    """Write ``text`` with mode 0600; without ``force`` an existing file is never replaced."""
    data = text.encode("ascii")
    if not force:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        target = None
    else:
        target = path
        path = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        if target is not None:
            os.replace(path, target)
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def _write_public_key(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.fchmod(fd, 0o644)
        os.write(fd, text.encode("ascii"))
    finally:
        os.close(fd)


def run_keygen(args: argparse.Namespace) -> int:
    """``secrets keygen [--out DIR] [--force]``."""
    out = Path(args.out)
    private_path, public_path = out / PRIVATE_KEY_FILE, out / PUBLIC_KEY_FILE
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        _error(f"cannot create directory '{out}': {exc.strerror or type(exc).__name__}")
        return EXIT_FAILURE
    pair = generate_key_pair()
    try:
        _write_private_key(private_path, pair.private_text(), force=bool(args.force))
    except FileExistsError:
        _error(
            f"refusing to overwrite the existing private key '{private_path}' (values sealed "
            "for it would no longer open): move it away, or pass --force"
        )
        return EXIT_FAILURE
    except OSError as exc:
        _error(f"cannot write '{private_path}': {exc.strerror or type(exc).__name__}")
        return EXIT_FAILURE
    try:
        _write_public_key(public_path, pair.public_text())
    except OSError as exc:
        _error(f"cannot write '{public_path}': {exc.strerror or type(exc).__name__}")
        return EXIT_FAILURE
    print(pair.key_id)
    print(
        f"{private_path}: private key (mode 0600) for the daemon only: give it as "
        "--private-key / TESTMESH_PRIVATE_KEY_FILE (e.g. from a Kubernetes Secret); "
        "never commit it",
        file=sys.stderr,
    )
    print(
        f"{public_path}: public key: commit it to the config repo as .testmesh/public-key; "
        "seal values with 'testmesh-reconciler secrets seal --public-key "
        ".testmesh/public-key ...'",
        file=sys.stderr,
    )
    return EXIT_OK


def _read_value() -> str:
    """The value to seal: a hidden prompt on a terminal, else all of stdin."""
    stdin = sys.stdin
    if stdin is not None and stdin.isatty():
        return getpass.getpass("Secret value (input hidden): ")
    if stdin is None:
        return ""
    return drop_one_newline(stdin.read())


def run_seal(args: argparse.Namespace) -> int:
    """``secrets seal --public-key FILE --workspace W --integration NAME --key KEY``."""
    try:
        public_key = read_public_key_file(args.public_key)
    except SecretsError as exc:
        _error(str(exc))
        return EXIT_USAGE
    binding = SecretBinding(workspace=args.workspace, integration=args.integration, key=args.key)
    try:
        check_binding(binding)
    except SecretsError as exc:
        _error(str(exc))
        return EXIT_USAGE
    try:
        value = _read_value()
    except UnicodeDecodeError:
        _error("the value on stdin is not UTF-8 text")
        return EXIT_FAILURE
    except (EOFError, KeyboardInterrupt):
        _error("no value given")
        return EXIT_FAILURE
    if not value:
        _error("refusing to seal an empty value (give it on stdin, e.g. from a file or a pipe)")
        return EXIT_FAILURE
    try:
        sealed = seal(public_key, binding, value)
    except SecretsError as exc:
        _error(str(exc))
        return EXIT_USAGE
    print(sealed)
    print(
        f"sealed for workspace '{binding.workspace}', integration '{binding.integration}', "
        f"key '{binding.key}' with key id '{public_key.key_id}'",
        file=sys.stderr,
    )
    return EXIT_OK
