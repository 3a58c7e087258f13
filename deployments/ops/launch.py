"""Run img2vec on this machine the way `make serve` and the Docker image do:
`python -m deployments.ops.launch [serve_config.yaml] [--port 8080]`.

What it adds to `serve run serve_config.yaml` (which it otherwise mirrors):
- serve.env's Ray process settings are applied before Ray starts (variables already set in
  the environment win), so the proxy's errors are JSON too (deployments/edge/proxy.py);
- one config, several ports: `--port` / IMG2VEC_PORT overrides `http_options.port` (the image
  listens on 8080 like the container it replaces; a workstation keeps 8000);
- Prometheus metrics on a fixed port, `--metrics-port` / IMG2VEC_METRICS_PORT (8081);
- SIGTERM (what Docker and Kubernetes send) and Ctrl-C drain first: readiness turns 503,
  requests still arriving are served for `--accept` seconds, then new ones get 503 with
  Retry-After while those in flight finish (up to `--grace` seconds); then Ray stops (Serve
  with it) and the launcher waits until no process it started is left: 6-8 s on 2 cores,
  within Docker's 10 s grace;
- an application that fails to deploy ends the process with its error (exit 1) instead of
  waiting forever; Ray's processes dying under it (killed, OOM, a stop that reached them
  first) are noticed within a second and end it with a line that says what was lost;
- however a service manager stops it (SIGTERM to this process, to its process group, or to
  every process of its cgroup) it leaves nothing running: Ray runs in a session of its own
  under a small supervisor process (deployments/ops/supervisor.py), so that a signal to the
  group reaches only the supervisor, which passes it on;
- on its own local Ray, Ray's processes listen on loopback only, and the metrics port is
  served by the supervisor where the HTTP port is (`--metrics-host` to choose);
- it starts its own local Ray unless an address is given (`--address` / RAY_ADDRESS): a bare
  `ray.init()` (what `serve run` does) joins the cluster recorded in Ray's temp dir, and the
  record of one that died without cleaning up (SIGKILL, OOM, a crash) makes it hang. Such a
  stale record is removed, with a log line, before Ray starts.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import psutil

from deployments.ops.node import (
    auth_refusal,
    load_config,
    prepare_environment,
    ray_address,
    ray_cli_hint,
    read_env_file,
    start_ray,
)
from deployments.ops.supervisor import (
    as_server,
    end_processes,
    is_server,
    supervise,
    wait_for_descendants,
)

log = logging.getLogger("img2vec.launch")

DEFAULT_METRICS_PORT = 8081
DEFAULT_ACCEPT_S = 3.0
DEFAULT_GRACE_S = 25.0
# How often the launcher looks at Ray's processes and the requests in flight.
WATCH_INTERVAL_S = 0.5
# The longest the launcher waits for one answer from its actor before it looks again.
CALL_TIMEOUT_S = 2.0
# How long its actor may go without answering before the launcher counts Ray as gone. Slow is
# not gone: on a loaded node the actor's first answer (its worker process starting beside
# replicas that load models, on two cores beside Weaviate) took longer than one call's
# timeout, and the launcher, reading that as Ray gone, stopped a healthy service (seen in CI).
UNRESPONSIVE_S = 60.0


class _Stop:
    def __init__(self) -> None:
        self.signal: int | None = None

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        first, self.signal = self.signal is None, signum
        if first:  # (a second signal may arrive while this line is written)
            log.info("%s received: draining", signal.Signals(signum).name)


@dataclass
class _Watch:
    """What the launcher knows of the service while it runs."""

    inflight: int = 0  # requests in flight at the last count
    counted_at: float = field(default_factory=time.monotonic)
    ray_down: str | None = None  # why Ray is gone, once it is
    failure: str | None = None  # an application that failed to deploy
    asked: Any = None  # the in-flight count asked of the actor and not yet answered


# The processes of the launcher's local Ray without which nothing is served. (The dashboard
# and the log monitor may die alone; the service goes on without them.)
ESSENTIAL = ("gcs_server", "raylet")


def _ray_down(local: bool) -> str | None:
    """Why Ray is no longer running under the launcher, or None: on its own local Ray, an
    essential process that `ray.init` started and that has exited (checked without a network
    call, so it answers at once when the GCS is gone)."""
    if not local:
        return None
    import ray

    node = ray._private.worker._global_node
    if node is None:
        return "Ray is not running"
    dead = [(kind, proc) for kind, proc in node.dead_processes() if kind in ESSENTIAL]
    if not dead:
        return None
    return ", ".join(
        f"{kind} (pid {proc.pid}) exited with {proc.returncode}" for kind, proc in dead
    )


def _count(lifecycle: object, watch: _Watch, local: bool) -> None:
    """Refresh the watch: Ray's processes first, then the in-flight count (bounded: a call into
    a Ray that is going away must not hang the launcher)."""
    import ray

    watch.ray_down = watch.ray_down or _ray_down(local)
    if watch.ray_down:
        return
    from ray.exceptions import GetTimeoutError

    try:
        if watch.asked is None:
            watch.asked = lifecycle.inflight.remote()  # type: ignore[attr-defined]
        watch.inflight = int(ray.get(watch.asked, timeout=CALL_TIMEOUT_S))
        watch.asked = None
        watch.counted_at = time.monotonic()
    except GetTimeoutError:
        # Slow, not (yet) gone: keep the last count and wait on the same question, unless
        # Ray's processes have exited or the actor has been silent for UNRESPONSIVE_S.
        silent = time.monotonic() - watch.counted_at
        watch.ray_down = _ray_down(local) or (
            f"the launcher's actor has not answered for {silent:.0f} s"
            if silent > UNRESPONSIVE_S
            else None
        )
    except Exception as exc:  # the actor or Ray itself is gone: say so, once
        watch.ray_down = _ray_down(local) or f"the launcher's actor did not answer ({exc!r})"


def _serve(names: list[str], lifecycle: object, stop: _Stop, local: bool) -> _Watch:
    """Until a stop signal, a failed deploy, or Ray gone (noticed within WATCH_INTERVAL_S)."""
    watch = _Watch()
    checked = 0.0
    while stop.signal is None:
        _count(lifecycle, watch, local)
        if watch.ray_down:
            return watch
        if time.monotonic() - checked >= 1.0:
            checked = time.monotonic()
            watch.failure = _deploy_failure(names)
            if watch.failure:
                return watch
        time.sleep(WATCH_INTERVAL_S)
    return watch


def _deploy_failure(app_names: list[str]) -> str | None:
    from ray import serve

    status = serve.status()
    for name in app_names:
        app = status.applications.get(name)
        if app is not None and app.status == "DEPLOY_FAILED":
            return f"application {name!r} failed to deploy: {app.message}"
    return None


def _drain(lifecycle: object, watch: _Watch, accept_s: float, grace_s: float, local: bool) -> bool:
    """Readiness 503, arrivals accepted for `accept_s`, then refused while those in flight
    finish (up to `grace_s`). True when nothing was left in flight."""
    import ray
    from ray.exceptions import GetTimeoutError

    try:
        ray.get(lifecycle.drain.remote(accept_s), timeout=CALL_TIMEOUT_S)  # type: ignore[attr-defined]
    except GetTimeoutError:
        pass  # slow, not gone: the drain is queued at the actor; the loop below watches it
    except Exception:
        watch.ray_down = watch.ray_down or _ray_down(local) or "the launcher's actor is gone"
        return False
    deadline = time.monotonic() + accept_s + grace_s
    while time.monotonic() < deadline:
        _count(lifecycle, watch, local)
        if watch.ray_down:
            return False
        try:
            if ray.get(lifecycle.drained.remote(), timeout=CALL_TIMEOUT_S):  # type: ignore[attr-defined]
                return True
        except Exception:
            continue
        time.sleep(0.2)
    log.warning(
        "%d requests still in flight after %.0f s; stopping anyway", watch.inflight, grace_s
    )
    return False


def _deploy(config: dict) -> list[str]:
    """Serve started with the config's HTTP and gRPC options, its applications deployed
    (without waiting: `_serve` watches them); returns their names."""
    from ray.serve._private.api import serve_start
    from ray.serve.config import gRPCOptions
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(config)
    client = serve_start(
        http_options=schema.http_options.model_dump(),
        proxy_location=schema.proxy_location,
        grpc_options=gRPCOptions(**schema.grpc_options.model_dump()),
    )
    client.deploy_apps(schema, _blocking=False)
    return [app.name for app in schema.applications]


def _shut_down(address: str, ray_down: str | None, ours: set[int]) -> None:
    import ray

    if ray_down is not None:
        # What is left of Ray cannot stop itself (its GCS is gone): end it from here.
        end_processes(ours)
        return
    if address != "local":
        # Serve lives on a cluster we only joined: stop what we deployed there.
        from ray import serve

        serve.shutdown()
    # On our own local Ray, Serve's graceful shutdown adds nothing after our drain but time
    # (measured: 2.5-4 s of its replicas' and controller's shutdown loops, which pushed a
    # container's stop past Docker's 10 s grace): stopping Ray ends every replica, and
    # nothing is in flight any more.
    ray.shutdown()
    wait_for_descendants(ours)


def run(args: argparse.Namespace) -> int:
    as_server()
    address = ray_address(args.address)
    local = address == "local"
    config = load_config(Path(args.config), args.port, args.host)
    env_file = _env_file(args)
    haproxy_files = prepare_environment(env_file, local, config["http_options"].get("host"))

    from deployments import lifecycle

    dashboard = start_ray(address, args.metrics_port)
    stop = _Stop()
    # After ray.init, which installs its own handler (exit at once, dropping requests).
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    handle = lifecycle.create()
    names = _deploy(config)
    http = config["http_options"]
    log.info(
        "img2vec: serving %s on http://%s:%d, metrics on :%d",
        ", ".join(names),
        http.get("host", "0.0.0.0"),
        http.get("port", 8000),
        args.public_metrics_port or args.metrics_port,
    )
    hint = ray_cli_hint(dashboard, args.config)
    if hint:
        log.info("%s", hint)
    watch = _serve(names, handle, stop, local)
    stopping = time.monotonic()
    if stop.signal is not None and not watch.ray_down:
        drained = _drain(handle, watch, args.accept, args.grace, local)
        if not watch.ray_down:
            log.info(
                "img2vec: %s in %.1f s; shutting down",
                "drained" if drained else "grace period over",
                time.monotonic() - stopping,
            )
    code = _outcome(watch, stop)
    ours = {p.pid for p in psutil.Process().children(recursive=True)}
    _shut_down(address, watch.ray_down, ours)
    shutil.rmtree(haproxy_files, ignore_errors=True)
    after = "the signal" if stop.signal is not None else "it ended"
    log.info("img2vec: stopped %.1f s after %s", time.monotonic() - stopping, after)
    if watch.ray_down:
        # Ray's exit hooks would wait for a GCS that is gone: leave without them.
        logging.shutdown()
        os._exit(code)
    return code


def _outcome(watch: _Watch, stop: _Stop) -> int:
    """The exit code, with the line that says why when it is not a clean stop."""
    if watch.failure:
        log.error("img2vec: %s", watch.failure)
        return 1
    if watch.ray_down is None:
        return 0
    ago = time.monotonic() - watch.counted_at
    if stop.signal is None:
        log.error(
            "img2vec: Ray stopped under the launcher (%s): the service is down", watch.ray_down
        )
        return 1
    if watch.inflight:
        log.error(
            "img2vec: Ray's processes were stopped with the launcher (%s): %d requests in flight "
            "%.1f s before were lost. Stop the launcher alone (systemd: KillMode=mixed) so that "
            "it drains first.",
            watch.ray_down,
            watch.inflight,
            ago,
        )
        return 1
    log.info(
        "img2vec: Ray's processes were stopped with the launcher (%s); nothing was in flight "
        "(%.1f s before)",
        watch.ray_down,
        ago,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if is_server():
        return run(args)
    # Ray's token off is refused before anything starts (serve.env's settings count too; the
    # environment wins over them, as when they are applied).
    env_file = _env_file(args)
    settings = read_env_file(env_file) if env_file.is_file() else {}
    refusal = auth_refusal({**settings, **os.environ})
    if refusal:
        log.error("img2vec: not starting: %s", refusal)
        return 2
    # The supervisor: on its own local Ray, the node's metrics port is Ray's agent on
    # loopback, and the public one is served here; joined to a cluster, there is no node of
    # ours and no metrics port.
    metrics = None
    if ray_address(args.address) == "local":
        http = load_config(Path(args.config), args.port, args.host)["http_options"]
        host = args.metrics_host or http.get("host") or "0.0.0.0"
        internal = _free_loopback_port()
        metrics = (host, args.metrics_port, internal)
        argv += ["--metrics-port", str(internal), "--public-metrics-port", str(args.metrics_port)]
    return supervise(argv, metrics)


def _env_file(args: argparse.Namespace) -> Path:
    """Ray's process settings: --env-file, else serve.env beside the config."""
    return Path(args.env_file) if args.env_file else Path(args.config).parent / "serve.env"


def _free_loopback_port() -> int:
    """For the Ray agent's metrics, reached only by the supervisor."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", default="serve_config.yaml")
    parser.add_argument(
        "--port",
        type=int,
        default=int(os.environ["IMG2VEC_PORT"]) if os.environ.get("IMG2VEC_PORT") else None,
        help="HTTP port, overriding the config's (env IMG2VEC_PORT)",
    )
    parser.add_argument(
        "--host",
        default=os.environ.get("IMG2VEC_HOST") or None,
        help="HTTP address, overriding the config's (env IMG2VEC_HOST)",
    )
    parser.add_argument(
        "--address",
        default=None,
        help="a Ray cluster to join (env RAY_ADDRESS); default: start a local one",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=int(os.environ.get("IMG2VEC_METRICS_PORT") or DEFAULT_METRICS_PORT),
        help=f"Prometheus metrics port of this node (env IMG2VEC_METRICS_PORT, default "
        f"{DEFAULT_METRICS_PORT})",
    )
    parser.add_argument(
        "--metrics-host",
        default=os.environ.get("IMG2VEC_METRICS_HOST") or None,
        help="address of the metrics port (env IMG2VEC_METRICS_HOST; default: the HTTP one)",
    )
    parser.add_argument("--public-metrics-port", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument(
        "--env-file", default=None, help="Ray process settings (default: serve.env beside it)"
    )
    parser.add_argument(
        "--grace",
        type=float,
        default=float(os.environ.get("IMG2VEC_GRACE_S") or DEFAULT_GRACE_S),
        help="seconds in-flight requests get to finish on SIGTERM (env IMG2VEC_GRACE_S)",
    )
    parser.add_argument(
        "--accept",
        type=float,
        default=DEFAULT_ACCEPT_S,
        help="seconds, after SIGTERM, during which requests still arriving are served "
        "(readiness already 503) before new ones are refused",
    )
    return parser


if __name__ == "__main__":
    sys.exit(main())
