"""What several test modules share, so that no test module imports another: loopback HTTP
servers, the `img2vec` command, load kept in flight while a service stops, crafted inputs."""

from __future__ import annotations

import contextlib
import http.client
import http.server
import json
import os
import struct
import subprocess
import sys
import threading
import time
import urllib.parse
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from img2vec.models.weights import SPECS
from tests.support.images import b64, encode, photo

IMG2VEC = str(Path(sys.executable).with_name("img2vec"))


class QuietHandler(http.server.BaseHTTPRequestHandler):
    """A request handler that writes no line per request to the test's output."""

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def loopback_server(handler: type[http.server.BaseHTTPRequestHandler]) -> Iterator[str]:
    """A real threaded HTTP server on a free loopback port; yields its base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def run_cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """The installed `img2vec` console script, as a user runs it."""
    return subprocess.run(
        [IMG2VEC, *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
        cwd=cwd,
    )


def in_flight(
    url: str, n: int, timeout_s: float = 90
) -> tuple[list[threading.Thread], list[object]]:
    """`n` photos posted to `url`/vectors at once, one connection each, still being answered
    when this returns: each thread appends (status, content type, the JSON body's "error" or
    "") or the name of the exception that ended it.

    Plain `http.client`, every connection opened before any body is sent: with one
    `httpx.post` per thread (a client and an SSL context each) 160 threads took 6 s to start
    on 2 cores, and a fast model had answered the first ones before the last were sent:
    "in flight" was then a trickle (the launcher's drain tests counted 0 in flight)."""
    body = json.dumps({"id": "in-flight", "image": b64(encode(photo("rocket"), "JPEG"))})
    target = urllib.parse.urlsplit(url)
    path = target.path.rstrip("/") + "/vectors"
    results: list[object] = []
    connected, go = threading.Semaphore(0), threading.Event()

    def one() -> None:
        conn = http.client.HTTPConnection(target.hostname, target.port, timeout=timeout_s)
        try:
            try:
                conn.connect()
                conn.putrequest("POST", path)
                conn.putheader("Content-Length", str(len(body)))
                conn.endheaders()
            finally:
                connected.release()
            go.wait()
            conn.send(body.encode())
            r = conn.getresponse()
            answer, error = r.read(), ""
            if r.status != 200:
                with contextlib.suppress(ValueError, AttributeError):
                    error = json.loads(answer).get("error", "")
            results.append((r.status, r.getheader("content-type", ""), error))
        except (OSError, http.client.HTTPException) as exc:
            results.append(type(exc).__name__)
        finally:
            conn.close()

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for _ in threads:
        connected.acquire()
    go.set()
    return threads, results


def png_header_claiming(width: int, height: int) -> bytes:
    """A tiny, valid-looking PNG whose header claims a huge size (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


class _Files(QuietHandler):
    """Serves `payload` slowly enough to show progress; counts GETs."""

    payload = b""
    gets = 0
    chunk_delay_s = 0.0

    def do_GET(self) -> None:
        type(self).gets += 1
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.payload)))
        self.end_headers()
        for i in range(0, len(self.payload), 1 << 20):
            self.wfile.write(self.payload[i : i + (1 << 20)])
            time.sleep(self.chunk_delay_s)


@contextlib.contextmanager
def serving(payload: bytes, chunk_delay_s: float = 0.0) -> Iterator[tuple[str, type[_Files]]]:
    """A real HTTP server on loopback serving `payload`; yields its URL and handler class."""
    handler = type("Handler", (_Files,), {"payload": payload, "chunk_delay_s": chunk_delay_s})
    with loopback_server(handler) as base:
        yield f"{base}/{SPECS['mobilenet_v2'].weights_file}", handler


def augmented(img: Image.Image, rng: np.random.Generator) -> list[Image.Image]:
    """Four altered copies of a photo (cropped, mirrored, colour-jittered, shrunk): queries
    that should still find their original (tests/integration/test_retrieval.py,
    bench/drift.py's recall@1)."""
    w, h = img.size

    def crop(frac: float) -> Image.Image:
        cw, ch = int(w * frac), int(h * frac)
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        return img.crop((x, y, x + cw, y + ch))

    jitter = ImageEnhance.Color(ImageEnhance.Brightness(img).enhance(rng.uniform(0.7, 1.3)))
    return [
        crop(0.8),
        ImageOps.mirror(img),
        jitter.enhance(rng.uniform(0.6, 1.4)),
        ImageOps.mirror(crop(0.85)).resize((w // 2, h // 2)),
    ]
