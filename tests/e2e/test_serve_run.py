"""The main commands, as users run them, in their own processes: `python -m deployments.ops.launch`
(what `make serve` and the Docker image run) and plain `serve run serve_config.yaml`."""

from __future__ import annotations

import json
import os
import pickle
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from bench.processes import (
    own_ray_tmpdir,
    serve_env,
    started,
    wait_ready,
)
from tests.e2e.launcher import (
    CONFIG,
    RAY_STOP_BOUND_S,
    ROOT,
    STOP_AFTER_DRAIN_S,
    STOP_GRACE_S,
    cleanup,
    gone_within,
    launch_cmd,
    launcher_env,
    stale_record,
    start,
    stop_under_load,
)
from tests.support.images import b64, encode, one_pixel_png, photo
from tests.support.service import LOOPBACK, free_port

SERVE_CLI = str(Path(sys.executable).with_name("serve"))


def load_config() -> dict:
    return yaml.safe_load(CONFIG.read_text())


def deployments(config: dict) -> dict[str, dict]:
    (app,) = config["applications"]
    return {d["name"]: d for d in app["deployments"]}


def test_config_is_the_documented_shape():
    config = load_config()
    assert config["http_options"]["host"] == "127.0.0.1" and config["http_options"]["port"] == 8000
    # Serve's own timeout is a backstop above ours (20 s) and below Weaviate's (50 s).
    assert 20 < config["http_options"]["request_timeout_s"] < 50
    (app,) = config["applications"]
    assert app["import_path"] == "deployments.app:build_app"
    assert app["route_prefix"] == "/"
    deps = deployments(config)
    assert set(deps) == {"Ingress", "Embedder"}
    for dep in deps.values():
        if "autoscaling_config" in dep:
            auto = dep["autoscaling_config"]
            assert 1 <= auto["min_replicas"] < auto["max_replicas"]  # else a dead setting
            assert auto["target_ongoing_requests"] > 0
        else:
            assert dep["num_replicas"] >= 1
        assert dep["max_queued_requests"] > 0
        assert "ray_actor_options" in dep
    embedder = deps["Embedder"]
    # A full pass running and the next one gathered behind it.
    assert embedder["max_ongoing_requests"] >= 2 * embedder["user_config"]["max_batch_size"]
    assert embedder["ray_actor_options"].get("num_gpus", 0) == 0  # runs on a laptop as is


def test_config_args_are_valid_builder_args():
    from deployments.app import AppArgs

    (app,) = load_config()["applications"]
    AppArgs.model_validate(app["args"])


@pytest.fixture(scope="module")
def launched(tmp_path_factory) -> Iterator[tuple[str, str, str, Path, int]]:
    """The launcher as `make serve` runs it, on serve_config.yaml itself (serve.env beside
    it), with the port overridden to a free loopback one; IMG2VEC_WEIGHTS=random as the
    README's quick start says. As a user after a crash: no RAY_ADDRESS, and Ray's temp dir
    holds the record of a dead cluster."""
    port, metrics_port = free_port(), free_port()
    log = tmp_path_factory.mktemp("log") / "launch.log"
    env = {k: v for k, v in launcher_env().items() if k != "RAY_ADDRESS"}
    with own_ray_tmpdir() as ray_tmp:
        dead = stale_record(ray_tmp)
        cmd = launch_cmd(port, metrics_port)
        with started(cmd, env, log, ROOT, ray_tmpdir=ray_tmp) as proc:
            url = f"http://{LOOPBACK}:{port}"
            wait_ready(url, timeout_s=240, proc=proc, log=log)
            yield url, f"http://{LOOPBACK}:{metrics_port}/metrics", dead, log, proc.pid


def test_the_launcher_starts_its_own_ray_over_a_dead_clusters_record(launched):
    """Whatever stopped before, the next start serves: the launcher never joins the cluster
    Ray's temp dir last recorded (it hung, retrying a dead GCS, before), and says what it
    removed."""
    url, _, dead, log, _ = launched
    assert httpx.get(url + "/.well-known/ready").status_code == 204
    text = log.read_text()
    assert f"record of a Ray cluster at {dead} that is no longer running" in text, text[-3000:]
    assert "Failed to connect to GCS" not in text


def test_the_launcher_serves_the_api_from_the_one_config(launched):
    url, *_ = launched
    assert httpx.get(url + "/.well-known/live").status_code == 204
    assert httpx.get(url + "/.well-known/ready").status_code == 204
    body = json.dumps({"id": "e2e_0", "image": b64(one_pixel_png())})
    r = httpx.post(url + "/vectors", content=body, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["id"] == "e2e_0" and r.json()["dim"] == 2048
    # Bulk, over serve.env's gRPC transport (4 MiB per message between deployments): 40
    # photos' pixels are 6 MB.
    image = b64(encode(photo("coffee").resize((320, 240)), "JPEG"))
    items = [{"id": f"b{i}", "image": image} for i in range(40)]
    r = httpx.post(url + "/vectors/batch", content=json.dumps({"items": items}), timeout=120)
    assert r.status_code == 200, r.text
    assert [item.get("dim") for item in r.json()["items"]] == [2048] * 40
    meta = httpx.get(url + "/meta").json()
    assert meta["model"] == "resnet50" and meta["weights"] == "random"
    assert meta["batching"]["config"] == deployments(load_config())["Embedder"]["user_config"]


def test_the_launcher_exports_metrics_on_its_fixed_port(launched):
    url, metrics, *_ = launched
    body = json.dumps({"id": "m", "image": b64(one_pixel_png())})
    assert httpx.post(url + "/vectors", content=body, timeout=60).status_code == 200
    deadline = time.monotonic() + 30
    while "ray_img2vec_requests" not in httpx.get(metrics, timeout=10).text:
        assert time.monotonic() < deadline, "our metrics never reached the metrics port"
        time.sleep(1)


def ray_cli(args: list[str], exports: dict[str, str]) -> subprocess.CompletedProcess:
    """Ray's CLI as an operator's shell runs it: none of the launcher's RAY_* variables, only
    what the launcher told them to export."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    serve = str(Path(sys.executable).parent / "serve")
    return subprocess.run(
        [serve, *args], env={**env, **exports}, capture_output=True, text=True, timeout=120
    )


def test_rays_cli_works_as_the_launcher_says(launched, tmp_path):
    """The launcher's log says what to export; with it, `serve status`, `serve config` and
    `serve deploy` (a new max_batch_size, applied live) work against `make serve`'s Ray,
    which has Ray's token. Without it they are refused (the token is on)."""
    url, _, _, log, _ = launched
    line = next(x for x in log.read_text().splitlines() if "Ray's CLI for this service" in x)
    exports = dict(re.findall(r"(RAY_[A-Z_]+)=(\S+?)[;\s]", line + " "))
    assert exports["RAY_AUTH_MODE"] == "token" and exports["RAY_DASHBOARD_ADDRESS"]
    dashboard = {"RAY_DASHBOARD_ADDRESS": exports["RAY_DASHBOARD_ADDRESS"]}
    refused = ray_cli(["status"], dashboard)
    assert refused.returncode != 0 and "token" in (refused.stdout + refused.stderr).lower()
    status = ray_cli(["status"], exports)
    assert status.returncode == 0, status.stderr[-2000:]
    assert "RUNNING" in status.stdout and "Embedder" in status.stdout
    shown = ray_cli(["config"], exports)
    assert shown.returncode == 0, shown.stderr[-2000:]
    assert "deployments.app:build_app" in shown.stdout
    config = load_config()
    embedder = deployments(config)["Embedder"]
    embedder["user_config"] = {**embedder["user_config"], "max_batch_size": 4}
    edited = tmp_path / "serve_config.yaml"
    edited.write_text(yaml.safe_dump(config))
    deployed = ray_cli(["deploy", str(edited)], exports)
    assert deployed.returncode == 0, deployed.stderr[-2000:]
    deadline = time.monotonic() + 60
    while httpx.get(url + "/meta", timeout=10).json()["batching"]["config"]["max_batch_size"] != 4:
        assert time.monotonic() < deadline, "serve deploy's user_config never reached the model"
        time.sleep(1)
    assert httpx.get(url + "/.well-known/ready").status_code == 204
    restored = ray_cli(["deploy", str(CONFIG)], exports)  # as the module's other tests expect
    assert restored.returncode == 0, restored.stderr[-2000:]


class _Marker:
    """A pickle that, when loaded, creates the file `path`: what an attacker would send."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def replica_grpc_ports(launcher_pid: int) -> dict[int, str]:
    """port -> replica: the TCP ports every Serve replica of this launcher listens on, on all
    interfaces (its gRPC server for calls between deployments; Serve 2.60 binds `[::]:0`)."""
    import psutil

    ports = {}
    for proc in psutil.Process(launcher_pid).children(recursive=True):
        try:
            title = " ".join(proc.cmdline())
            if "ServeReplica" not in title:
                continue
            for conn in proc.net_connections(kind="tcp"):
                if conn.status == psutil.CONN_LISTEN and conn.laddr.ip in ("::", "0.0.0.0"):
                    ports[conn.laddr.port] = title[:60]
        except psutil.Error:
            continue
    return ports


def test_a_tokenless_pickle_sent_to_each_replicas_grpc_port_is_refused_and_nothing_runs(
    launched, tmp_path
):
    """Each Serve replica's gRPC port listens on every interface and unpickles the request
    metadata it receives. With Ray's token (the launcher's default, its refusal to start
    without it: deployments/ops/node.py auth_refusal) a call without the token is refused
    before anything is unpickled. Seen to fail (the marker file created) with
    RAY_AUTH_MODE=disabled and IMG2VEC_ALLOW_RAY_AUTH_OFF=1."""
    import grpc
    from ray.serve.generated.serve_pb2 import ASGIRequest

    url, _, _, _, pid = launched
    ports = replica_grpc_ports(pid)
    assert len(ports) >= 2, ports  # the ingress and the model replica at least
    for port, replica in ports.items():
        marker = tmp_path / f"ran-{port}"
        request = ASGIRequest(pickled_request_metadata=pickle.dumps(_Marker(marker)))
        with grpc.insecure_channel(f"{LOOPBACK}:{port}") as channel:
            call = channel.unary_unary(
                "/ray.serve.ASGIService/HandleRequest",
                request_serializer=ASGIRequest.SerializeToString,
                response_deserializer=lambda b: b,
            )
            with pytest.raises(grpc.RpcError) as refused:
                call(request, timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED, (replica, refused.value)
        time.sleep(0.5)
        assert not marker.exists(), f"{replica}: the pickle ran"
    assert httpx.get(url + "/.well-known/ready").status_code == 204


def test_overload_is_answered_in_json_with_serve_env_too(launched):
    """The same burst the integration tests send without serve.env (throughput-optimized
    Serve changes how requests travel, not what they are answered)."""
    url, *_ = launched
    image = b64(encode(photo("coffee").resize((320, 240)), "JPEG"))
    body = json.dumps({"id": "burst", "image": image})
    results: list[tuple[int, str, float]] = []

    def one() -> None:
        started_at = time.monotonic()
        r = httpx.post(url + "/vectors", content=body, timeout=60)
        results.append((r.status_code, r.headers["content-type"], time.monotonic() - started_at))

    threads = [threading.Thread(target=one) for _ in range(150)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert len(results) == 150
    assert {s for s, _, _ in results} <= {200, 503}
    assert all(ct.startswith("application/json") for _, ct, _ in results)
    assert max(took for _, _, took in results) < 20 + 5  # request_timeout_s + slack


def test_sigterm_drains_in_flight_requests_and_leaves_nothing_behind(tmp_path):
    """Docker and Kubernetes stop a container with SIGTERM: the requests in flight finish,
    the launcher exits 0, and no process it started remains."""
    port = free_port()
    proc, marker = start(launch_cmd(port, free_port()), launcher_env(), tmp_path / "launch.log")
    url = f"http://{LOOPBACK}:{port}"
    try:
        wait_ready(url, timeout_s=240, proc=proc, log=tmp_path / "launch.log")
        # ~3 s of work for ResNet50 on 2 cores
        stopped = stop_under_load(proc, marker, url, 48, lambda: proc.send_signal(signal.SIGTERM))
    finally:
        left = cleanup(proc, marker)
    code, took, results = stopped.code, stopped.took_s, stopped.results
    statuses = Counter(r if isinstance(r, str) else r[0] for r in results)
    print(f"in flight at SIGTERM: {dict(statuses)}; the launcher exited {took:.1f} s later")
    text = (tmp_path / "launch.log").read_text()
    assert code == 0, text[-3000:]
    # The drain takes as long as the 48 requests in flight need (3-8 s on this 2-core machine,
    # depending on its load); what the launcher adds after them must be short, so that a
    # container whose requests fit in Docker's 10 s grace stops within it (tests/image: 7.5 s
    # with 24 in flight). Ray's own 30 s minimum drain of a direct-ingress replica is off.
    drained = float(re.search(r"drained in ([0-9.]+) s", text).group(1))  # type: ignore[union-attr]
    print(f"drained in {drained:.1f} s; stopped {took - drained:.1f} s after that")
    assert took - drained < STOP_AFTER_DRAIN_S, text[-3000:]
    assert statuses[200] >= 40 and set(statuses) <= {200, 503}, statuses
    assert all(r[1].startswith("application/json") for r in results if not isinstance(r, str))
    assert left == [], f"processes left behind: {left}"


def test_plain_serve_run_recovers_with_the_readme_command_and_leaves_nothing_on_sigterm(tmp_path):
    """`serve run serve_config.yaml` (Ray's CLI, without serve.env) joins the cluster Ray's
    temp dir last recorded, and hangs when that one is dead. The remedy docs/operations.md gives,
    `serve run --address local serve_config.yaml`, serves in spite of the record; on SIGTERM
    (Ray's own handling: it does not drain, the launcher does) every process it started is
    gone within RAY_STOP_BOUND_S."""
    config = load_config()
    port = free_port()
    config["http_options"] = {"host": LOOPBACK, "port": port}
    path = tmp_path / "serve_config.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {k: v for k, v in launcher_env().items() if k != "RAY_ADDRESS"}
    env["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="i2v-ray-", dir="/tmp")
    stale_record(env["RAY_TMPDIR"])
    cmd = [SERVE_CLI, "run", "--address", "local", str(path)]
    log = tmp_path / "serve.log"
    proc, marker = start(cmd, env, log)
    left: list[int] = []
    try:
        wait_ready(f"http://{LOOPBACK}:{port}", timeout_s=240, proc=proc, log=log)
        proc.send_signal(signal.SIGTERM)
        proc.wait(90)
        left, waited = gone_within(marker, RAY_STOP_BOUND_S)
        print(f"`serve run` exited; its processes were gone {waited:.1f} s later")
    finally:
        cleanup(proc, marker)
    assert left == [], f"processes left {RAY_STOP_BOUND_S} s after `serve run` exited: {left}"


def test_an_application_that_cannot_start_ends_the_launcher_with_its_reason(tmp_path):
    port = free_port()
    env = launcher_env(IMG2VEC_WEIGHTS=str(tmp_path / "missing.pth"))
    log = tmp_path / "launch.log"
    proc, marker = start(launch_cmd(port, free_port()), env, log)
    try:
        code = proc.wait(180)
    finally:
        left = cleanup(proc, marker)
    text = log.read_text()
    assert code == 1, text[-3000:]
    assert "failed to deploy" in text and "missing.pth" in text and "which is not a file" in text
    assert left == []


def test_serve_env_is_what_the_launcher_applies():
    env = serve_env(ROOT)
    assert env["RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"] == "deployments.edge.proxy:middlewares"
    # The C front end in place of Serve's Python proxy (docs/benchmarks.md#where-the-cpu-goes).
    assert env["RAY_SERVE_ENABLE_HA_PROXY"] == "1"


def test_the_image_entrypoint_serves_on_its_port_and_stops_cleanly(tmp_path):
    """The Docker image's command, run here: ENABLE_CUDA=0 as the replaced container knew it,
    the port from IMG2VEC_PORT (8080 in the image), its health check, SIGTERM."""
    port = free_port()
    env = launcher_env(
        ENABLE_CUDA="0",
        IMG2VEC_PORT=str(port),
        IMG2VEC_HOST=LOOPBACK,
        IMG2VEC_METRICS_PORT=str(free_port()),
    )
    log = tmp_path / "entrypoint.log"
    proc, marker = start([sys.executable, "-m", "deployments.ops.container"], env, log)
    try:
        url = f"http://{LOOPBACK}:{port}"
        wait_ready(url, timeout_s=240, proc=proc, log=log)
        health = subprocess.run(
            [sys.executable, "-m", "deployments.ops.container", "health"], env=env, cwd=ROOT
        )
        assert health.returncode == 0
        assert httpx.get(url + "/meta").json()["device"] == "cpu"
        proc.send_signal(signal.SIGTERM)
        stopping = time.monotonic()
        code = proc.wait(90)
        took = time.monotonic() - stopping
    finally:
        left = cleanup(proc, marker)
    print(f"idle stop: {took:.1f} s")
    assert code == 0, log.read_text()[-3000:]
    assert took < STOP_GRACE_S, log.read_text()[-3000:]
    assert left == []
