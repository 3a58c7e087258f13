"""img2vec on a real multi-node Ray cluster, on loopback: a head that offers no CPU or GPU
to replicas (as in cluster/kuberay/rayservice.yaml), GPU worker nodes that declare a logical
GPU, and Ray's autoscaler with its fake multi-node provider, which starts and stops worker
"nodes" as local processes. It runs the RayService's own serveConfigV2, adapted only where
one machine differs from a cluster (see `cluster_config`).

Shown here: the Embedder replica runs on a GPU worker and the API answers through the head's
proxy; a user_config change applies under load without a failed request; load raises the
Embedder from 1 to 2 replicas, whose second GPU brings up a new node, and idleness takes both
back; no request fails throughout. With no physical GPU the Embedder falls back to CPU and
says so.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from bench.processes import MARKER_VAR, free_port, marked_pids, own_ray_tmpdir, wait_ready
from tests.conftest import b64, encode, photo

ROOT = Path(__file__).resolve().parents[2]
LOOPBACK = "127.0.0.1"
RAY = str(Path(sys.executable).with_name("ray"))
GPU_NODE = "gpu_node"
# Short delays patched in, so that scaling happens within a test's time.
FAST = {
    "RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.5",
    "RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.5",
    "RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.2",
    "AUTOSCALER_UPDATE_INTERVAL_S": "1",
    "RAY_FAKE_CLUSTER": "1",
    "RAY_AUTH_MODE": "disabled",  # a loopback test cluster; the token would be one more file
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
        target_ongoing_requests=2,
        upscale_delay_s=1,
        downscale_delay_s=5,
        look_back_period_s=2,
    )
    deployments["Embedder"]["user_config"]["max_batch_size"] = 4
    return config


class FakeCluster:
    """Stopped by signals (there is no `ray stop` that ends only this cluster), so its head's
    record (`ray_current_cluster`) would outlive it: it lives in a Ray temp dir of its own."""

    def __init__(self, tmp: Path, ray_tmp: str) -> None:
        self.marker = uuid.uuid4().hex
        self.gcs_port = free_port()
        config = tmp / "autoscaler.json"
        config.write_text(json.dumps(autoscaler_config(self.gcs_port)))
        self.env = {**os.environ, **FAST, MARKER_VAR: self.marker, "RAY_TMPDIR": ray_tmp}
        head = [RAY, "start", "--head", f"--node-ip-address={LOOPBACK}", f"--port={self.gcs_port}"]
        head += ["--num-cpus=0", "--num-gpus=0", f"--autoscaling-config={config}"]
        head += ["--include-dashboard=false", "--disable-usage-stats"]
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


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[tuple[FakeCluster, str]]:
    import ray
    from ray.serve._private.api import serve_start
    from ray.serve.schema import ServeDeploySchema

    with pytest.MonkeyPatch.context() as mp, own_ray_tmpdir() as ray_tmp:
        for key, value in FAST.items():
            mp.setenv(key, value)
        fake = FakeCluster(tmp_path_factory.mktemp("cluster"), ray_tmp)
        try:
            ray.init(address=f"{LOOPBACK}:{fake.gcs_port}", log_to_driver=False)
            port = free_port()
            config = cluster_config(port)
            client = serve_start(
                http_options=config["http_options"], proxy_location=config["proxy_location"]
            )
            client.deploy_apps(ServeDeploySchema.model_validate(config), _blocking=False)
            url = f"http://{LOOPBACK}:{port}"
            wait_ready(url, timeout_s=300)
            yield fake, url
        finally:
            ray.shutdown()
            left = fake.stop()
            assert left == [], f"processes left behind: {left}"


def alive_nodes() -> list[dict]:
    import ray

    return [n for n in ray.nodes() if n["Alive"]]


def embedder_nodes(url: str, replicas: int, tries: int = 60) -> dict[str, str]:
    """replica -> node, from /meta, which one replica answers at a time (asked until all
    `replicas` answered, or `tries` times)."""
    seen: dict[str, str] = {}
    for _ in range(tries):
        meta = httpx.get(url + "/meta", timeout=30).json()
        seen[meta["replica"]] = meta["node_id"]
        if len(seen) == replicas:
            break
    return seen


def running_replicas(deployment: str) -> int:
    from ray import serve

    app = serve.status().applications.get("img2vec")
    return app.deployments[deployment].replica_states.get("RUNNING", 0) if app else 0


class Load:
    """`clients` threads posting photos back to back; every status recorded."""

    def __init__(self, url: str, clients: int) -> None:
        body = json.dumps({"id": "load", "image": b64(encode(photo("coffee"), "JPEG"))})
        self.statuses: Counter[object] = Counter()
        self._stop = threading.Event()

        def client() -> None:
            with httpx.Client(timeout=60) as http:
                while not self._stop.is_set():
                    try:
                        self.statuses[http.post(url + "/vectors", content=body).status_code] += 1
                    except httpx.HTTPError as exc:
                        self.statuses[type(exc).__name__] += 1

        self._threads = [threading.Thread(target=client) for _ in range(clients)]
        for t in self._threads:
            t.start()

    def stop(self) -> Counter[object]:
        self._stop.set()
        for t in self._threads:
            t.join(90)
        return self.statuses


def wait_until(condition, timeout_s: float, what: str) -> float:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout_s, f"{what}: not within {timeout_s} s"
        time.sleep(0.5)
    return time.monotonic() - started


def test_the_model_runs_on_a_gpu_worker_and_the_api_answers_through_the_head(cluster):
    _, url = cluster
    head = next(n for n in alive_nodes() if n["Resources"].get("GPU", 0) == 0)
    workers = [n for n in alive_nodes() if n["Resources"].get("GPU", 0) >= 1]
    assert workers and head["Resources"].get("CPU", 0) == 0
    meta = httpx.get(url + "/meta", timeout=30).json()
    assert meta["node_id"] in {w["NodeID"] for w in workers}
    assert meta["node_id"] != head["NodeID"]
    assert meta["device"] == "cpu"  # a logical GPU only: the model fell back to the CPU
    body = json.dumps({"id": "cluster_0", "image": b64(encode(photo("rocket"), "PNG"))})
    r = httpx.post(url + "/vectors", content=body, timeout=60)
    assert r.status_code == 200 and r.json()["dim"] == 2048


def test_a_user_config_change_applies_under_load_without_a_failed_request(cluster):
    from ray.serve._private.api import serve_start
    from ray.serve.schema import ServeDeploySchema

    _, url = cluster
    port = int(url.rsplit(":", 1)[1])
    config = cluster_config(port)
    deployments = {d["name"]: d for d in config["applications"][0]["deployments"]}
    deployments["Embedder"]["user_config"]["max_batch_size"] = 2
    load = Load(url, clients=2)
    try:
        time.sleep(2)
        serve_start().deploy_apps(ServeDeploySchema.model_validate(config), _blocking=False)
        wait_until(
            lambda: (
                httpx.get(url + "/meta", timeout=30).json()["batching"]["config"]["max_batch_size"]
                == 2
            ),
            90,
            "the new max_batch_size",
        )
        time.sleep(2)
    finally:
        statuses = load.stop()
    assert set(statuses) == {200}, statuses


def test_load_adds_a_model_replica_and_a_gpu_node_and_idleness_removes_both(cluster):
    _, url = cluster
    assert running_replicas("Embedder") == 1 and len(alive_nodes()) == 2
    load = Load(url, clients=6)  # target_ongoing_requests 2 per replica: wants two
    try:
        up = wait_until(lambda: running_replicas("Embedder") == 2, 180, "a second replica")
        nodes = len(alive_nodes())
        placed = embedder_nodes(url, 2)
    finally:
        statuses = load.stop()
    print(f"2 replicas {up:.0f} s after the load started, on {len(placed)} nodes")
    # The second replica's GPU came with a new node: two replicas, two nodes.
    assert nodes == 3 and len(placed) == 2 and len(set(placed.values())) == 2, placed
    down = wait_until(lambda: running_replicas("Embedder") == 1, 120, "back to one replica")
    gone = wait_until(lambda: len(alive_nodes()) == 2, 120, "the idle node removed")
    print(f"1 replica {down:.0f} s after the load stopped, idle node gone {gone:.0f} s later")
    assert set(statuses) == {200}, statuses
    r = httpx.post(
        url + "/vectors",
        content=json.dumps({"id": "after", "image": b64(encode(photo("coffee"), "PNG"))}),
        timeout=60,
    )
    assert r.status_code == 200
