"""The `img2vec` command, run as users run it: the installed console script, in a subprocess.
(Against the real service: tests/integration/test_cli_service.py.)"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import ClassVar

import numpy as np
import pyarrow.parquet as pq
import pytest

from img2vec.models.image import build_embedder
from img2vec.models.weights import SPECS, sha256_of
from tests.support.helpers import QuietHandler, loopback_server, run_cli, serving
from tests.support.images import encode


def test_help_explains_every_command():
    out = run_cli("--help")
    assert out.returncode == 0
    for command in ("embed", "check", "models", "weights", "serve", "bench"):
        assert command in out.stdout
        sub = run_cli(*command.split(), "--help")
        assert sub.returncode == 0 and "Usage: img2vec" in sub.stdout, command
    assert (
        "fetch" in run_cli("weights", "--help").stdout
        and "verify" in run_cli("weights", "--help").stdout
    )


def test_models_lists_the_registry():
    out = run_cli("models").stdout
    for name, spec in SPECS.items():
        assert name in out and f"dim {spec.dim}" in out and spec.native_preprocess in out


@pytest.fixture(scope="module")
def folder(tmp_path_factory, photos) -> Path:
    root = tmp_path_factory.mktemp("images")
    (root / "nested" / "deeper").mkdir(parents=True)
    (root / "chelsea.jpg").write_bytes(encode(photos["chelsea"], "JPEG"))
    (root / "nested" / "coffee.png").write_bytes(encode(photos["coffee"], "PNG"))
    (root / "nested" / "deeper" / "rocket.webp").write_bytes(encode(photos["rocket"], "WEBP"))
    (root / "nested" / "notes.txt").write_text("not an image")
    (root / ".hidden.jpg").write_bytes(encode(photos["coffee"], "JPEG"))
    return root


def expected_vectors(folder: Path, weights: Path) -> dict[str, np.ndarray]:
    from img2vec.inputs.decoding import open_image

    embedder = build_embedder(model="mobilenet_v2", weights=str(weights), device="cpu")
    return {
        str(p): embedder.embed([embedder.preprocess.to_array(open_image(p.read_bytes()))])[0]
        for p in (
            folder / "chelsea.jpg",
            folder / "nested/coffee.png",
            folder / "nested/deeper/rocket.webp",
        )
    }


@pytest.mark.parametrize("fmt", ["parquet", "jsonl", "npy"])
def test_embed_a_folder_in_process(folder, tmp_path, mobilenet_v2_file, fmt):
    out = tmp_path / f"vectors.{fmt}"
    result = run_cli(
        "embed", str(folder), "--out", str(out), "--model", "mobilenet_v2",
        "--weights", str(mobilenet_v2_file), "--device", "cpu", "--batch-size", "2",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (
        f"skipped {folder / 'nested/notes.txt'}: image bytes are not a recognised" in result.stderr
    )
    assert "3 vectorized, 1 skipped" in result.stderr
    if fmt == "parquet":
        table = pq.read_table(out).to_pydict()
        rows = dict(zip(table["path"], table["vector"], strict=True))
        assert set(table["dim"]) == {1280}
    elif fmt == "jsonl":
        lines = [json.loads(line) for line in out.read_text().splitlines()]
        rows = {line["path"]: line["vector"] for line in lines}
    else:
        paths = Path(str(out) + ".paths.txt").read_text().splitlines()
        rows = dict(zip(paths, np.load(out), strict=True))
    expected = expected_vectors(folder, mobilenet_v2_file)
    assert set(rows) == set(expected)  # paths kept; hidden files and the text file left out
    for path, vector in rows.items():
        np.testing.assert_allclose(vector, expected[path], rtol=1e-4, atol=1e-5)


def test_embed_with_nothing_readable_fails(tmp_path):
    (tmp_path / "a.txt").write_text("no")
    result = run_cli(
        "embed", str(tmp_path), "--out", str(tmp_path / "v.jsonl"), "--weights", "random"
    )
    assert result.returncode == 1 and "no image could be vectorized" in result.stderr


class _FlakyService(QuietHandler):
    """Answers /vectors 503 (Retry-After: 0) twice per image, then a vector."""

    seen: ClassVar[dict[str, int]] = {}
    lock = threading.Lock()

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with self.lock:
            n = self.seen[body["image"]] = self.seen.get(body["image"], 0) + 1
        if n <= 2:
            self._send(503, {"error": "busy"}, {"Retry-After": "0"})
        else:
            self._send(200, {"id": body["id"], "vector": [float(n), 1.0], "dim": 2})

    def _send(self, status: int, body: dict, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)


def test_embed_against_a_service_retries_503s_after_their_retry_after(folder, tmp_path):
    out = tmp_path / "v.jsonl"
    with loopback_server(type("Flaky", (_FlakyService,), {"seen": {}})) as url:
        result = run_cli("embed", str(folder), "--out", str(out), "--url", url, "--retries", "3")
        assert result.returncode == 0, result.stderr
        rows = [json.loads(line) for line in out.read_text().splitlines()]
        # Every file was sent three times (twice refused); the non-image too, whose 503s
        # this stub cannot tell apart.
        assert len(rows) == 4 and all(r["vector"] == [3.0, 1.0] for r in rows)
    with loopback_server(type("Flaky", (_FlakyService,), {"seen": {}})) as url:
        result = run_cli("embed", str(folder), "--out", str(out), "--url", url, "--retries", "1")
        assert result.returncode == 1 and "gave up after 2 attempts: 503: busy" in result.stderr


def test_weights_fetch_from_a_mirror_and_verify(tmp_path, mobilenet_v2_file):
    env = {"TORCH_HOME": str(tmp_path / "torch")}
    with serving(mobilenet_v2_file.read_bytes()) as (url, _):
        fetched = run_cli("weights", "fetch", "mobilenet_v2", "--from", url, env=env)
    assert fetched.returncode == 0, fetched.stderr
    cached = tmp_path / "torch/hub/checkpoints/mobilenet_v2-b0353104.pth"
    assert sha256_of(cached) == SPECS["mobilenet_v2"].sha256 and "(verified)" in fetched.stdout
    verified = run_cli("weights", "verify", "mobilenet_v2", env=env)
    assert verified.returncode == 0 and verified.stdout.startswith("OK")
    # A local file works as the source too; a wrong file is refused and nothing is cached.
    local = run_cli("weights", "fetch", "mobilenet_v2", "--from", str(mobilenet_v2_file),
                env={"TORCH_HOME": str(tmp_path / "other")})  # fmt: skip
    assert local.returncode == 0, local.stderr
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not the weights")
    refused = run_cli("weights", "fetch", "mobilenet_v2", "--from", str(bad),
                  env={"TORCH_HOME": str(tmp_path / "third")})  # fmt: skip
    assert refused.returncode == 1 and "must have sha256" in refused.stderr
    missing = run_cli("weights", "verify", "resnet50", env=env)
    assert missing.returncode == 1 and "missing" in missing.stdout
    wrong = run_cli("weights", "verify", "resnet50", "--file", str(mobilenet_v2_file))
    assert wrong.returncode == 1 and "is not the published" in wrong.stdout


class _BrokenService(QuietHandler):
    """Everything Weaviate trips on: readiness 200, a redirect on /vectors/, plain-text
    errors, a vector of the wrong length."""

    def do_GET(self) -> None:
        self.send_response(200 if "ready" in self.path else 204)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers["Content-Length"]))
        if self.path == "/vectors/":
            self.send_response(307)
            self.send_header("Location", "/vectors")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        try:
            body = json.loads(raw)
            data, status, ctype = (
                json.dumps({"id": body["id"], "vector": [0.5] * 10, "dim": 10}),
                200,
                "application/json",
            )
            if body["image"] == "aGVsbG8" or len(body["image"]) < 20:
                data, status, ctype = "bad image", 500, "text/plain"
        except ValueError:
            data, status, ctype = "Internal Server Error", 500, "text/plain"
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data.encode())


def test_check_reports_what_weaviate_would_trip_on(tmp_path):
    with loopback_server(_BrokenService) as url:
        result = run_cli("check", url, "--timeout", "2")
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    failed = {line.split(":")[0].split(None, 1)[1] for line in lines if line.startswith("FAIL")}
    assert "ready (within Weaviate's 500 ms)" in failed
    assert "POST /vectors/ (trailing slash) answered directly" in failed
    assert "vector length" in failed
    assert "error for invalid base64 is JSON" in failed
    assert any(line.startswith("PASS  live") for line in lines)
    assert "redirects (307)" in result.stdout
