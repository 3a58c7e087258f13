"""A real Ray Serve instance on loopback, and helpers to deploy img2vec into it.

One Ray start costs ~16 s on two cores, so a test package shares one instance
(see the `serve_base` fixtures) and deploys the applications it needs into it.
"""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

from bench.processes import LOOPBACK, free_port, wait_ready

ROOT = Path(__file__).resolve().parents[2]


def proxy_request_timeout_s() -> float:
    """Serve's own backstop (`http_options.request_timeout_s`), as serve_config.yaml sets it:
    the bound for a request that waits in the proxy while no ingress replica is alive."""
    import yaml

    config = yaml.safe_load((ROOT / "serve_config.yaml").read_text())
    return float(config["http_options"]["request_timeout_s"])


__all__ = [
    "LOOPBACK",
    "ServeInstance",
    "deploy",
    "free_port",
    "ray_serve",
    "rss_mb",
    "small_app_config",
    "wait_ready",
]


@dataclass(frozen=True)
class ServeInstance:
    base_url: str
    tmpdir: Path  # TMPDIR of every Ray worker this instance starts: it should stay empty
    marker: str  # IMG2VEC_TEST_RUN=<marker> is in those workers' environment
    metrics_url: str  # this node's Prometheus endpoint

    def replica_pids(self, app: str | None = None, deployment: str | None = None) -> list[int]:
        """PIDs of the Serve replicas of this instance (found by the marker we set), of one
        application and deployment if named (Ray titles them `ServeReplica:<app>:<name>`)."""
        title = "ServeReplica" + (f":{app}" if app else "")
        title += f":{deployment}" if deployment else ""
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                environ = (entry / "environ").read_bytes().split(b"\0")
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if f"IMG2VEC_TEST_RUN={self.marker}".encode() in environ and title.encode() in cmdline:
                pids.append(int(entry.name))
        return pids

    def replica_pid(self, app: str, deployment: str, timeout_s: float = 60) -> int:
        """The one live replica of `deployment` in `app` (waiting for it to exist)."""
        deadline = time.monotonic() + timeout_s
        while True:
            pids = self.replica_pids(app, deployment)
            if len(pids) == 1:
                return pids[0]
            if time.monotonic() > deadline:
                raise TimeoutError(f"{app}/{deployment}: replicas {pids}, expected one")
            time.sleep(0.5)


def small_app_config(name: str, route_prefix: str, deployments: list[dict]) -> object:
    """What `serve deploy serve_config.yaml` sends, for one application of random-weight
    MobileNetV2 on one torch thread (cheap to start), with `deployments` overriding."""
    from ray.serve.schema import ServeDeploySchema

    args = {"model": "mobilenet_v2", "weights": "random", "torch_threads": 1}
    return ServeDeploySchema.model_validate(
        {
            "applications": [
                {
                    "name": name,
                    "route_prefix": route_prefix,
                    "import_path": "deployments.app:build_app",
                    "args": args,
                    "deployments": deployments,
                }
            ]
        }
    )


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


@contextmanager
def ray_serve(num_cpus: int = 16) -> Iterator[ServeInstance]:
    """Start Ray (a fresh local instance) and Serve's HTTP proxy on a loopback port;
    shut both down afterwards.

    `num_cpus` is Ray's logical count, not the machine's: every replica asks for one
    CPU by default, and a test package runs several applications of two deployments
    side by side. Too few, and the last application's replicas wait forever for a
    CPU that is never freed."""
    import ray
    from ray import serve

    port = free_port()
    marker = uuid.uuid4().hex
    # As serve.env does: Serve's proxy (started below, inheriting this environment) writes its
    # own few errors as JSON too.
    proxy_env = {"RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH": "deployments.edge.proxy:middlewares"}
    with (
        tempfile.TemporaryDirectory(prefix="img2vec-workers-tmp-") as tmpdir,
        tempfile.TemporaryDirectory(prefix="img2vec-engines-") as engines,
        mock.patch.dict(os.environ, proxy_env),
    ):
        metrics_port = free_port()
        ray.init(
            address="local",
            num_cpus=num_cpus,
            include_dashboard=False,
            object_store_memory=512 * 1024 * 1024,
            log_to_driver=os.environ.get("IMG2VEC_TEST_RAY_LOGS") == "1",
            runtime_env={
                "env_vars": {
                    "TMPDIR": tmpdir,
                    "IMG2VEC_TEST_RUN": marker,
                    # This run's own converted models (img2vec/models/engines.py), not the user's.
                    "IMG2VEC_ENGINE_CACHE": engines,
                }
            },
            _metrics_export_port=metrics_port,
            # Metrics reach the endpoint within a second or two instead of ten.
            _system_config={"metrics_report_interval_ms": 1000},
        )
        try:
            serve.start(
                http_options={
                    "host": LOOPBACK,
                    "port": port,
                    "request_timeout_s": proxy_request_timeout_s(),
                }
            )
            yield ServeInstance(
                f"http://{LOOPBACK}:{port}",
                Path(tmpdir),
                marker,
                f"http://{LOOPBACK}:{metrics_port}/metrics",
            )
        finally:
            serve.shutdown()
            ray.shutdown()


def deploy(
    name: str,
    route_prefix: str,
    env: Mapping[str, str],
    base_url: str,
    builder: str = "build_app",
) -> str:
    """Build the app exactly as `serve run` would (IMG2VEC_* variables read by the
    builder, `builder` of deployments/app.py: build_app or build_clip_app), run it under
    `route_prefix`, and wait until it reports ready."""
    from ray import serve

    from deployments import app as apps

    with mock.patch.dict(os.environ, dict(env)):
        application = getattr(apps, builder)(None)
    serve.run(application, name=name, route_prefix=route_prefix)
    url = base_url + route_prefix.rstrip("/")
    wait_ready(url)
    return url
