"""Tests for sealed secrets (``secrets.py``) and the ``secrets`` CLI (``cli_secrets.py``).

Crypto round trips, bindings, rotation, the loader's opener in each mode, key file
formats, and that no plaintext ever reaches a repr, a log line or CLI output.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import logging
import os
import pickle
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import structlog

from testmesh_reconciler import cli_secrets
from testmesh_reconciler.config.model import SecretBinding, SecretRef, SecretSource, SecretValue
from testmesh_reconciler.secrets import (
    KeyPair,
    OpenFailure,
    PublicKey,
    SealedValue,
    SecretsError,
    drop_one_newline,
    generate_key_pair,
    load_private_key,
    load_public_key,
    load_public_key_ids,
    make_secret_opener,
    open_sealed,
    parse_sealed,
    read_private_key_file,
    read_secret_file,
    seal,
)

PLAINTEXT = "s3cr3t-Plaintext-Value-9f2c"
GITEA_TOKEN = SecretBinding("default", "gitea-internal", "token")


@pytest.fixture(scope="module")
def pair() -> KeyPair:
    return generate_key_pair()


def _sealed(
    pair: KeyPair, binding: SecretBinding = GITEA_TOKEN, plaintext: str = PLAINTEXT
) -> SealedValue:
    parsed = parse_sealed(seal(pair.public, binding, plaintext))
    assert isinstance(parsed, SealedValue)
    return parsed


# --------------------------------------------------------------------------- crypto


def test_round_trip(pair: KeyPair) -> None:
    text = seal(pair.public, GITEA_TOKEN, PLAINTEXT)
    assert text.startswith(f"tmsealed:v1:{pair.key_id}:")
    assert "\n" not in text
    assert " " not in text
    assert PLAINTEXT not in text
    parsed = parse_sealed(text)
    assert isinstance(parsed, SealedValue)
    assert parsed.text() == text
    assert open_sealed(parsed, [pair.private], GITEA_TOKEN) == PLAINTEXT


def test_round_trip_unicode_and_newlines(pair: KeyPair) -> None:
    value = "pässwörd\nline two\n"
    assert open_sealed(_sealed(pair, plaintext=value), [pair.private], GITEA_TOKEN) == value


def test_sealing_twice_gives_different_ciphertexts(pair: KeyPair) -> None:
    assert seal(pair.public, GITEA_TOKEN, PLAINTEXT) != seal(pair.public, GITEA_TOKEN, PLAINTEXT)


def test_sealed_value_is_a_plain_yaml_scalar(pair: KeyPair) -> None:
    import yaml

    text = seal(pair.public, GITEA_TOKEN, PLAINTEXT)
    assert yaml.safe_load(f"token: {{sealed: {text}}}") == {"token": {"sealed": text}}
    assert yaml.safe_load(f"token:\n  sealed: {text}\n") == {"token": {"sealed": text}}


@pytest.mark.parametrize("position", [0, 33, 50, -1])  # ephemeral key, nonce, body, tag
def test_tampered_ciphertext_does_not_open(pair: KeyPair, position: int) -> None:
    prefix, data = seal(pair.public, GITEA_TOKEN, PLAINTEXT).rsplit(":", 1)
    raw = bytearray(base64.urlsafe_b64decode(data + "=" * (-len(data) % 4)))
    raw[position] ^= 0x01
    tampered = prefix + ":" + base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    parsed = parse_sealed(tampered)
    assert isinstance(parsed, SealedValue)
    result = open_sealed(parsed, [pair.private], GITEA_TOKEN)
    assert isinstance(result, OpenFailure)
    assert result.reason == "does_not_open"
    assert result.message == (
        "sealed value does not open for workspace 'default', integration 'gitea-internal', "
        "key 'token' (was it copied from another integration, or tampered with?)"
    )


@pytest.mark.parametrize(
    "moved",
    [
        SecretBinding("default", "gitea-other", "token"),
        SecretBinding("team-b", "gitea-internal", "token"),
        SecretBinding("default", "gitea-internal", "webhook_secret"),
    ],
    ids=["integration", "workspace", "key"],
)
def test_value_moved_to_another_binding_does_not_open(pair: KeyPair, moved: SecretBinding) -> None:
    result = open_sealed(_sealed(pair), [pair.private], moved)
    assert isinstance(result, OpenFailure)
    assert result.reason == "does_not_open"
    assert str(result) == (
        f"sealed value does not open for workspace '{moved.workspace}', integration "
        f"'{moved.integration}', key '{moved.key}' "
        "(was it copied from another integration, or tampered with?)"
    )


def test_wrong_key_id(pair: KeyPair) -> None:
    other = generate_key_pair()
    result = open_sealed(_sealed(pair), [other.private], GITEA_TOKEN)
    assert isinstance(result, OpenFailure)
    assert result.reason == "unknown_key_id"
    assert result.message == (
        f"no private key with key id '{pair.key_id}' (the daemon has: '{other.key_id}'); "
        "reseal with a current public key or add the old private key"
    )


def test_no_private_keys_at_all(pair: KeyPair) -> None:
    result = open_sealed(_sealed(pair), [], GITEA_TOKEN)
    assert isinstance(result, OpenFailure)
    assert "(the daemon has: none)" in result.message


def test_key_rotation() -> None:
    old, new, retired = generate_key_pair(), generate_key_pair(), generate_key_pair()
    keys = [new.private, old.private]
    assert open_sealed(_sealed(old, plaintext="old-value"), keys, GITEA_TOKEN) == "old-value"
    assert open_sealed(_sealed(new, plaintext="new-value"), keys, GITEA_TOKEN) == "new-value"
    result = open_sealed(_sealed(retired), keys, GITEA_TOKEN)
    assert isinstance(result, OpenFailure)
    listed = ", ".join(f"'{k}'" for k in sorted([old.key_id, new.key_id]))
    assert f"key id '{retired.key_id}' (the daemon has: {listed})" in result.message


def test_seal_refuses_empty_value_and_bad_binding(pair: KeyPair) -> None:
    with pytest.raises(SecretsError, match="empty value"):
        seal(pair.public, GITEA_TOKEN, "")
    with pytest.raises(SecretsError, match="integration must be a non-empty name"):
        seal(pair.public, SecretBinding("default", "a/b", "token"), PLAINTEXT)


# --------------------------------------------------------------------------- parse_sealed


NOT_SEALED = (
    "not a sealed value (expected 'tmsealed:v1:<key id>:<data>'): seal it with "
    "'testmesh-reconciler secrets seal'"
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (PLAINTEXT, NOT_SEALED),
        ("", NOT_SEALED),
        ("tmsealed:v2:0123456789abcdef:AAAA", "sealed value has format 'v2', but"),
        ("tmsealed:v1:0123456789abcdef", "malformed sealed value"),
        ("tmsealed:v1:XYZ:" + "A" * 80, "malformed key id in sealed value"),
        ("tmsealed:v1:0123456789abcdef:" + "A" * 79 + "=", "not unpadded base64url"),
        ("tmsealed:v1:0123456789abcdef:AAAA", "too short: was it truncated?"),
        ("tmsealed:v1:0123456789abcdef:AAAA AAAA", "contains whitespace"),
    ],
)
def test_parse_sealed_problems(text: str, expected: str) -> None:
    problem = parse_sealed(text)
    assert isinstance(problem, str)
    assert problem.startswith(expected) or expected in problem


def test_parse_sealed_never_echoes_the_value() -> None:
    for text in (PLAINTEXT, "tmsealed:" + PLAINTEXT, "tmsealed:v1:" + PLAINTEXT + ":x"):
        problem = parse_sealed(text)
        assert isinstance(problem, str)
        assert PLAINTEXT[:6] not in problem


def test_parse_sealed_tolerates_surrounding_whitespace(pair: KeyPair) -> None:
    text = seal(pair.public, GITEA_TOKEN, PLAINTEXT)
    assert isinstance(parse_sealed(f"  {text}\n"), SealedValue)


# --------------------------------------------------------------------------- key files


def test_key_file_formats_round_trip(pair: KeyPair) -> None:
    private_text, public_text = pair.private_text(), pair.public_text()
    assert private_text.endswith("\n")
    assert private_text.count("\n") == 1
    assert private_text.startswith(f"testmesh-private-key:v1:{pair.key_id}:")
    assert public_text.startswith(f"testmesh-public-key:v1:{pair.key_id}:")
    assert len(pair.key_id) == 16
    assert "=" not in private_text
    assert "=" not in public_text
    private = load_private_key(private_text)
    public = load_public_key(public_text)
    assert private.key_id == public.key_id == pair.key_id
    assert public == pair.public
    assert open_sealed(_sealed(pair), [private], GITEA_TOKEN) == PLAINTEXT
    assert open_sealed(_sealed_for(public), [pair.private], GITEA_TOKEN) == PLAINTEXT


def _sealed_for(public: PublicKey) -> SealedValue:
    parsed = parse_sealed(seal(public, GITEA_TOKEN, PLAINTEXT))
    assert isinstance(parsed, SealedValue)
    return parsed


def test_key_objects_never_show_key_material(pair: KeyPair) -> None:
    material = pair.private_text().strip().rsplit(":", 1)[1]
    for shown in (repr(pair), repr(pair.private), str(pair.private), f"{pair.private}"):
        assert material not in shown
        assert pair.key_id in shown
    with pytest.raises(TypeError):
        pickle.dumps(pair.private)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda priv, pub: "", "keys/private-key: the file is empty"),
        (lambda priv, pub: pub, "keys/private-key: this is a public key, not a private key"),
        (lambda priv, pub: "-----BEGIN PRIVATE KEY-----\nMC4C\n", "this is a PEM file"),
        (lambda priv, pub: priv.replace(":v1:", ":v9:"), "private key format 'v9' is not"),
        (lambda priv, pub: priv[:-10] + "\n", "not 32 bytes of unpadded base64url"),
        (lambda priv, pub: "ssh-ed25519 AAAA", "not a testmesh private key"),
    ],
)
def test_private_key_parse_errors(
    pair: KeyPair, mutate: Callable[[str, str], str], message: str
) -> None:
    text = mutate(pair.private_text(), pair.public_text())
    with pytest.raises(SecretsError) as info:
        load_private_key(text, "keys/private-key")
    assert message in str(info.value)
    material = pair.private_text().strip().rsplit(":", 1)[1]
    assert material[:10] not in str(info.value)


def test_private_key_with_wrong_key_id_is_damaged(pair: KeyPair) -> None:
    text = pair.private_text().replace(pair.key_id, "0" * 16)
    with pytest.raises(SecretsError, match=r"does not match the key .* the file is damaged"):
        load_private_key(text, "pk")


def test_public_key_parse_errors(pair: KeyPair) -> None:
    with pytest.raises(SecretsError, match=r"^pub: this is a private key, not a public key"):
        load_public_key(pair.private_text(), "pub")
    with pytest.raises(SecretsError, match=r"^pub: not a testmesh public key"):
        load_public_key("hello", "pub")


def test_read_private_key_file_names_the_file(tmp_path: Path, pair: KeyPair) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(SecretsError, match=f"cannot read private key file '{missing}': No such"):
        read_private_key_file(missing)
    path = tmp_path / "private-key"
    path.write_text(pair.private_text())
    assert read_private_key_file(path).key_id == pair.key_id


def test_load_public_key_ids(pair: KeyPair) -> None:
    second = generate_key_pair()
    ids, problems = load_public_key_ids(
        {
            ".testmesh/public-key": pair.public_text().encode(),
            ".testmesh/public-key-2025": second.public_text().encode(),
            ".testmesh/public-key-broken": b"garbage",
            ".testmesh/public-key-oops": pair.private_text().encode(),
            ".testmesh/public-key-bin": b"\xff\xfe",
        }
    )
    assert ids == frozenset({pair.key_id, second.key_id})
    assert len(problems) == 3
    assert problems[0].startswith(".testmesh/public-key-bin: not a text file")
    assert problems[1].startswith(".testmesh/public-key-broken: not a testmesh public key")
    assert problems[2].startswith(".testmesh/public-key-oops: this is a PRIVATE key")
    material = pair.private_text().strip().rsplit(":", 1)[1]
    assert all(material not in p for p in problems)


# --------------------------------------------------------------------------- opener


def _ref(
    source: SecretSource, reference: str, binding: SecretBinding = GITEA_TOKEN
) -> SecretRef:
    return SecretRef(source=source, reference=reference, binding=binding)


def test_opener_validate_mode_checks_format_only(pair: KeyPair) -> None:
    opener = make_secret_opener()
    assert opener(_ref("sealed", seal(pair.public, GITEA_TOKEN, PLAINTEXT))) is None
    assert opener(_ref("env", "GITEA_TOKEN")) is None
    assert opener(_ref("file", "/run/secrets/token")) is None
    assert opener(_ref("sealed", PLAINTEXT)) == NOT_SEALED


def test_opener_checks_repo_public_key_ids(pair: KeyPair) -> None:
    sealed = seal(pair.public, GITEA_TOKEN, PLAINTEXT)
    assert make_secret_opener(public_key_ids=frozenset({pair.key_id}))(_ref("sealed", sealed)) \
        is None
    opener = make_secret_opener(public_key_ids=frozenset({"bbbbbbbbbbbbbbbb", "aaaaaaaaaaaaaaaa"}))
    assert opener(_ref("sealed", sealed)) == (
        f"sealed with key id '{pair.key_id}', which is not one of the repo's public keys in "
        ".testmesh/ ('aaaaaaaaaaaaaaaa', 'bbbbbbbbbbbbbbbb')"
    )
    problem = make_secret_opener(public_key_ids=frozenset())(_ref("sealed", sealed))
    assert isinstance(problem, str)
    assert "there are none" in problem


def test_opener_opens_sealed_values(pair: KeyPair) -> None:
    opener = make_secret_opener(
        private_keys=[pair.private], public_key_ids=frozenset({pair.key_id})
    )
    result = opener(_ref("sealed", seal(pair.public, GITEA_TOKEN, PLAINTEXT)))
    assert isinstance(result, SecretValue)
    assert result.reveal() == PLAINTEXT
    moved = SecretBinding("default", "gitea-other", "token")
    problem = opener(_ref("sealed", seal(pair.public, GITEA_TOKEN, PLAINTEXT), moved))
    assert isinstance(problem, str)
    assert problem.startswith("sealed value does not open for")


def test_opener_env() -> None:
    opener = make_secret_opener(environ={"TOKEN": "abc\n", "EMPTY": ""})
    result = opener(_ref("env", "TOKEN"))
    assert isinstance(result, SecretValue)
    assert result.reveal() == "abc\n"
    assert opener(_ref("env", "MISSING")) == "environment variable 'MISSING' is not set"
    assert opener(_ref("env", "EMPTY")) == "environment variable 'EMPTY' is set but empty"


def test_opener_file(tmp_path: Path) -> None:
    (tmp_path / "token").write_bytes(b"from-file\n\n")
    (tmp_path / "crlf").write_bytes(b"crlf-value\r\n")
    (tmp_path / "empty").write_bytes(b"\n")
    opener = make_secret_opener(read_file=read_secret_file)
    result = opener(_ref("file", str(tmp_path / "token")))
    assert isinstance(result, SecretValue)
    assert result.reveal() == "from-file\n"
    crlf = opener(_ref("file", str(tmp_path / "crlf")))
    assert isinstance(crlf, SecretValue)
    assert crlf.reveal() == "crlf-value"
    missing = tmp_path / "missing"
    assert opener(_ref("file", str(missing))) == (
        f"cannot read secret file '{missing}': No such file or directory"
    )
    assert opener(_ref("file", str(tmp_path))) == (
        f"cannot read secret file '{tmp_path}': Is a directory"
    )
    assert opener(_ref("file", str(tmp_path / "empty"))) == (
        f"secret file '{tmp_path / 'empty'}' is empty"
    )


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_opener_file_permission_denied(tmp_path: Path) -> None:
    path = tmp_path / "locked"
    path.write_text("x")
    path.chmod(0)
    problem = make_secret_opener(read_file=read_secret_file)(_ref("file", str(path)))
    assert problem == f"cannot read secret file '{path}': Permission denied"


def test_opener_file_unreadable_via_injected_reader() -> None:
    def deny(path: str) -> bytes:
        raise PermissionError(13, "Permission denied", path)

    problem = make_secret_opener(read_file=deny)(_ref("file", "/run/secrets/token"))
    assert problem == "cannot read secret file '/run/secrets/token': Permission denied"


def test_drop_one_newline() -> None:
    assert drop_one_newline("a\n\n") == "a\n"
    assert drop_one_newline("a\r\n") == "a"
    assert drop_one_newline("a") == "a"
    assert drop_one_newline("\n") == ""


# --------------------------------------------------------------------------- never printed


def test_secret_value_never_printed(pair: KeyPair, caplog: pytest.LogCaptureFixture) -> None:
    opener = make_secret_opener(
        private_keys=[pair.private], environ={"TOKEN": PLAINTEXT}, read_file=read_secret_file
    )
    value = opener(_ref("sealed", seal(pair.public, GITEA_TOKEN, PLAINTEXT)))
    assert isinstance(value, SecretValue)
    ref = SecretRef(source="sealed", reference="tmsealed:v1:...", binding=GITEA_TOKEN, value=value)
    holders: list[object] = [value, ref, {"token": ref}, [ref], opener]
    for obj in holders:
        for shown in (repr(obj), str(obj), f"{obj}", f"{obj!r}", "%s %r" % (obj, obj)):  # noqa: UP031
            assert PLAINTEXT not in shown
    assert "***" in repr(ref)
    assert "environ" not in repr(opener)

    with caplog.at_level(logging.DEBUG):
        logging.getLogger("testmesh.test").info("loaded %s", ref)
        logging.getLogger("testmesh.test").info("value %r", value, extra={"ref": ref})
    assert caplog.records
    assert PLAINTEXT not in caplog.text

    event = {"event": "secret_loaded", "ref": ref, "value": value}
    assert PLAINTEXT not in structlog.processors.JSONRenderer()(None, "info", dict(event))
    assert PLAINTEXT not in structlog.processors.KeyValueRenderer()(None, "info", dict(event))
    assert PLAINTEXT not in json.dumps(event, default=repr)


# --------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="testmesh-reconciler")
    sub = parser.add_subparsers()
    cli_secrets.register(sub)
    return parser


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    args = _parser().parse_args(argv)
    code = args.func(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_keygen_writes_keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_dir = tmp_path / "keys"
    code, out, err = _run(["secrets", "keygen", "--out", str(out_dir)], capsys)
    assert code == 0
    private, public = out_dir / "private-key", out_dir / "public-key"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert stat.S_IMODE(public.stat().st_mode) == 0o644
    key_id = out.strip()
    assert out == key_id + "\n"
    assert read_private_key_file(private).key_id == key_id
    assert load_public_key(public.read_text()).key_id == key_id
    lines = err.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"{private}: private key")
    assert "never commit" in lines[0]
    assert lines[1].startswith(f"{public}: public key")
    assert ".testmesh/public-key" in lines[1]


def test_keygen_refuses_to_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(["secrets", "keygen", "--out", str(tmp_path)], capsys)[0] == 0
    before = (tmp_path / "private-key").read_text()
    code, out, err = _run(["secrets", "keygen", "--out", str(tmp_path)], capsys)
    assert code == 1
    assert out == ""
    assert "refusing to overwrite the existing private key" in err
    assert "--force" in err
    assert (tmp_path / "private-key").read_text() == before

    code, out, _ = _run(["secrets", "keygen", "--out", str(tmp_path), "--force"], capsys)
    assert code == 0
    assert (tmp_path / "private-key").read_text() != before
    assert stat.S_IMODE((tmp_path / "private-key").stat().st_mode) == 0o600
    assert read_private_key_file(tmp_path / "private-key").key_id == out.strip()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["private-key", "public-key"]


@pytest.fixture
def keys_dir(tmp_path: Path) -> Path:
    pair = generate_key_pair()
    (tmp_path / "private-key").write_text(pair.private_text())
    (tmp_path / "public-key").write_text(pair.public_text())
    return tmp_path


SEAL_ARGS = ["--workspace", "default", "--integration", "gitea-internal", "--key", "token"]


@pytest.mark.parametrize(
    ("stdin", "expected"),
    [(PLAINTEXT + "\n", PLAINTEXT), (PLAINTEXT + "\n\n", PLAINTEXT + "\n"), (PLAINTEXT, PLAINTEXT)],
)
def test_seal_reads_stdin_and_drops_one_newline(
    keys_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    stdin: str, expected: str,
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code, out, err = _run(
        ["secrets", "seal", "--public-key", str(keys_dir / "public-key"), *SEAL_ARGS], capsys
    )
    assert code == 0
    assert out.count("\n") == 1
    sealed = parse_sealed(out.rstrip("\n"))
    assert isinstance(sealed, SealedValue)
    private = read_private_key_file(keys_dir / "private-key")
    assert open_sealed(sealed, [private], GITEA_TOKEN) == expected
    assert PLAINTEXT not in out
    assert PLAINTEXT not in err


def test_seal_refuses_empty_value(
    keys_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n"))
    code, out, err = _run(
        ["secrets", "seal", "--public-key", str(keys_dir / "public-key"), *SEAL_ARGS], capsys
    )
    assert (code, out) == (1, "")
    assert "refusing to seal an empty value" in err


def test_seal_key_file_problems_exit_2(
    keys_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(PLAINTEXT))
    missing = keys_dir / "nope"
    code, out, err = _run(["secrets", "seal", "--public-key", str(missing), *SEAL_ARGS], capsys)
    assert (code, out) == (2, "")
    assert f"cannot read public key file '{missing}': No such file or directory" in err

    private = keys_dir / "private-key"
    code, out, err = _run(["secrets", "seal", "--public-key", str(private), *SEAL_ARGS], capsys)
    assert (code, out) == (2, "")
    assert f"{private}: this is a private key, not a public key" in err
    material = private.read_text().strip().rsplit(":", 1)[1]
    assert material not in err
    assert PLAINTEXT not in err


def test_seal_bad_binding_exit_2(
    keys_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(PLAINTEXT))
    code, out, err = _run(
        ["secrets", "seal", "--public-key", str(keys_dir / "public-key"),
         "--integration", "a/b", "--key", "token"],
        capsys,
    )
    assert (code, out) == (2, "")
    assert "integration must be a non-empty name" in err
    assert PLAINTEXT not in err


def test_seal_never_takes_the_value_from_argv(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        _parser().parse_args(["secrets", "seal", "--public-key", "k", *SEAL_ARGS, PLAINTEXT])
    assert info.value.code == 2
    assert "unrecognized arguments" in capsys.readouterr().err


def test_secrets_needs_a_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        _parser().parse_args(["secrets"])
    assert info.value.code == 2
    capsys.readouterr()


SUBPROCESS_MAIN = """
import argparse, sys
from testmesh_reconciler import cli_secrets
parser = argparse.ArgumentParser(prog="testmesh-reconciler")
cli_secrets.register(parser.add_subparsers())
args = parser.parse_args(sys.argv[1:])
sys.exit(args.func(args))
"""


def test_keygen_and_seal_in_a_real_process(tmp_path: Path) -> None:
    def run(*argv: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", SUBPROCESS_MAIN, *argv],
            input=stdin, capture_output=True, text=True, timeout=60, check=False,
        )

    keygen = run("secrets", "keygen", "--out", str(tmp_path))
    assert keygen.returncode == 0, keygen.stderr
    key_id = keygen.stdout.strip()

    sealed = run("secrets", "seal", "--public-key", str(tmp_path / "public-key"), *SEAL_ARGS,
                 stdin=PLAINTEXT + "\n")
    assert sealed.returncode == 0, sealed.stderr
    assert sealed.stdout.startswith(f"tmsealed:v1:{key_id}:")
    assert sealed.stdout.count("\n") == 1
    for stream in (keygen.stdout, keygen.stderr, sealed.stdout, sealed.stderr):
        assert PLAINTEXT not in stream

    opener = make_secret_opener(
        private_keys=[read_private_key_file(tmp_path / "private-key")],
        public_key_ids=load_public_key_ids(
            {".testmesh/public-key": (tmp_path / "public-key").read_bytes()}
        )[0],
    )
    value = opener(_ref("sealed", sealed.stdout.strip()))
    assert isinstance(value, SecretValue)
    assert value.reveal() == PLAINTEXT
