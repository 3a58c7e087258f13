"""img2vec on a real multi-node Ray cluster, on loopback, with the RayService's
serveConfigV2 (bench/fake_cluster.py: a head without CPUs for replicas, GPU worker nodes
started and stopped by Ray's autoscaler).

Shown here: the Embedder replica runs on a GPU worker and the API answers through the head's
proxy; a user_config change applies under load without a failed request; load raises the
Embedder from 1 to 2 replicas, whose second GPU brings up a new node, and idleness takes both
back; no request fails throughout. With no physical GPU the Embedder falls back to CPU and
says so. Ray's token authentication is on (as the RayService's `authOptions`): without the
token, a job submission and a driver joining through the GCS are refused.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest

from bench.fake_cluster import FakeCluster, cluster_config, deploy, rayservice
from tests.support.images import b64, encode, photo


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[tuple[FakeCluster, str]]:
    with rayservice(tmp_path_factory.mktemp("cluster")) as (fake, url):
        yield fake, url


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
    _, url = cluster
    port = int(url.rsplit(":", 1)[1])
    config = cluster_config(port)
    deployments = {d["name"]: d for d in config["applications"][0]["deployments"]}
    deployments["Embedder"]["user_config"]["max_batch_size"] = 2
    load = Load(url, clients=2)
    try:
        time.sleep(2)
        deploy(config)
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
    # At rest first: the test before may have left a second replica and its node to go.
    wait_until(
        lambda: running_replicas("Embedder") == 1 and len(alive_nodes()) == 2, 180, "at rest"
    )
    load = Load(url, clients=6)  # 2 calls in flight, target_ongoing_requests 1: wants two
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


# What an attacker on the cluster's network tries first (the "ShadowRay" class): a job, which is
# arbitrary code on every node, and a Ray client joining the cluster.
ATTACK = "import ray; ray.init(address='{address}'); print('joined', flush=True)"


def test_without_the_token_ray_refuses_jobs_and_clients_and_the_service_still_serves(cluster):
    """Ray's token authentication, on as the RayService's `authOptions` turns it on: the job
    API answers 401 to a submission without the token (and lists jobs with it: the refusal is
    the lock, not a missing API); a driver without the token, or with another one, cannot
    join through the GCS; meanwhile the service answers."""
    fake, url = cluster
    assert fake.token
    jobs = fake.dashboard_url + "/api/jobs/"
    attack = "touch /tmp/img2vec-shadowray"
    r = httpx.post(jobs, json={"entrypoint": attack}, timeout=30)
    assert r.status_code == 401, (r.status_code, r.text[:200])
    r = httpx.get(jobs, headers={"Authorization": f"Bearer {fake.token}"}, timeout=30)
    assert r.status_code == 200, r.text[:200]
    assert [j["type"] for j in r.json()] == ["DRIVER"], r.text[:500]  # this test's own only

    address = f"127.0.0.1:{fake.gcs_port}"
    base = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    for label, auth in (
        ("no token", {"RAY_AUTH_MODE": "disabled"}),
        ("another token", {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 32}),
    ):
        env = {**base, **auth, "RAY_TMPDIR": fake.env["RAY_TMPDIR"]}
        try:
            run = subprocess.run(
                [sys.executable, "-c", ATTACK.format(address=address)],
                env=env,
                capture_output=True,
                text=True,
                timeout=90,
            )
            out, code = run.stdout + run.stderr, run.returncode
        except subprocess.TimeoutExpired as exc:
            out, code = str(exc.stdout or "") + str(exc.stderr or ""), None
        assert "joined" not in out and code != 0, (label, code, out[-1500:])
        print(f"{label}: refused ({'exit ' + str(code) if code is not None else 'timed out'})")

    body = json.dumps({"id": "locked_0", "image": b64(encode(photo("astronaut"), "PNG"))})
    r = httpx.post(url + "/vectors", content=body, timeout=60)
    assert r.status_code == 200 and r.json()["dim"] == 2048
