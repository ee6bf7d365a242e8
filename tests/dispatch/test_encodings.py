"""Request bodies with a ``Content-Encoding``: gzip and deflate are decoded (and signatures
checked on the decoded JSON); any other coding, ``br`` first, is a JSON 400 with a reason
on the webhook routes (never a dropped connection or aiohttp's plain-text answer)."""

from __future__ import annotations

import gzip
import zlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.dispatch.service import serve
from tests.dispatch.test_webhooks_inprocess import ARGO_SECRET, GITEA_SECRET, Env, start
from tests.testing.webhook_payloads import argocd_flat, argocd_headers, gitea_push

SHA = "2" * 40


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    async with serve(gated=True) as svc:
        e, close = await start(tmp_path, svc)
        yield e
        await close()


@pytest.fixture
async def small_cap_env(tmp_path: Path) -> AsyncIterator[Env]:
    async with serve(gated=True) as svc:
        e, close = await start(tmp_path, svc, max_body_bytes=4096)
        yield e
        await close()



@pytest.mark.parametrize("coding", ["br", "zstd", "x-unknown", "gzip, br"])
@pytest.mark.parametrize("path", ["/api/v1/webhooks/gitea", "/api/v1/webhooks/argocd",
                                  "/api/v1/webhooks/config"])
async def test_unsupported_coding_is_a_json_400_with_a_reason(env: Env, coding: str,
                                                              path: str) -> None:
    headers, _ = gitea_push(sha=SHA, secret=GITEA_SECRET)
    resp = await env.client.post(path, data=b"\x1b\x00\x00 not json",
                                 headers={**headers, "Content-Encoding": coding})
    assert resp.status == 400
    answer = await resp.json()
    assert "unsupported Content-Encoding" in answer["error"]
    assert coding.split(",")[-1].strip() in answer["error"]
    # the connection is still usable: the next delivery on the same client is answered
    status, accepted = await env.push(sha=SHA)
    assert status == 202, accepted


@pytest.mark.parametrize("compress", [gzip.compress, zlib.compress,
                                      lambda b: zlib.compress(b)[2:-4]],  # raw deflate
                         ids=["gzip", "deflate", "raw-deflate"])
async def test_gzip_and_deflate_bodies_are_decoded(env: Env, compress: object) -> None:
    headers, body = gitea_push(sha=SHA, secret=GITEA_SECRET)  # signed over the JSON
    coding = "gzip" if compress is gzip.compress else "deflate"
    packed = compress(body)  # type: ignore[operator]
    resp = await env.client.post("/api/v1/webhooks/gitea", data=packed,
                                 headers={**headers, "Content-Encoding": coding})
    assert resp.status == 202, await resp.text()
    assert len((await resp.json())["runs"]) == 1
    argo = argocd_flat(app_name="testmesh-shop", revision=SHA)
    resp = await env.client.post("/api/v1/webhooks/argocd", data=gzip.compress(argo),
                                 headers={**argocd_headers(ARGO_SECRET),
                                          "Content-Encoding": "gzip"})
    assert resp.status in (200, 202), await resp.text()


async def test_identity_is_no_coding(env: Env) -> None:
    headers, body = gitea_push(sha=SHA, secret=GITEA_SECRET)
    resp = await env.client.post("/api/v1/webhooks/gitea", data=body,
                                 headers={**headers, "Content-Encoding": "identity"})
    assert resp.status == 202


async def test_corrupt_gzip_is_400(env: Env) -> None:
    headers, _ = gitea_push(sha=SHA, secret=GITEA_SECRET)
    truncated = gzip.compress(b'{"ref": "refs/heads/main"}' * 50)[:-12]
    for data in (b"not compressed", truncated):
        resp = await env.client.post("/api/v1/webhooks/gitea", data=data,
                                     headers={**headers, "Content-Encoding": "gzip"})
        assert resp.status == 400
        assert "could not decode" in (await resp.json())["error"]


async def test_decoded_size_is_capped(small_cap_env: Env) -> None:
    headers, _ = gitea_push(sha=SHA, secret=GITEA_SECRET)
    bomb = gzip.compress(b" " * (1024 * 1024))  # about 1 KiB compressed, 1 MiB decoded
    resp = await small_cap_env.client.post("/api/v1/webhooks/gitea", data=bomb,
                                           headers={**headers, "Content-Encoding": "gzip"})
    assert resp.status == 413
    assert "once decoded" in (await resp.json())["error"]


async def test_other_routes_answer_415_for_an_unsupported_coding(env: Env) -> None:
    resp = await env.client.post("/api/v1/workspaces/default/suites/shop-smoke/run",
                                 data=b"{}", headers={"Content-Encoding": "br",
                                                      "Authorization": "Bearer x"})
    assert resp.status == 415
    assert "unsupported Content-Encoding" in (await resp.json())["error"]
