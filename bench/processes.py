"""Start a server as users would (`serve run ...`, or the baseline) in its own process group,
and stop exactly what was started: the leader first, gracefully, so that Ray Serve can stop
its own helpers (HAProxy among them), then anything left that carries this run's marker.

Every server started here gets a Ray temp dir of its own (RAY_TMPDIR): what a cluster ended by
SIGKILL leaves behind (Ray's `ray_current_cluster` record, session files) stays there, and is
removed with it, so it can reach no other test, benchmark or user's next start."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path

import httpx

MARKER_VAR = "IMG2VEC_RUN_MARKER"
LOOPBACK = "127.0.0.1"


# Ports handed out here come from below the kernel's ephemeral range (32768-60999), where Ray's
# own processes take theirs (port 0, chosen by the kernel), and below Serve's direct-ingress
# range (30000-31000): a port free now is then not taken by Ray before the service binds it
# (seen once in CI: HAProxy's metrics port "Address already in use").
PORT_RANGE = (20000, 30000)


_GIVEN: set[int] = set()


def free_port() -> int:
    """A TCP port free on every interface right now (HAProxy binds its stats and metrics
    ports on all of them: a port free on loopback alone was seen taken there), outside the
    ranges Ray uses, and never one this process handed out before (two listeners of one
    launch must not draw the same port)."""
    for _ in range(200):
        port = random.randrange(*PORT_RANGE)
        if port in _GIVEN:
            continue
        with socket.socket() as s:
            try:
                s.bind(("", port))
            except OSError:
                continue
        _GIVEN.add(port)
        return port
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def serve_env(root: Path) -> dict[str, str]:
    """Ray Serve's process settings from serve.env, as the launcher applies them."""
    from deployments.ops.node import read_env_file

    return read_env_file(root / "serve.env")


def front_end_as_served(root: Path) -> dict[str, str]:
    """serve.env's HAProxy setting, to set explicitly in a launcher's environment: on a
    loopback address the launcher leaves serve.env's HAProxy off unless the environment asks
    (deployments/ops/node.py: keep_on_loopback), and the tests and benchmarks run the front end
    that the image and the systemd unit serve Weaviate with."""
    from deployments.ops.node import HAPROXY

    value = serve_env(root).get(HAPROXY)
    return {} if value is None else {HAPROXY: value}


def env_pairs(text: str) -> dict[str, str]:
    """`KEY=VAL,KEY2=VAL2` (the benchmarks' `--serve-env`) -> a dict."""
    return dict(kv.split("=", 1) for kv in text.split(",") if kv)


def fixed_ingress(config: dict, replicas: int | None) -> dict:
    """The serve config with its Ingress at `replicas` fixed replicas instead of autoscaling
    (numbers that do not wait for the autoscaler); unchanged for None."""
    if replicas:
        for app in config["applications"]:
            for deployment in app.get("deployments", []):
                if deployment["name"] == "Ingress":
                    deployment.pop("autoscaling_config", None)
                    deployment["num_replicas"] = replicas
    return config


def own_ports() -> dict[str, str]:
    """Free ports for the listeners HAProxy mode (serve.env) adds beside the service's own,
    whose defaults (9101 metrics, 8404 stats, 8500/9500 Serve's fallback proxy) two services
    on one machine would share."""
    return {
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
        "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),
        "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT": str(free_port()),
        "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT": str(free_port()),
    }


@contextlib.contextmanager
def own_ray_tmpdir() -> Iterator[str]:
    """A fresh directory for RAY_TMPDIR, removed afterwards. Short and under /tmp: Ray puts
    Unix sockets in it, whose paths must fit in 107 bytes."""
    path = tempfile.mkdtemp(prefix="i2v-ray-", dir="/tmp")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def wait_ready(
    url: str,
    timeout_s: float = 300,
    proc: subprocess.Popen | None = None,
    path: str = "/.well-known/ready",
    ready_status: int = 204,
    log: Path | None = None,
) -> None:
    """Until GET url + path answers `ready_status` (ours: readiness 204; a peer's health
    route: 200), or `proc` exits, or `timeout_s` passes. The error of a server that never got
    ready ends with the last lines of its `log`, where it says why."""
    deadline = time.monotonic() + timeout_s
    last: object = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(
                f"server exited with {proc.returncode} before it was ready{log_tail(log)}"
            )
        try:
            r = httpx.get(url + path, timeout=2)
            if r.status_code == ready_status:
                return
            last = r.status_code
        except httpx.TransportError as exc:
            last = exc
        time.sleep(0.5)
    raise TimeoutError(f"{url} not ready after {timeout_s} s (last: {last!r}){log_tail(log)}")


def log_tail(log: Path | None, lines: int = 60) -> str:
    """The last `lines` lines of `log`, to end an error with ("" without a log)."""
    if log is None or not log.exists():
        return ""
    tail = log.read_text(errors="replace").splitlines()[-lines:]
    return f"; {log} ends:\n" + "\n".join(tail)


def marked_pids(marker: str) -> list[int]:
    """Processes whose environment carries this run's marker: ours, wherever they were
    re-parented."""
    needle = f"{MARKER_VAR}={marker}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            with contextlib.suppress(OSError):
                if needle in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
    return found


# Ray starts its workers at a nice value 15 above the process that starts Ray (19 at most): a
# service started at nice 0 runs its replicas at 15 and its decoding threads, 4 lower, at 19.
# Benchmarks start the service at their own level (0) and everything that stands in for the
# other side at the workers' level: the load generator's threads (bench.loadgen) and the
# one-at-a-time baselines (`started(..., nice=WORKER_NICE)`). Starting the service from a
# process at nice 15 would put its workers at 19, level with its decoding threads.
WORKER_NICE = 15


def lower_this_thread(level: int = WORKER_NICE) -> None:
    """Run the calling thread (and the threads it starts) at nice `level` or lower. Linux
    applies nice values per thread; elsewhere this lowers the whole process."""
    tid = threading.get_native_id() if sys.platform == "linux" else 0
    with contextlib.suppress(OSError):
        current = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, max(current, level))


@contextlib.contextmanager
def started(
    cmd: list[str],
    env: Mapping[str, str],
    log: Path,
    cwd: Path,
    stop_timeout_s: float = 60,
    ray_tmpdir: str | None = None,
    nice: int = 0,
    marker: str | None = None,
) -> Iterator[subprocess.Popen]:
    """`ray_tmpdir`: the caller's own Ray temp dir (it removes it); by default a fresh one.
    `nice`: how many levels below this process the command runs. `marker`: the caller's, to
    find the processes this started (`marked_pids`); by default a fresh one."""
    marker = marker or uuid.uuid4().hex
    with contextlib.ExitStack() as stack:
        ray_tmp = ray_tmpdir or stack.enter_context(own_ray_tmpdir())
        out = stack.enter_context(log.open("wb"))
        proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            env={**own_ports(), **env, MARKER_VAR: marker, "RAY_TMPDIR": ray_tmp},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=(lambda: os.nice(nice)) if nice else None,
        )
        try:
            yield proc
        finally:
            # `serve run` shuts Serve and Ray down on SIGINT, like Ctrl-C in a terminal.
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=stop_timeout_s)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
            for pid in marked_pids(marker):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def baseline_server(
    module: str, args: list[str], log: Path, root: Path
) -> Iterator[tuple[str, subprocess.Popen]]:
    """A one-at-a-time baseline server (`python -m <module> --port P <args>`: bench/baseline.py,
    bench/clip_baseline.py) on a free loopback port, at the level of the service's workers
    (WORKER_NICE); yields (url, process) once it is ready."""
    port = free_port()
    cmd = [sys.executable, "-m", module, "--port", str(port), *args]
    with started(cmd, dict(os.environ), log, root, nice=WORKER_NICE) as proc:
        url = f"http://{LOOPBACK}:{port}"
        wait_ready(url, proc=proc, log=log)
        yield url, proc


@contextlib.contextmanager
def launched(
    config: dict,
    workdir: Path,
    root: Path,
    *,
    serve_env_text: str | None = None,
    extra_env: Mapping[str, str] | None = None,
    marker: str | None = None,
    wait: bool = True,
) -> Iterator[tuple[str, subprocess.Popen]]:
    """The service as `make serve` runs it (`python -m deployments.ops.launch`, serve.env beside
    the config), on a copy of `config` bound to a free loopback port, with random weights;
    yields (url, process) once it is ready (at once without `wait`: the caller waits, with
    `log=workdir / "service.log"` to see why it failed)."""
    import sys

    import yaml

    port = free_port()
    config = {
        **config,
        "http_options": {**config.get("http_options", {}), "host": LOOPBACK, "port": port},
    }
    path = workdir / "serve_config.yaml"
    path.write_text(yaml.safe_dump(config))
    text = (root / "serve.env").read_text() if serve_env_text is None else serve_env_text
    (workdir / "serve.env").write_text(text)  # beside the copy, where the launcher looks
    # Random weights unless the caller names others (extra_env wins over both); HAProxy as
    # the serve.env written here says (`front_end_as_served`).
    env = {
        **os.environ,
        "IMG2VEC_WEIGHTS": "random",
        "RAY_ADDRESS": "local",
        **front_end_as_served(workdir),
        **(extra_env or {}),
    }
    metrics = str(free_port())
    cmd = [sys.executable, "-m", "deployments.ops.launch", str(path), "--metrics-port", metrics]
    log = workdir / "service.log"
    with started(cmd, env, log, root, marker=marker) as proc:
        url = f"http://{LOOPBACK}:{port}"
        if not wait:
            yield url, proc
            return
        wait_ready(url, proc=proc, log=log)
        yield url, proc
