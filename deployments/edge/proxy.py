"""JSON errors from Serve's own HTTP proxy.

A few answers never reach our ingress: the proxy's queue is full (503), its request timeout
passed (408), no route matched while the app deploys (404), a replica died mid-request (the
proxy sends nothing and the HTTP server a bare 500). Serve writes those as plain text, and
Weaviate parses every body as JSON before it looks at the status. This ASGI middleware,
which Serve installs in every proxy when serve.env sets
`RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=deployments.edge.proxy:middlewares`, rewrites any
non-JSON error body into `{"error": "<the proxy's text>"}`, with `Retry-After` on 503, and
answers a request the proxy dropped with a JSON 503. Responses that are already JSON (all of
ours) pass untouched.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson
from starlette.middleware import Middleware

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Seconds a client should wait before retrying a 503: ours and the proxy's alike.
RETRY_AFTER_S = 1


class JSONErrors:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start: Message | None = None
        chunks: list[bytes] = []
        sent = False

        async def rewrite(message: Message) -> None:
            nonlocal start, sent
            sent = True
            if message["type"] == "http.response.start":
                headers = dict(message.get("headers", []))
                is_json = headers.get(b"content-type", b"").startswith(b"application/json")
                if message["status"] >= 400 and not is_json:
                    start = message  # hold it until the whole body is known
                    return
            elif start is not None and message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
                if message.get("more_body", False):
                    return
                await send(_json_start(start, b"".join(chunks)))
                await send({"type": "http.response.body", "body": _json_body(b"".join(chunks))})
                return
            await send(message)

        try:
            await self.app(scope, receive, rewrite)
        except Exception:
            if sent:
                raise
        if not sent:
            # The proxy gave up on a request without answering it (the replica holding it
            # died): the HTTP server would send a bare text 500. Say what happened instead.
            text = b"a replica stopped while handling this request; retry"
            await send(_json_start({"type": "http.response.start", "status": 503}, text))
            await send({"type": "http.response.body", "body": _json_body(text)})


def _json_body(text: bytes) -> bytes:
    message = text.decode("utf-8", "replace").strip() or "error"
    return orjson.dumps({"error": message})


def _json_start(start: Message, text: bytes) -> Message:
    headers = [
        (k, v)
        for k, v in start.get("headers", [])
        if k.lower() not in (b"content-type", b"content-length")
    ]
    headers.append((b"content-type", b"application/json"))
    headers.append((b"content-length", str(len(_json_body(text))).encode()))
    if start["status"] == 503 and not any(k.lower() == b"retry-after" for k, _ in headers):
        headers.append((b"retry-after", str(RETRY_AFTER_S).encode()))
    return {**start, "headers": headers}


def middlewares() -> list[Middleware]:
    """What RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH names: Serve calls it in each proxy."""
    return [Middleware(JSONErrors)]
