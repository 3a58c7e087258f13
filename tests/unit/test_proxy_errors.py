"""deployments/edge/proxy.py: the middleware Serve's proxy runs (via serve.env) so that the few
answers the proxy writes itself are JSON too. Driven as a plain ASGI app."""

from __future__ import annotations

import asyncio
import json

from deployments.edge.proxy import JSONErrors


def call(app) -> tuple[int, dict[bytes, bytes], bytes]:
    sent: list[dict] = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    asyncio.run(JSONErrors(app)({"type": "http", "method": "POST", "path": "/x"}, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], dict(start["headers"]), body


def replying(status: int, content_type: bytes, *chunks: bytes):
    async def app(scope, receive, send):
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", content_type)],
            }
        )
        for i, chunk in enumerate(chunks):
            await send(
                {"type": "http.response.body", "body": chunk, "more_body": i < len(chunks) - 1}
            )

    return app


def test_a_plain_text_503_becomes_json_with_retry_after():
    status, headers, body = call(
        replying(503, b"text/plain", b"Request dropped ", b"(backpressure)")
    )
    assert status == 503
    assert headers[b"content-type"] == b"application/json" and headers[b"retry-after"] == b"1"
    assert json.loads(body) == {"error": "Request dropped (backpressure)"}
    assert int(headers[b"content-length"]) == len(body)


def test_other_plain_errors_become_json_without_retry_after():
    status, headers, body = call(
        replying(408, b"text/plain; charset=utf-8", b"timed out after 30s")
    )
    assert status == 408 and b"retry-after" not in headers
    assert json.loads(body) == {"error": "timed out after 30s"}


def test_json_and_successes_pass_untouched():
    for app, expected in (
        (replying(503, b"application/json", b'{"error": "ours"}'), b'{"error": "ours"}'),
        (replying(200, b"text/plain", b"ok"), b"ok"),
    ):
        assert call(app)[2] == expected


def test_a_request_the_proxy_dropped_gets_a_json_503():
    async def silent(scope, receive, send):
        return  # what the proxy does when the replica holding the request died

    status, headers, body = call(silent)
    assert status == 503 and headers[b"retry-after"] == b"1"
    assert "replica stopped" in json.loads(body)["error"]
