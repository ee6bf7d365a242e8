"""Gitea receiver: signatures, integration choice, push / pull_request parsing, and that
no input at all makes it raise."""

from __future__ import annotations

import json
from functools import cache
from urllib.parse import quote_plus

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from testmesh_reconciler.config.model import Integration, SecretValue, Snapshot
from testmesh_reconciler.triggers import Trigger
from testmesh_reconciler.webhooks import RECEIVERS, argocd, gitea
from testmesh_reconciler.webhooks.common import BadRequest, Ignored, Rejected
from tests.testing.contracts import load_bytes
from tests.testing.webhook_payloads import (
    PR_SAMPLES,
    PUSH_SAMPLE,
    SAMPLE_HEAD_BRANCH,
    SAMPLE_PR_HEAD,
    SAMPLE_SECRET,
    SAMPLE_SHA,
    ZERO_SHA,
    gitea_delete,
    gitea_headers,
    gitea_pull_request,
    gitea_push,
    gitea_signature,
)
from tests.webhooks import integration, load_snapshot

SECRET = SecretValue(SAMPLE_SECRET)
CONTRACT_SIGNATURES = {
    PUSH_SAMPLE: "bcb9619f2da8d68179f0928606a1ca98836f57c3b65f9328a90ea4924fca87e9",
    PR_SAMPLES["opened"]: "5ef23f074610d407a3615d237a2ca425faf1fb32af90d93e7368bdb0035d0d5d",
    PR_SAMPLES["synchronized"]:
        "7b0ad138cd10b81f32945d755a381a6373101aebdf2ef449f1caa9a8e62bc200",
}


@pytest.fixture(scope="module")
def snapshot() -> Snapshot:
    return load_snapshot()


@pytest.fixture(scope="module")
def internal(snapshot: Snapshot) -> Integration:
    return snapshot.integrations[("default", "gitea-internal")]


def test_registry_is_a_literal_dict_of_the_two_modules() -> None:
    assert dict(RECEIVERS) == {"gitea": gitea, "argocd": argocd}


# -- verify -------------------------------------------------------------------------------
@pytest.mark.parametrize("sample", sorted(CONTRACT_SIGNATURES))
def test_verify_contract_samples_byte_for_byte(sample: str) -> None:
    body = load_bytes(sample)
    headers = {"X-Gitea-Signature": CONTRACT_SIGNATURES[sample]}
    assert gitea.verify(headers, body, SECRET)
    assert gitea.verify({"X-Hub-Signature-256": "sha256=" + CONTRACT_SIGNATURES[sample]},
                        body, SECRET)
    assert not gitea.verify(headers, body + b"\n", SECRET)
    assert not gitea.verify(headers, body, SecretValue("other"))


def test_verify_header_names_are_case_insensitive() -> None:
    headers, body = gitea_push()
    lower = {k.lower(): v for k, v in headers.items()}
    upper = {k.upper(): v for k, v in headers.items()}
    assert gitea.verify(lower, body, SECRET)
    assert gitea.verify(upper, body, SECRET)


@pytest.mark.parametrize("headers", [
    {},
    {"X-Gitea-Signature": ""},
    {"X-Gitea-Signature": "", "X-Hub-Signature-256": "sha256="},
    {"X-Hub-Signature-256": "deadbeef"},
    {"X-Gitea-Signature": "0" * 64},
    {"X-Gitea-Signature": "nothex\u00e9\ud800"},
], ids=["none", "empty", "empty-hub-prefix", "hub-without-prefix", "wrong", "garbage"])
def test_verify_rejects_missing_empty_and_wrong(headers: dict[str, str]) -> None:
    _, body = gitea_push()
    assert not gitea.verify(headers, body, SECRET)


def test_empty_secret_never_verifies() -> None:
    body = b"{}"
    # HMAC with an empty key is well defined; it must still not verify.
    import hashlib
    import hmac
    signature = hmac.new(b"", body, hashlib.sha256).hexdigest()
    assert not gitea.verify({"X-Gitea-Signature": signature}, body, SecretValue(""))


def test_uppercase_hex_signature_verifies() -> None:
    headers, body = gitea_push()
    assert gitea.verify({"X-Gitea-Signature": headers["X-Gitea-Signature"].upper()}, body,
                        SECRET)


def test_form_encoded_delivery_verifies_and_parses(internal: Integration) -> None:
    headers, body = gitea_push()  # the signature is over the JSON, not the form
    form = b"payload=" + quote_plus(body.decode()).encode()
    headers["Content-Type"] = "application/x-www-form-urlencoded"
    assert gitea.verify(headers, form, SECRET)
    assert isinstance(gitea.parse(headers, form, internal), Trigger)


# -- select_integration ---------------------------------------------------------------------
def test_select_unnamed_picks_the_integration_whose_secret_verifies() -> None:
    snap = load_snapshot({
        "integrations/a.yaml": integration("a-gitea", "gitea", "https://a.example"),
        "integrations/z.yaml": integration("z-gitea", "gitea", "https://z.example"),
    }, secrets={"a-gitea": "secret-a", "z-gitea": "secret-z"})
    for name, secret in [("a-gitea", "secret-a"), ("z-gitea", "secret-z"),
                         ("gitea-internal", SAMPLE_SECRET)]:
        headers, body = gitea_push(secret=secret)
        chosen = gitea.select_integration(snap, headers, body, workspace="default")
        assert isinstance(chosen, Integration) and chosen.name == name


def test_select_unnamed_wrong_secret_is_401(snapshot: Snapshot) -> None:
    headers, body = gitea_push(secret="not-the-secret")
    assert gitea.select_integration(snapshot, headers, body, workspace="default") == Rejected(
        401, "signature does not verify with any gitea integration's webhook_secret")


@pytest.mark.parametrize("secret", [None, ""])
def test_select_unsigned_is_401_missing(snapshot: Snapshot, secret: str | None) -> None:
    headers, body = gitea_push(secret=secret)  # Gitea sends empty signature headers
    result = gitea.select_integration(snapshot, headers, body, workspace="default")
    assert isinstance(result, Rejected) and result.status == 401
    assert result.reason.startswith("missing X-Gitea-Signature header")
    result = gitea.select_integration(snapshot, {}, body, workspace="default")
    assert isinstance(result, Rejected) and result.status == 401


def test_select_named(snapshot: Snapshot) -> None:
    headers, body = gitea_push()
    chosen = gitea.select_integration(snapshot, headers, body, workspace="default",
                                      name="gitea-internal")
    assert isinstance(chosen, Integration) and chosen.name == "gitea-internal"


@pytest.mark.parametrize("name", ["nope", "argocd-staging"])
def test_select_unknown_or_other_provider_name_is_404(snapshot: Snapshot, name: str) -> None:
    headers, body = gitea_push()
    assert gitea.select_integration(snapshot, headers, body, workspace="default",
                                    name=name) == Rejected(
        404, f"no gitea integration named {name!r} in workspace 'default'")


def test_select_named_in_another_workspace_is_404(snapshot: Snapshot) -> None:
    headers, body = gitea_push()
    result = gitea.select_integration(snapshot, headers, body, workspace="team-b",
                                      name="gitea-internal")
    assert result == Rejected(404, "no gitea integration named 'gitea-internal' in "
                                   "workspace 'team-b'")


def test_select_named_with_wrong_signature_is_401(snapshot: Snapshot) -> None:
    headers, body = gitea_push(secret="wrong")
    result = gitea.select_integration(snapshot, headers, body, workspace="default",
                                      name="gitea-internal")
    assert result == Rejected(401, "signature does not verify with the webhook_secret of "
                                   "gitea integration 'gitea-internal'")


def test_select_signature_of_a_workspace_b_integration_does_not_verify_in_default() -> None:
    snap = load_snapshot({"integrations/b.yaml": integration(
        "gitea-b", "gitea", "https://b.example", workspace="team-b")},
        secrets={"gitea-b": "secret-b"})
    headers, body = gitea_push(secret="secret-b")
    assert isinstance(gitea.select_integration(snap, headers, body, workspace="default"),
                      Rejected)
    chosen = gitea.select_integration(snap, headers, body, workspace="team-b")
    assert isinstance(chosen, Integration) and chosen.name == "gitea-b"
    assert isinstance(gitea.select_integration(snap, headers, body, workspace="team-c"),
                      Rejected)


def test_unsigned_accepted_when_require_webhook_secret_false() -> None:
    snap = load_snapshot({"integrations/open.yaml": integration(
        "open-gitea", "gitea", "https://open.example", secret=False, require=False)})
    headers, body = gitea_push(secret=None)
    chosen = gitea.select_integration(snap, headers, body, workspace="default")
    assert isinstance(chosen, Integration) and chosen.name == "open-gitea"
    chosen = gitea.select_integration(snap, {}, body, workspace="default", name="open-gitea")
    assert isinstance(chosen, Integration) and chosen.name == "open-gitea"
    # a delivery that verifies with a secret is that integration's, not the open one's
    headers, body = gitea_push()
    chosen = gitea.select_integration(snap, headers, body, workspace="default")
    assert isinstance(chosen, Integration) and chosen.name == "gitea-internal"


def test_select_checks_every_integration(monkeypatch: pytest.MonkeyPatch) -> None:
    """No early exit: each integration's secret is compared even after a match."""
    snap = load_snapshot({
        f"integrations/g{i}.yaml": integration(f"g{i}", "gitea", f"https://g{i}.example")
        for i in range(5)}, secrets={f"g{i}": f"s{i}" for i in range(5)})
    seen: list[str] = []
    real = gitea._verify

    def spy(given: tuple[str, ...], body: bytes, secret: SecretValue) -> bool:
        seen.append(secret.reveal())
        return real(given, body, secret)

    monkeypatch.setattr(gitea, "_verify", spy)
    headers, body = gitea_push(secret="s0")
    chosen = gitea.select_integration(snap, headers, body, workspace="default")
    assert isinstance(chosen, Integration) and chosen.name == "g0"
    assert sorted(seen) == sorted([SAMPLE_SECRET, "s0", "s1", "s2", "s3", "s4"])


# -- parse: push --------------------------------------------------------------------------
def test_parse_push(internal: Integration) -> None:
    headers, body = gitea_push("acme/shop", "release/1.4", SAMPLE_SHA)
    assert gitea.parse(headers, body, internal) == Trigger(
        source="gitea", event="push", integration="gitea-internal", workspace="default",
        repo="acme/shop", sha=SAMPLE_SHA, branch="release/1.4")


def test_parse_contract_push_sample(internal: Integration) -> None:
    trigger = gitea.parse({"X-Gitea-Event": "push"}, load_bytes(PUSH_SAMPLE), internal)
    assert isinstance(trigger, Trigger)
    assert (trigger.repo, trigger.branch, trigger.sha) == ("acme/demo-services", "main",
                                                           SAMPLE_SHA)


@pytest.mark.parametrize("header", ["X-GitHub-Event", "X-Gogs-Event", "x-gitea-event"])
def test_parse_event_header_fallbacks(internal: Integration, header: str) -> None:
    _, body = gitea_push()
    assert isinstance(gitea.parse({header: "push"}, body, internal), Trigger)


def test_tag_push_is_ignored(internal: Integration) -> None:
    headers, body = gitea_push(tag="v1.2.0")
    assert gitea.parse(headers, body, internal) == Ignored(
        "tag push", event="push", repo="acme/shop", sha=SAMPLE_SHA)
    headers, body = gitea_push(tag="v1.2.0", deleted=True)  # a tag deletion is a push too
    result = gitea.parse(headers, body, internal)
    assert isinstance(result, Ignored) and result.reason == "tag push"


def test_branch_deletion_is_ignored(internal: Integration) -> None:
    headers, body = gitea_push(sha=ZERO_SHA)
    assert gitea.parse(headers, body, internal) == Ignored(
        "branch deletion", event="push", repo="acme/shop")
    data = json.loads(gitea_push()[1])
    data["deleted"] = True
    result = gitea.parse(headers, json.dumps(data).encode(), internal)
    assert isinstance(result, Ignored) and result.reason == "branch deletion"
    # Gitea >= 1.2x sends a "delete" event for a branch deletion
    headers, body = gitea_push(deleted=True)
    assert gitea.parse(headers, body, internal) == Ignored(
        "branch deletion", event="delete", repo="acme/shop")
    headers, body = gitea_delete(ref="v1", ref_type="tag")
    result = gitea.parse(headers, body, internal)
    assert isinstance(result, Ignored) and result.reason == "tag deletion"


def test_push_to_a_non_branch_ref_is_ignored(internal: Integration) -> None:
    data = json.loads(gitea_push()[1])
    data["ref"] = "refs/pull/7/head"
    result = gitea.parse({"X-Gitea-Event": "push"}, json.dumps(data).encode(), internal)
    assert isinstance(result, Ignored) and "not a branch" in result.reason


@pytest.mark.parametrize("event", ["create", "issues", "ping", "release", "status",
                                   "pull_request_approved", "pull_request_comment",
                                   "issue_comment"])
def test_unsupported_events_are_ignored(internal: Integration, event: str) -> None:
    assert gitea.parse({"X-Gitea-Event": event}, b"{}", internal) == Ignored(
        f"unsupported event {event!r}", event=event)


def test_missing_event_header_is_bad_request(internal: Integration) -> None:
    _, body = gitea_push()
    result = gitea.parse({"Content-Type": "application/json"}, body, internal)
    assert isinstance(result, BadRequest) and "X-Gitea-Event" in result.reason


@pytest.mark.parametrize(("body", "fragment"), [
    (b"", "empty body"),
    (b"{not json", "not valid JSON"),
    (b"\xff\xfe{", "JSON"),
    (b"[1, 2]", "expected an object"),
    (b"null", "expected an object"),
    (b'{"ref": "refs/heads/main", "after": "abc"}', "repository.full_name"),
    (b'{"ref": 5, "after": "abc", "repository": {"full_name": "a/b"}}',
     "'ref' must be a string"),
    (b'{"ref": "refs/heads/main", "repository": {"full_name": "a/b"}}', "'after'"),
    (b'{"ref": "refs/heads/main", "after": "", "repository": {"full_name": "a/b"}}',
     "'after' is empty"),
    (b'{"ref": "refs/heads/main", "after": "x", "repository": "a/b"}',
     "repository.full_name"),
    (b"[" * 100_000, "JSON"),
])
def test_malformed_push_is_bad_request(internal: Integration, body: bytes,
                                       fragment: str) -> None:
    result = gitea.parse({"X-Gitea-Event": "push"}, body, internal)
    assert isinstance(result, BadRequest), result
    assert fragment in result.reason


# -- parse: pull_request ---------------------------------------------------------------------
@pytest.mark.parametrize("action", ["opened", "synchronized", "reopened", "closed", "edited",
                                    "assigned", "label_updated"])
def test_parse_pull_request_actions(internal: Integration, action: str) -> None:
    headers, body = gitea_pull_request(number=12, action=action, head_branch="feature/x",
                                       head_sha="ab" * 20, base_branch="develop")
    assert gitea.parse(headers, body, internal) == Trigger(
        source="gitea", event="pull_request", integration="gitea-internal",
        workspace="default", repo="acme/shop", sha="ab" * 20, branch="feature/x",
        base_branch="develop", pr_number=12, action=action)


@pytest.mark.parametrize(("sample", "event_type"), [("opened", "pull_request"),
                                                    ("synchronized", "pull_request_sync")])
def test_parse_contract_pull_request_samples(internal: Integration, sample: str,
                                             event_type: str) -> None:
    body = load_bytes(PR_SAMPLES[sample])
    headers = gitea_headers("pull_request", event_type, body, SAMPLE_SECRET)
    assert headers["X-Gitea-Signature"] == CONTRACT_SIGNATURES[PR_SAMPLES[sample]]
    trigger = gitea.parse(headers, body, internal)
    assert isinstance(trigger, Trigger)
    assert (trigger.action, trigger.sha, trigger.branch, trigger.base_branch,
            trigger.pr_number, trigger.repo) == (sample, SAMPLE_PR_HEAD[sample],
                                                 SAMPLE_HEAD_BRANCH, "main", 7,
                                                 "acme/demo-services")


def test_synchronized_with_event_header_pull_request_sync(internal: Integration) -> None:
    """Should a proxy forward the event *type* as the event, it still parses."""
    _, body = gitea_pull_request(action="synchronized")
    trigger = gitea.parse({"X-Gitea-Event": "pull_request_sync"}, body, internal)
    assert isinstance(trigger, Trigger) and trigger.action == "synchronized"


def test_github_spelling_synchronize_is_normalised(internal: Integration) -> None:
    data = json.loads(gitea_pull_request()[1])
    data["action"] = "synchronize"
    trigger = gitea.parse({"X-GitHub-Event": "pull_request"}, json.dumps(data).encode(),
                          internal)
    assert isinstance(trigger, Trigger) and trigger.action == "synchronized"


@pytest.mark.parametrize(("patch", "fragment"), [
    ({"number": "7"}, "'number' must be an integer"),
    ({"number": True}, "'number' must be an integer"),
    ({"number": -1}, "must not be negative"),
    ({"pull_request": None}, "'pull_request'"),
    ({"action": None}, "'action'"),
    ({"pull_request": {"head": {"ref": "x"}, "base": {"ref": "main"}}}, "head.sha"),
])
def test_malformed_pull_request_is_bad_request(internal: Integration, patch: dict[str, object],
                                               fragment: str) -> None:
    data = json.loads(gitea_pull_request()[1])
    data.update(patch)
    result = gitea.parse({"X-Gitea-Event": "pull_request"}, json.dumps(data).encode(), internal)
    assert isinstance(result, BadRequest), result
    assert fragment in result.reason


def test_pr_number_falls_back_to_pull_request_number(internal: Integration) -> None:
    data = json.loads(gitea_pull_request(number=9)[1])
    del data["number"]
    trigger = gitea.parse({"X-Gitea-Event": "pull_request"}, json.dumps(data).encode(), internal)
    assert isinstance(trigger, Trigger) and trigger.pr_number == 9


# -- redelivery --------------------------------------------------------------------------
def test_redelivery_has_the_same_dedup_key(internal: Integration) -> None:
    first_headers, body = gitea_push(delivery="11111111-1111-4111-8111-111111111111")
    again_headers, again = gitea_push(delivery="22222222-2222-4222-8222-222222222222")
    assert body == again and first_headers["X-Gitea-Delivery"] != again_headers[
        "X-Gitea-Delivery"]
    first = gitea.parse(first_headers, body, internal)
    second = gitea.parse(again_headers, again, internal)
    assert isinstance(first, Trigger) and isinstance(second, Trigger)
    assert first.dedup_key() == second.dedup_key()
    other = gitea.parse(*gitea_push(sha="1" * 40), internal)
    assert isinstance(other, Trigger) and other.dedup_key() != first.dedup_key()


# -- never raises --------------------------------------------------------------------------
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=20,
)
FIELDS = ["ref", "after", "before", "deleted", "repository", "full_name", "action", "number",
          "pull_request", "head", "base", "sha", "ref_type"]


@st.composite
def shaped_bodies(draw: st.DrawFn) -> bytes:
    """JSON objects near the real shapes (known keys, random values), or raw bytes."""
    kind = draw(st.sampled_from(["raw", "json", "shaped", "real"]))
    if kind == "raw":
        return draw(st.binary(max_size=200))
    if kind == "json":
        return json.dumps(draw(json_values)).encode()
    if kind == "real":
        data = json.loads(draw(st.sampled_from([gitea_push()[1],
                                                gitea_pull_request()[1]])))
        key = draw(st.sampled_from(sorted(data)))
        data[key] = draw(json_values)
        return json.dumps(data).encode()
    keys = st.sampled_from(FIELDS)
    shaped = st.recursive(json_values, lambda c: st.dictionaries(keys, c, max_size=5),
                          max_leaves=15)
    return json.dumps(draw(st.dictionaries(keys, shaped, max_size=6))).encode()


header_maps = st.dictionaries(
    st.sampled_from(["X-Gitea-Event", "x-github-event", "X-Gitea-Signature",
                     "X-Hub-Signature-256", "Content-Type"]) | st.text(max_size=10),
    st.sampled_from(["push", "pull_request", "pull_request_sync", "delete", "sha256=", ""])
    | st.text(max_size=70),
    max_size=5,
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(headers=header_maps, body=shaped_bodies(), secret=st.text(max_size=20))
def test_never_raises(headers: dict[str, str], body: bytes, secret: str) -> None:
    snap = _snapshot()
    gi = snap.integrations[("default", "gitea-internal")]
    assert isinstance(gitea.verify(headers, body, SecretValue(secret)), bool)
    chosen = gitea.select_integration(snap, headers, body, workspace="default")
    assert isinstance(chosen, Rejected | Integration)
    named = gitea.select_integration(snap, headers, body, workspace="default", name=secret)
    assert isinstance(named, Rejected | Integration)
    result = gitea.parse(headers, body, gi)
    assert isinstance(result, Trigger | Ignored | BadRequest)
    if isinstance(result, Trigger):
        assert result.sha and result.repo
    form = gitea.parse(headers, b"payload=" + body, gi)
    assert isinstance(form, Trigger | Ignored | BadRequest)


@settings(max_examples=100, deadline=None)
@given(secret=st.text(min_size=1, max_size=30), body=st.binary(max_size=100))
def test_round_trip_signature_verifies(secret: str, body: bytes) -> None:
    headers = {"X-Gitea-Signature": gitea_signature(body, secret)}
    assert gitea.verify(headers, body, SecretValue(secret))


@cache
def _snapshot() -> Snapshot:
    return load_snapshot()
