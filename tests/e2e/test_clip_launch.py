"""multi2vec-clip as a user runs it: `make serve-clip` (the launcher on serve_config.clip.yaml,
serve.env applied, HAProxy in front) with IMG2VEC_WEIGHTS naming a model directory. It answers
Weaviate's CLIP requests, and SIGTERM under load drains them: every request in flight is
answered, the launcher exits 0 and leaves nothing running."""

from __future__ import annotations

import json
import signal
import threading
from collections import Counter

import httpx

from bench.processes import wait_ready
from tests.e2e.launcher import ROOT, cleanup, launch_cmd, launcher_env, start
from tests.support.images import b64, encode, photo
from tests.support.service import LOOPBACK, free_port

CONFIG = ROOT / "serve_config.clip.yaml"


def test_the_clip_config_serves_vectorize_and_drains_on_sigterm(tmp_path, clip_dir):
    port = free_port()
    log = tmp_path / "launch.log"
    env = launcher_env(IMG2VEC_WEIGHTS=str(clip_dir), IMG2VEC_TORCH_THREADS="1")
    proc, marker = start(launch_cmd(port, free_port(), CONFIG), env, log)
    url = f"http://{LOOPBACK}:{port}"
    body = json.dumps({"texts": ["a cup of coffee"], "images": [b64(encode(photo("coffee")))]})
    results: list[object] = []

    def one() -> None:
        try:
            r = httpx.post(url + "/vectorize", content=body, timeout=60)
            results.append(r.status_code)
        except httpx.HTTPError as exc:
            results.append(type(exc).__name__)

    try:
        wait_ready(url, timeout_s=240, proc=proc, log=log)
        r = httpx.post(url + "/vectorize", content=body, timeout=60)
        assert r.status_code == 200 and len(r.json()["imageVectors"][0]) == 32, r.text
        assert httpx.get(url + "/meta").json()["protocol"] == "multi2vec-clip"
        threads = [threading.Thread(target=one) for _ in range(24)]
        for t in threads:
            t.start()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
        for t in threads:
            t.join(60)
    finally:
        left = cleanup(proc, marker)
    statuses = Counter(results)
    print(f"SIGTERM with 24 objects on their way: {dict(statuses)}, exit {code}")
    assert code == 0, log.read_text()[-3000:]
    assert set(statuses) <= {200, 503} and len(results) == 24, statuses
    assert left == [], f"processes left behind: {left}"
