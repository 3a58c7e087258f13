"""A multi-node Ray cluster on loopback with the RayService's settings, for the cluster tests
(tests/cluster) and the scaling benchmark (`python -m bench.scaling --rayservice`).

A head that offers no CPU or GPU to replicas (as in cluster/kuberay/rayservice.yaml), GPU
worker nodes that declare a logical GPU, and Ray's autoscaler with its fake multi-node
provider, which starts and stops worker "nodes" as local processes. It runs the RayService's
own serveConfigV2, adapted only where one machine differs from a cluster (`cluster_config`).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import yaml

from bench.processes import (
    LOOPBACK,
    MARKER_VAR,
    free_port,
    marked_pids,
    own_ray_tmpdir,
    wait_ready,
)

ROOT = Path(__file__).resolve().parents[1]

RAY = str(Path(sys.executable).with_name("ray"))
GPU_NODE = "gpu_node"
# Short delays patched in, so that scaling happens within a test's time.
FAST = {
    "RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.5",
    "RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.5",
    "RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.2",
    "AUTOSCALER_UPDATE_INTERVAL_S": "1",
    "RAY_FAKE_CLUSTER": "1",
}


def autoscaler_config(gcs_port: int) -> dict:
    """Ray's fake multi-node provider; the head and worker shapes of the RayService."""
    return {
        "cluster_name": "img2vec-test",
        "max_workers": 2,
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": 0.1,  # KubeRay's idleTimeoutSeconds, shortened
        "provider": {
            "type": "fake_multinode",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
            "gcs_address": f"{LOOPBACK}:{gcs_port}",
        },
        "auth": {"ssh_user": "ubuntu"},
        "docker": {},
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0},
            # One logical GPU per worker, like the RayService's GPU group; minReplicas 1.
            GPU_NODE: {
                "resources": {"CPU": 8, "GPU": 1},
                "node_config": {},
                "min_workers": 1,
                "max_workers": 2,
            },
        },
        "head_node_type": "ray.head.default",
        **{key: [] for key in ("cluster_synced_files", "rsync_exclude", "rsync_filter")},
        **{
            key: []
            for key in (
                "initialization_commands",
                "setup_commands",
                "head_setup_commands",
                "worker_setup_commands",
                "head_start_ray_commands",
                "worker_start_ray_commands",
            )
        },
        "file_mounts": {},
        "file_mounts_sync_continuously": False,
    }


def cluster_config(port: int) -> dict:
    """The RayService's serveConfigV2, with what differs on one machine: HTTP on a loopback
    port and a proxy on the head only (nodes here share one network namespace, so proxies on
    every node would collide on one port), random weights (no download), and the Embedder's
    autoscaling made quick to react."""
    manifest = yaml.safe_load((ROOT / "cluster" / "kuberay" / "rayservice.yaml").read_text())
    config = yaml.safe_load(manifest["spec"]["serveConfigV2"])
    config["http_options"] = {**config["http_options"], "host": LOOPBACK, "port": port}
    config["proxy_location"] = "HeadOnly"
    (app,) = config["applications"]
    app["args"].update(weights="random", torch_threads=1, unready_after_s=60)
    deployments = {d["name"]: d for d in app["deployments"]}
    deployments["Ingress"]["autoscaling_config"].update(min_replicas=1, max_replicas=1)
    deployments["Ingress"]["ray_actor_options"]["num_cpus"] = 1
    deployments["Embedder"]["autoscaling_config"].update(
        min_replicas=1,
        max_replicas=2,
        # Each ingress replica keeps at most 2 calls in flight to the model (its client
        # groups what waits meanwhile), so the model sees 2 ongoing calls from the one
        # ingress here however many clients there are: 1 per replica makes that want two.
        target_ongoing_requests=1,
        upscale_delay_s=1,
        downscale_delay_s=5,
        # 2 s: four of the 0.5 s metric pushes that FAST sets. Ray warns that it is not above
        # `metrics_interval_s`, a deprecated field whose default (10 s) is not the push rate.
        look_back_period_s=2,
    )
    deployments["Embedder"]["user_config"]["max_batch_size"] = 4
    return config


def auth_env(token: str | None) -> dict[str, str]:
    """Ray's token authentication as KubeRay's `authOptions: {mode: token}` sets it on every
    pod (RAY_AUTH_MODE and RAY_AUTH_TOKEN), or off (None)."""
    if token is None:
        return {"RAY_AUTH_MODE": "disabled"}
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}


class FakeCluster:
    """Stopped by signals (there is no `ray stop` that ends only this cluster), so its head's
    record (`ray_current_cluster`) would outlive it: it lives in a Ray temp dir of its own."""

    def __init__(
        self, tmp: Path, ray_tmp: str, env: dict[str, str] | None = None, token: str | None = None
    ) -> None:
        self.marker = uuid.uuid4().hex
        self.gcs_port = free_port()
        dashboard_port = free_port()
        self.dashboard_url = f"http://{LOOPBACK}:{dashboard_port}"
        self.token = token
        config = tmp / "autoscaler.json"
        config.write_text(json.dumps(autoscaler_config(self.gcs_port)))
        self.env = {**os.environ, **(env or {}), **FAST, **auth_env(token)}
        self.env.update({MARKER_VAR: self.marker, "RAY_TMPDIR": ray_tmp})
        head = [RAY, "start", "--head", f"--node-ip-address={LOOPBACK}", f"--port={self.gcs_port}"]
        head += ["--num-cpus=0", "--num-gpus=0", f"--autoscaling-config={config}"]
        # The dashboard (its job API) on loopback, as the RayService's head serves it to the
        # cluster; the Prometheus and Grafana parts stay off.
        head += [f"--dashboard-host={LOOPBACK}", f"--dashboard-port={dashboard_port}"]
        head += ["--disable-usage-stats"]
        subprocess.run(head, env=self.env, check=True, capture_output=True)

    def stop(self) -> list[int]:
        """Everything this cluster started (found by our marker, never by name)."""
        for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 1)):
            pids = marked_pids(self.marker)
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            time.sleep(wait)
        return marked_pids(self.marker)


def deploy(config: dict) -> None:
    """What `serve deploy` does, from this driver (no REST round trip through the dashboard)."""
    from ray.serve._private.api import serve_start
    from ray.serve.schema import ServeDeploySchema

    serve_start().deploy_apps(ServeDeploySchema.model_validate(config), _blocking=False)


@contextlib.contextmanager
def rayservice(
    tmp: Path, env: dict[str, str] | None = None, config: dict | None = None
) -> Iterator[tuple[FakeCluster, str]]:
    """The cluster started, `config` (default `cluster_config`) deployed and answering; then
    everything it started stopped, or an error naming what was left. `env`: process settings
    for every node (the RayService's container env, serve.env, for the benchmark). Ray's
    token authentication is on, with a token of this cluster's own, as the RayService's
    `authOptions` has it."""
    import ray
    from ray.serve._private.api import serve_start

    token = secrets.token_hex(16)
    # The driver's side of the quick autoscaling and of the token, while the cluster runs.
    with mock.patch.dict(os.environ, {**FAST, **auth_env(token)}), own_ray_tmpdir() as ray_tmp:
        fake = FakeCluster(tmp, ray_tmp, env, token)
        reread_auth()
        try:
            ray.init(address=f"{LOOPBACK}:{fake.gcs_port}", log_to_driver=False)
            if config is None:
                config = cluster_config(free_port())
            http = config["http_options"]
            serve_start(http_options=http, proxy_location=config["proxy_location"])
            deploy(config)
            url = f"http://{LOOPBACK}:{http['port']}"
            wait_ready(url, timeout_s=300)
            yield fake, url
        finally:
            ray.shutdown()
            left = fake.stop()
    reread_auth()  # this process's Ray as it was before the cluster
    if left:
        raise RuntimeError(f"processes left behind: {left}")


def reread_auth() -> None:
    """Ray reads RAY_AUTH_MODE and its token once per process and keeps them: read them again
    from the environment (as Ray's own tests switch modes), so that this driver presents the
    cluster's token, and after it, whatever its environment says again."""
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()
