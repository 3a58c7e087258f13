"""`python -m tests.support.request_files ROUTE`: the project's files whose code runs for one
request to ROUTE (`/vectors` or `/vectorize`), printed as a JSON list.

The whole application runs in this one process, in Serve's local testing mode (every
deployment's replica here, each on its own event loop; no HTTP server: a route is called
through the ingress's handle with a Starlette request), on a local Ray of its own (for the
metrics) in a temporary directory. A profiler on every thread notes each function of ours that
is called or resumed. What the replicas do in the background (readiness probes, drain reports,
metrics refreshes) is noted while idle first, and those functions are left out; a route is
traced on its fourth request, once whatever happens once has happened. One route a process:
`@serve.batch` keeps one queue per decorated function, bound to the event loop of its first
call, and the two model deployments share that function (HostedModel.gather); in Serve they
never share a process."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import sys
import tempfile
import threading
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
OURS = (str(ROOT / "img2vec") + os.sep, str(ROOT / "deployments") + os.sep)
IDLE_S = 3.0  # longer than every background loop's period (the readiness probe's is 1 s)


class Tracer:
    """The (file, function) pairs of ours called or resumed, on any thread, while `on`."""

    def __init__(self) -> None:
        self.on = False
        self.seen: set[tuple[str, str]] = set()

    def __call__(self, frame: Any, event: str, arg: Any) -> None:
        if self.on and event == "call" and frame.f_code.co_filename.startswith(OURS):
            path = os.path.relpath(frame.f_code.co_filename, ROOT)
            self.seen.add((path, frame.f_code.co_qualname))

    def during(self, step: Callable[[], object]) -> set[tuple[str, str]]:
        self.seen, self.on = set(), True
        try:
            step()
        finally:
            self.on = False
        return self.seen


def starlette_request(path: str, body: bytes) -> Any:
    from starlette.requests import Request

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    headers = [(b"content-length", str(len(body)).encode())]
    scope = {"type": "http", "method": "POST", "path": path, "headers": headers}
    return Request({**scope, "query_string": b""}, receive)


def jpeg_base64() -> str:
    pixels = np.random.default_rng(0).integers(0, 256, (480, 640, 3), np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG")
    return base64.b64encode(out.getvalue()).decode()


def traced(tracer: Tracer, app: Any, method: str, path: str, body: dict) -> list[str]:
    """The files of the functions one request runs and the idle replicas do not."""
    from ray import serve

    handle = serve.run(app, name=method, route_prefix=f"/{method}", _local_testing_mode=True)
    data = json.dumps(body).encode()

    def send() -> None:
        response = getattr(handle, method).remote(starlette_request(path, data)).result()
        assert response.status_code == 200, response.body

    deadline = time.monotonic() + 120
    while handle.ready.remote().result().status_code != 204:  # the CLIP ingress learns inputs
        assert time.monotonic() < deadline, "the application did not become ready"
        time.sleep(0.2)
    for _ in range(3):
        send()
    idle = tracer.during(lambda: time.sleep(IDLE_S))
    request = tracer.during(send)
    return sorted({file for file, function in request - idle})


def main(route: str) -> None:
    tracer = Tracer()
    sys.setprofile(tracer)
    threading.setprofile(tracer)
    import ray
    from ray import serve

    # Outside a Serve replica there is no replica context; the deployments ask theirs for
    # their replica's id (logs, metrics) and @serve.batch for its deployment's limit.
    context = types.SimpleNamespace(
        replica_id=types.SimpleNamespace(unique_id="local"),
        app_name="local",
        deployment="local",
        _deployment_config=types.SimpleNamespace(max_ongoing_requests=512),
    )
    serve.get_replica_context = lambda: context
    os.environ["IMG2VEC_WEIGHTS"] = "random"
    from deployments.app import build_app, build_clip_app

    image = jpeg_base64()
    apps = {
        "/vectors": (build_app, "vectors", {"id": "a", "image": image}),
        "/vectorize": (
            build_clip_app,
            "vectorize",
            {"texts": ["a photo of a cat"], "images": [image]},
        ),
    }
    build, method, body = apps[route]
    tmp = tempfile.mkdtemp(prefix="img2vec-files-")
    ray.init(address="local", num_cpus=2, include_dashboard=False, _temp_dir=tmp)
    try:
        files = traced(tracer, build({}), method, route, body)
    finally:
        sys.setprofile(None)
        threading.setprofile(None)
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(files))
    sys.stdout.flush()
    os._exit(0)  # the local replicas' event loops and pools end with the process


if __name__ == "__main__":
    main(sys.argv[1])
