"""Sealed secrets: X25519 key pairs, ``tmsealed:v1`` values, and the loader's secret opener.

Pure crypto plus small helpers: key and sealed-value text formats, sealing bound to
(workspace, integration, key), opening with one or more private keys (rotation), and
``make_secret_opener`` which resolves ``{sealed|env|file}`` references for the config loader.
"""

from __future__ import annotations

import base64
import binascii
import errno
import hashlib
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, NoReturn

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from testmesh_reconciler.config.model import SecretBinding, SecretRef, SecretValue
from testmesh_reconciler.errors import TestmeshError

PRIVATE_KEY_PREFIX = "testmesh-private-key"
PUBLIC_KEY_PREFIX = "testmesh-public-key"
KEY_VERSION = "v1"
SEALED_PREFIX = "tmsealed"
SEALED_VERSION = "v1"
HKDF_INFO = b"testmesh-reconciler sealed v1"
#: Largest secret file read by :func:`read_secret_file` (a bigger one is a mistake).
MAX_SECRET_FILE_BYTES = 1024 * 1024

_KEY_LEN = 32
_NONCE_LEN = 12
_TAG_LEN = 16
_KEY_ID_RE = re.compile(r"[0-9a-f]{16}")
_B64URL_RE = re.compile(r"[A-Za-z0-9_-]+")
_VERSION_RE = re.compile(r"v[0-9]{1,4}")
_SEAL_HINT = "seal it with 'testmesh-reconciler secrets seal'"


class SecretsError(TestmeshError):
    """A key file or a sealing request is unusable; the message names the file and the fault."""


# --------------------------------------------------------------------------- keys


def key_id_of(public_raw: bytes) -> str:
    """Key id: the first 16 hex digits of sha256 over the raw 32-byte public key."""
    return hashlib.sha256(public_raw).hexdigest()[:16]


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes | None:
    """Strict unpadded base64url; ``None`` when ``text`` is not that."""
    if not _B64URL_RE.fullmatch(text) or len(text) % 4 == 1:
        return None
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None


class PublicKey:
    """An X25519 public key with its key id; anyone may seal with it."""

    __slots__ = ("_key", "key_id", "raw")

    def __init__(self, key: X25519PublicKey) -> None:
        self._key = key
        self.raw = key.public_bytes_raw()
        self.key_id = key_id_of(self.raw)

    def public_text(self) -> str:
        """``testmesh-public-key:v1:<key id>:<base64url>`` plus a newline (the file's content)."""
        return f"{PUBLIC_KEY_PREFIX}:{KEY_VERSION}:{self.key_id}:{_b64encode(self.raw)}\n"

    def __repr__(self) -> str:
        return f"PublicKey(key_id={self.key_id!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PublicKey) and other.raw == self.raw

    def __hash__(self) -> int:
        return hash(("PublicKey", self.raw))


class PrivateKey:
    """An X25519 private key; its repr shows the key id only, and it cannot be pickled."""

    __slots__ = ("_key", "key_id", "public_key")

    def __init__(self, key: X25519PrivateKey) -> None:
        self._key = key
        self.public_key = PublicKey(key.public_key())
        self.key_id = self.public_key.key_id

    def private_text(self) -> str:
        """``testmesh-private-key:v1:<key id>:<base64url>`` plus a newline (the file's content)."""
        raw = self._key.private_bytes_raw()
        return f"{PRIVATE_KEY_PREFIX}:{KEY_VERSION}:{self.key_id}:{_b64encode(raw)}\n"

    def public_text(self) -> str:
        return self.public_key.public_text()

    def exchange(self, peer: X25519PublicKey) -> bytes:
        """X25519 shared secret with ``peer`` (raises ``ValueError`` for a degenerate peer)."""
        return self._key.exchange(peer)

    def __repr__(self) -> str:
        return f"PrivateKey(key_id={self.key_id!r})"

    def __reduce__(self) -> NoReturn:
        raise TypeError("PrivateKey cannot be pickled")


@dataclass(frozen=True, slots=True)
class KeyPair:
    """A fresh key pair from :func:`generate_key_pair`."""

    private: PrivateKey
    public: PublicKey

    @property
    def key_id(self) -> str:
        return self.public.key_id

    def private_text(self) -> str:
        return self.private.private_text()

    def public_text(self) -> str:
        return self.public.public_text()


def generate_key_pair() -> KeyPair:
    private = PrivateKey(X25519PrivateKey.generate())
    return KeyPair(private=private, public=private.public_key)


def _key_format(kind: Literal["private", "public"]) -> str:
    prefix = PRIVATE_KEY_PREFIX if kind == "private" else PUBLIC_KEY_PREFIX
    return f"'{prefix}:{KEY_VERSION}:<key id>:<key>'"


def _parse_key_text(
    text: str, source: str, kind: Literal["private", "public"]
) -> tuple[str, bytes]:
    """(declared key id, raw 32 bytes) of a key file; never echoes the file's content."""
    other: Literal["private", "public"] = "public" if kind == "private" else "private"
    expected = (
        f"expected one line {_key_format(kind)}, "
        "as written by 'testmesh-reconciler secrets keygen'"
    )
    body = text.strip()
    if not body:
        raise SecretsError(f"{source}: the file is empty ({expected})")
    if body.startswith("-----BEGIN"):
        raise SecretsError(f"{source}: this is a PEM file, not a testmesh {kind} key ({expected})")
    parts = body.split(":")
    prefix = parts[0]
    if prefix == (PUBLIC_KEY_PREFIX if kind == "private" else PRIVATE_KEY_PREFIX):
        if kind == "private":
            hint = "give the daemon the file 'private-key' written by 'secrets keygen'"
        else:
            hint = (
                "seal with the public key ('public-key' from 'secrets keygen', or "
                ".testmesh/public-key in the config repo); never share or commit the private key"
            )
        raise SecretsError(f"{source}: this is a {other} key, not a {kind} key: {hint}")
    if prefix != (PRIVATE_KEY_PREFIX if kind == "private" else PUBLIC_KEY_PREFIX):
        raise SecretsError(f"{source}: not a testmesh {kind} key ({expected})")
    if "\n" in body:
        raise SecretsError(f"{source}: more than one line ({expected})")
    if len(parts) != 4:
        raise SecretsError(f"{source}: malformed {kind} key ({expected})")
    _, version, key_id, data = parts
    if version != KEY_VERSION:
        shown = f"'{version}'" if _VERSION_RE.fullmatch(version) else "an unknown version"
        raise SecretsError(
            f"{source}: {kind} key format {shown} is not supported (this testmesh-reconciler "
            f"reads '{KEY_VERSION}'): upgrade testmesh-reconciler"
        )
    if not _KEY_ID_RE.fullmatch(key_id):
        raise SecretsError(f"{source}: malformed key id (expected 16 lowercase hex digits)")
    raw = _b64decode(data)
    if raw is None or len(raw) != _KEY_LEN:
        raise SecretsError(
            f"{source}: the key data is not 32 bytes of unpadded base64url "
            "(was the file truncated or edited?)"
        )
    return key_id, raw


def load_private_key(text: str, source: str = "private key") -> PrivateKey:
    """Parse a private key file's text; ``source`` (the path) names it in errors."""
    declared, raw = _parse_key_text(text, source, "private")
    key = PrivateKey(X25519PrivateKey.from_private_bytes(raw))
    if key.key_id != declared:
        raise SecretsError(
            f"{source}: the key id '{declared}' does not match the key (it is "
            f"'{key.key_id}'): the file is damaged; restore it from its backup"
        )
    return key


def load_public_key(text: str, source: str = "public key") -> PublicKey:
    """Parse a public key file's text; ``source`` (the path) names it in errors."""
    declared, raw = _parse_key_text(text, source, "public")
    key = PublicKey(X25519PublicKey.from_public_bytes(raw))
    if key.key_id != declared:
        raise SecretsError(
            f"{source}: the key id '{declared}' does not match the key (it is "
            f"'{key.key_id}'): the file is damaged; copy it again from 'secrets keygen' output"
        )
    return key


def _os_reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def _read_key_file(path: str | os.PathLike[str], kind: str) -> str:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise SecretsError(f"cannot read {kind} key file '{os.fspath(path)}': "
                           f"{_os_reason(exc)}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise SecretsError(
            f"{os.fspath(path)}: not a text file (expected a testmesh {kind} key)"
        ) from None


def read_private_key_file(path: str | os.PathLike[str]) -> PrivateKey:
    """Read and parse a private key file (``--private-key FILE``); errors name the file."""
    return load_private_key(_read_key_file(path, "private"), os.fspath(path))


def read_public_key_file(path: str | os.PathLike[str]) -> PublicKey:
    """Read and parse a public key file (``secrets seal --public-key FILE``)."""
    return load_public_key(_read_key_file(path, "public"), os.fspath(path))


def load_public_key_ids(files: Mapping[str, bytes]) -> tuple[frozenset[str], list[str]]:
    """Key ids of the config repo's ``.testmesh/public-key*`` files (path -> content).

    Returns the ids of the files that parse and one problem message (starting with the
    path) per file that does not; a private key committed there is called out as such.
    """
    ids: set[str] = set()
    problems: list[str] = []
    for path in sorted(files):
        try:
            text = files[path].decode("utf-8")
        except UnicodeDecodeError:
            problems.append(f"{path}: not a text file (expected a testmesh public key)")
            continue
        if text.lstrip().startswith(PRIVATE_KEY_PREFIX + ":"):
            problems.append(
                f"{path}: this is a PRIVATE key committed to the config repo: remove it from "
                "the repo and its history, generate a new key pair with 'testmesh-reconciler "
                "secrets keygen', and reseal every value"
            )
            continue
        try:
            ids.add(load_public_key(text, path).key_id)
        except SecretsError as exc:
            problems.append(str(exc))
    return frozenset(ids), problems


# --------------------------------------------------------------------------- sealed values


@dataclass(frozen=True, slots=True)
class SealedValue:
    """A parsed ``tmsealed:v1:<key id>:<data>`` value (ciphertext only; nothing secret)."""

    key_id: str
    ephemeral_public: bytes = field(repr=False)
    nonce: bytes = field(repr=False)
    ciphertext: bytes = field(repr=False)  # AES-256-GCM ciphertext followed by its 16-byte tag

    def text(self) -> str:
        data = _b64encode(self.ephemeral_public + self.nonce + self.ciphertext)
        return f"{SEALED_PREFIX}:{SEALED_VERSION}:{self.key_id}:{data}"


@dataclass(frozen=True, slots=True)
class OpenFailure:
    """Why a sealed value did not open: ``unknown_key_id`` or ``does_not_open``."""

    reason: Literal["unknown_key_id", "does_not_open"]
    message: str

    def __str__(self) -> str:
        return self.message


def associated_data(binding: SecretBinding) -> bytes:
    """What a sealed value is bound to: ``testmesh.io/v1/<workspace>/<integration>/<key>``."""
    return f"testmesh.io/v1/{binding.workspace}/{binding.integration}/{binding.key}".encode()


def _derive_key(shared: bytes, ephemeral_public: bytes, recipient_public: bytes) -> bytes:
    hkdf = HKDF(
        algorithm=SHA256(), length=32, salt=ephemeral_public + recipient_public, info=HKDF_INFO
    )
    return hkdf.derive(shared)


def check_binding(binding: SecretBinding) -> None:
    """Raise :class:`SecretsError` unless each part is a non-empty name without '/'."""
    for name, value in (
        ("workspace", binding.workspace),
        ("integration", binding.integration),
        ("key", binding.key),
    ):
        if not value or "/" in value or any(c.isspace() for c in value):
            raise SecretsError(
                f"{name} must be a non-empty name without '/' or whitespace (as in the "
                f"declaration), got {value!r}"
            )


def seal(public_key: PublicKey, binding: SecretBinding, plaintext: str) -> str:
    """Encrypt ``plaintext`` for ``public_key``, bound to ``binding``; returns one line.

    Raises :class:`SecretsError` for an empty value or a malformed binding.
    """
    if not plaintext:
        raise SecretsError("refusing to seal an empty value")
    check_binding(binding)
    ephemeral = X25519PrivateKey.generate()
    ephemeral_public = ephemeral.public_key().public_bytes_raw()
    shared = ephemeral.exchange(public_key._key)
    key = _derive_key(shared, ephemeral_public, public_key.raw)
    nonce = os.urandom(_NONCE_LEN)
    ciphertext = AESGCM(key).encrypt(nonce, plaintext.encode("utf-8"), associated_data(binding))
    return SealedValue(public_key.key_id, ephemeral_public, nonce, ciphertext).text()


def parse_sealed(text: str) -> SealedValue | str:
    """Parse a sealed value; a ``str`` result is the problem (never echoing the value)."""
    expected = f"expected '{SEALED_PREFIX}:{SEALED_VERSION}:<key id>:<data>'"
    body = text.strip()
    parts = body.split(":")
    if len(parts) < 2 or parts[0] != SEALED_PREFIX:
        return f"not a sealed value ({expected}): {_SEAL_HINT}"
    if any(c.isspace() for c in body):
        return (
            "sealed value contains whitespace (was it wrapped across lines?): keep it on one "
            "line, quoted"
        )
    version = parts[1]
    if version != SEALED_VERSION:
        shown = f"'{version}'" if _VERSION_RE.fullmatch(version) else "an unknown version"
        return (
            f"sealed value has format {shown}, but this testmesh-reconciler opens "
            f"'{SEALED_VERSION}': upgrade testmesh-reconciler, or {_SEAL_HINT}"
        )
    if len(parts) != 4:
        return f"malformed sealed value ({expected}): was it truncated? {_SEAL_HINT}"
    key_id, data = parts[2], parts[3]
    if not _KEY_ID_RE.fullmatch(key_id):
        return (
            f"malformed key id in sealed value (expected 16 lowercase hex digits): "
            f"was it edited? {_SEAL_HINT}"
        )
    raw = _b64decode(data)
    if raw is None:
        return f"sealed value data is not unpadded base64url: was it edited? {_SEAL_HINT}"
    if len(raw) < _KEY_LEN + _NONCE_LEN + _TAG_LEN:
        return f"sealed value data is too short: was it truncated? {_SEAL_HINT}"
    return SealedValue(
        key_id=key_id,
        ephemeral_public=raw[:_KEY_LEN],
        nonce=raw[_KEY_LEN : _KEY_LEN + _NONCE_LEN],
        ciphertext=raw[_KEY_LEN + _NONCE_LEN :],
    )


def _quoted(ids: Iterable[str]) -> str:
    return ", ".join(f"'{i}'" for i in sorted(ids))


def open_sealed(
    sealed: SealedValue, private_keys: Sequence[PrivateKey], binding: SecretBinding
) -> str | OpenFailure:
    """Decrypt with the private key whose id the value names; the plaintext or why not."""
    private = next((k for k in private_keys if k.key_id == sealed.key_id), None)
    if private is None:
        have = _quoted({k.key_id for k in private_keys}) or "none"
        return OpenFailure(
            "unknown_key_id",
            f"no private key with key id '{sealed.key_id}' (the daemon has: {have}); "
            "reseal with a current public key or add the old private key",
        )
    where = (
        f"workspace '{binding.workspace}', integration '{binding.integration}', "
        f"key '{binding.key}'"
    )
    try:
        shared = private.exchange(X25519PublicKey.from_public_bytes(sealed.ephemeral_public))
        key = _derive_key(shared, sealed.ephemeral_public, private.public_key.raw)
        plain = AESGCM(key).decrypt(sealed.nonce, sealed.ciphertext, associated_data(binding))
        return plain.decode("utf-8")
    except (InvalidTag, ValueError):  # ValueError: degenerate ephemeral key, or not UTF-8
        return OpenFailure(
            "does_not_open",
            f"sealed value does not open for {where} "
            "(was it copied from another integration, or tampered with?)",
        )


# --------------------------------------------------------------------------- the loader's opener


def drop_one_newline(text: str) -> str:
    """Drop exactly one trailing ``\\n`` (or ``\\r\\n``), as ``secrets seal`` and files do."""
    if text.endswith("\r\n"):
        return text[:-2]
    if text.endswith("\n"):
        return text[:-1]
    return text


def read_secret_file(path: str) -> bytes:
    """The daemon's ``read_file`` for ``{file: PATH}``: at most 1 MiB, else ``OSError``."""
    with open(path, "rb") as f:
        data = f.read(MAX_SECRET_FILE_BYTES + 1)
    if len(data) > MAX_SECRET_FILE_BYTES:
        raise OSError(errno.EFBIG, "larger than 1 MiB (is it really a secret?)")
    return data


#: What the opener answers for one declared secret: the opened value; ``None`` when the
#: reference was checked but deliberately not opened (validate mode); a ``str`` problem.
OpenResult = SecretValue | None | str


@dataclass(frozen=True, slots=True)
class SecretOpener:
    """Resolves one :class:`SecretRef` for the config loader (build with make_secret_opener).

    Calling it returns ``SecretValue`` when the secret was resolved, ``None`` when its
    reference is well-formed but this opener was told not to resolve that source (e.g.
    ``validate`` without ``--private-key``), or a ``str`` problem message for the loader to
    report against the declaration. It never raises for a bad reference and never puts the
    plaintext, the environment or file contents into its messages or repr.
    """

    private_keys: tuple[PrivateKey, ...] | None
    public_key_ids: frozenset[str] | None
    environ: Mapping[str, str] | None = field(repr=False, compare=False)
    read_file: Callable[[str], bytes] | None = field(repr=False, compare=False)

    def __call__(self, ref: SecretRef) -> OpenResult:
        if ref.source == "sealed":
            return self._open_sealed(ref)
        if ref.source == "env":
            return self._open_env(ref.reference)
        if ref.source == "file":
            return self._open_file(ref.reference)
        return f"unknown secret source {ref.source!r} (expected sealed, env or file)"

    def _open_sealed(self, ref: SecretRef) -> OpenResult:
        sealed = parse_sealed(ref.reference)
        if isinstance(sealed, str):
            return sealed
        if self.public_key_ids is not None and sealed.key_id not in self.public_key_ids:
            known = _quoted(self.public_key_ids)
            listing = (
                f"({known})"
                if known
                else "(there are none: commit the public key as .testmesh/public-key)"
            )
            return (
                f"sealed with key id '{sealed.key_id}', which is not one of the repo's "
                f"public keys in .testmesh/ {listing}"
            )
        if self.private_keys is None:
            return None
        opened = open_sealed(sealed, self.private_keys, ref.binding)
        if isinstance(opened, OpenFailure):
            return opened.message
        return SecretValue(opened)

    def _open_env(self, name: str) -> OpenResult:
        if not name:
            return "empty environment variable name in {env: ...}"
        if self.environ is None:
            return None
        value = self.environ.get(name)
        if value is None:
            return f"environment variable '{name}' is not set"
        if not value:
            return f"environment variable '{name}' is set but empty"
        return SecretValue(value)

    def _open_file(self, path: str) -> OpenResult:
        if not path:
            return "empty path in {file: ...}"
        if self.read_file is None:
            return None
        try:
            data = self.read_file(path)
        except OSError as exc:
            return f"cannot read secret file '{path}': {_os_reason(exc)}"
        try:
            text = drop_one_newline(data.decode("utf-8"))
        except UnicodeDecodeError:
            return f"secret file '{path}' is not UTF-8 text"
        if not text:
            return f"secret file '{path}' is empty"
        return SecretValue(text)


def make_secret_opener(
    *,
    private_keys: Sequence[PrivateKey] | None = None,
    public_key_ids: frozenset[str] | None = None,
    environ: Mapping[str, str] | None = None,
    read_file: Callable[[str], bytes] | None = None,
) -> SecretOpener:
    """Build the opener the config loader calls for every declared secret.

    - ``private_keys``: keys that open sealed values (several = rotation); ``None`` checks
      only their format (``validate`` without ``--private-key``).
    - ``public_key_ids``: ids of the repo's ``.testmesh/public-key*`` (see
      :func:`load_public_key_ids`); when given, a value sealed for another key is a problem.
    - ``environ``: resolves ``{env: NAME}`` (used as is); ``None`` leaves env unresolved.
    - ``read_file``: resolves ``{file: PATH}`` (one trailing newline dropped), e.g.
      :func:`read_secret_file`; ``None`` leaves files unresolved.
    """
    return SecretOpener(
        private_keys=tuple(private_keys) if private_keys is not None else None,
        public_key_ids=public_key_ids,
        environ=environ,
        read_file=read_file,
    )
