"""Run img2vec on this machine the way `make serve` and the Docker image do:
`python -m deployments.launch [serve_config.yaml] [--port 8080]`.

What it adds to `serve run serve_config.yaml` (which it otherwise mirrors):
- serve.env's Ray process settings are applied before Ray starts (variables already set in
  the environment win), so the proxy's errors are JSON too (deployments/proxy.py);
- one config, several ports: `--port` / IMG2VEC_PORT overrides `http_options.port` (the image
  listens on 8080 like the container it replaces; a workstation keeps 8000);
- Prometheus metrics on a fixed port, `--metrics-port` / IMG2VEC_METRICS_PORT (8081);
- SIGTERM (what Docker and Kubernetes send) and Ctrl-C drain first: readiness turns 503,
  requests still arriving are served for `--accept` seconds, then new ones get 503 with
  Retry-After while those in flight finish (up to `--grace` seconds); then Ray stops (Serve
  with it) and the launcher waits until no process it started is left: 6-8 s on 2 cores,
  within Docker's 10 s grace;
- an application that fails to deploy ends the process with its error (exit 1) instead of
  waiting forever;
- it starts its own local Ray unless an address is given (`--address` / RAY_ADDRESS): a bare
  `ray.init()` (what `serve run` does) joins the cluster recorded in Ray's temp dir, and the
  record of one that died without cleaning up (SIGKILL, OOM, a crash) makes it hang. Such a
  stale record is removed, with a log line, before Ray starts.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

import psutil
import yaml

log = logging.getLogger("img2vec.launch")

DEFAULT_METRICS_PORT = 8081
DEFAULT_ACCEPT_S = 3.0
DEFAULT_GRACE_S = 25.0


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines; blank lines and # comments skipped."""
    env = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            if not sep:
                raise ValueError(f"{path}: not KEY=VALUE: {line!r}")
            env[key.strip()] = value.strip()
    return env


def ray_address(flag: str | None) -> str:
    """Where the launcher's Ray runs: the flag, else RAY_ADDRESS, else a new local instance
    ("local"), never whatever cluster Ray's temp dir last recorded."""
    return flag or os.environ.get("RAY_ADDRESS") or "local"


def _record_path(temp_dir: str | None = None) -> Path:
    from ray._common.utils import get_ray_address_file

    return Path(get_ray_address_file(temp_dir))


def _live_gcs_addresses() -> set[str]:
    """GCS addresses that a raylet on this machine is connected to (Ray's own scan of the
    process table, as `ray.init(address="auto")` does): no network probe."""
    from ray._private.services import find_gcs_addresses

    find_gcs_addresses.cache_clear()  # type: ignore[attr-defined]
    return set(find_gcs_addresses())


def clear_stale_record(temp_dir: str | None = None) -> str | None:
    """Ray writes the address of the last cluster started on this machine to
    `<temp dir>/ray_current_cluster` and removes it on a clean stop. A cluster that died
    (SIGKILL, OOM, a crash) leaves it behind, and every later `ray.init()` or `serve run`
    without an address tries to join that dead cluster and hangs, retrying for minutes.
    Removes such a record (no raylet on this machine belongs to that cluster) and returns the
    address it named."""
    path = _record_path(temp_dir)
    try:
        address = path.read_text().strip()
    except OSError:
        return None
    if address and address in _live_gcs_addresses():
        log.info(
            "img2vec: a Ray cluster is running at %s; starting a separate local one "
            "(set RAY_ADDRESS=%s or --address to join it instead)",
            address,
            address,
        )
        return None
    with contextlib.suppress(OSError):
        path.unlink()
    log.warning(
        "img2vec: removed %s, the record of a Ray cluster at %s that is no longer running "
        "(it was stopped without cleaning up); starting a new local one",
        path,
        address or "(empty)",
    )
    return address


def single_node_settings(files: str) -> dict[str, str]:
    """Ray Serve settings that hold for the one node the launcher runs (variables already set
    win):
    - Ray keeps a draining direct-ingress replica alive for at least 30 s
      (RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S), so that HAProxy on other nodes stops
      routing to it first. The launcher has drained every replica itself before it shuts
      Serve down, and there are no other nodes: 0, or a stop takes 30 s more than the drain
      (Docker's default grace is 10 s).
    - HAProxy's files (config, admin socket, server state) go to `files`, a directory of this
      run's own, not Ray's default /tmp/haproxy-serve, which two services on one machine
      would share."""
    return {
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "0",
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": f"{files}/haproxy.cfg",
        "RAY_SERVE_HAPROXY_SOCKET_PATH": f"{files}/admin.sock",
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": files,
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": f"{files}/server-state",
    }


# Of /dev/shm's free space, what the object store may take (the rest for anything else there).
SHM_SHARE = 0.8


def object_store_bytes(shm_free: int | None, memory: int) -> int | None:
    """A size for Ray's object store that fits in /dev/shm, or None for Ray's own default.

    Ray sizes the store at 30 % of the memory it sees and, when /dev/shm is smaller (Docker's
    default is 64 MB; `--shm-size=1g` is still smaller than 30 % of most hosts), puts it in /tmp
    instead, with a warning that it "will harm performance". What img2vec keeps there is small
    (a group of pixels in flight is ~2.4 MB), so the store is sized to what /dev/shm has."""
    default = int(memory * ray_default_proportion())
    if shm_free is None or shm_free >= default:
        return None
    size = int(shm_free * SHM_SHARE)
    return size if size >= OBJECT_STORE_MINIMUM_BYTES else None


OBJECT_STORE_MINIMUM_BYTES = 75 * 1024 * 1024  # Ray's own minimum


def ray_default_proportion() -> float:
    return float(os.environ.get("RAY_DEFAULT_OBJECT_STORE_MEMORY_PROPORTION") or 0.3)


def shm_free_bytes(path: str = "/dev/shm") -> int | None:
    try:
        stats = os.statvfs(path)
    except OSError:
        return None
    return stats.f_bavail * stats.f_frsize


def load_config(path: Path, port: int | None, host: str | None) -> dict:
    config = yaml.safe_load(path.read_text())
    http = dict(config.get("http_options") or {})
    if port is not None:
        http["port"] = port
    if host is not None:
        http["host"] = host
    config["http_options"] = http
    return config


class _Stop:
    def __init__(self) -> None:
        self.signal: int | None = None

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if self.signal is None:
            log.info("%s received: draining", signal.Signals(signum).name)
        self.signal = signum


def _deploy_failure(app_names: list[str]) -> str | None:
    from ray import serve

    status = serve.status()
    for name in app_names:
        app = status.applications.get(name)
        if app is not None and app.status == "DEPLOY_FAILED":
            return f"application {name!r} failed to deploy: {app.message}"
    return None


def _drain(lifecycle: object, accept_s: float, grace_s: float) -> bool:
    import ray

    ray.get(lifecycle.drain.remote(accept_s))  # type: ignore[attr-defined]
    deadline = time.monotonic() + accept_s + grace_s
    while time.monotonic() < deadline:
        if ray.get(lifecycle.drained.remote()):  # type: ignore[attr-defined]
            return True
        time.sleep(0.2)
    left = ray.get(lifecycle.inflight.remote())  # type: ignore[attr-defined]
    log.warning("%d requests still in flight after %.0f s; stopping anyway", left, grace_s)
    return False


def _wait_for_descendants(before: set[int], timeout_s: float = 20) -> None:
    """Ray's shutdown signals its processes and returns; wait until they are gone (and end
    the stragglers), so that nothing outlives the launcher."""
    me = psutil.Process()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        alive = _descendants(me, before)
        if not alive:
            return
        time.sleep(0.2)
    for proc in _descendants(me, before):
        with contextlib.suppress(psutil.Error):
            log.warning("killing %s (pid %d), still running", proc.name(), proc.pid)
            proc.kill()


def _descendants(me: psutil.Process, known: set[int]) -> list[psutil.Process]:
    found = {p.pid: p for p in me.children(recursive=True)}
    for pid in known - found.keys():
        with contextlib.suppress(psutil.Error):
            found[pid] = psutil.Process(pid)
    return [p for p in found.values() if _alive(p)]


def _alive(proc: psutil.Process) -> bool:
    """Running and not a zombie; a process that exits while we look is not alive."""
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def run(args: argparse.Namespace) -> int:
    config_path = Path(args.config)
    env_file = Path(args.env_file) if args.env_file else config_path.parent / "serve.env"
    if env_file.is_file():
        for key, value in read_env_file(env_file).items():
            os.environ.setdefault(key, value)
    haproxy_files = tempfile.mkdtemp(prefix="img2vec-haproxy-")
    for key, value in single_node_settings(haproxy_files).items():
        os.environ.setdefault(key, value)
    config = load_config(config_path, args.port, args.host)

    import ray
    from ray import serve
    from ray.serve._private.api import serve_start
    from ray.serve.config import gRPCOptions
    from ray.serve.schema import ServeDeploySchema

    from deployments import lifecycle

    schema = ServeDeploySchema.model_validate(config)
    address = ray_address(args.address)
    if address == "local":
        clear_stale_record()
        from ray._common.utils import get_system_memory

        store = object_store_bytes(shm_free_bytes(), get_system_memory())
        if store is not None:
            log.info("img2vec: object store %d MB, to fit in /dev/shm", store // 2**20)
        ray.init(
            address="local",
            namespace="serve",
            object_store_memory=store,
            _metrics_export_port=args.metrics_port,
        )
    else:
        log.info("img2vec: joining the Ray cluster at %s", address)
        ray.init(address=address, namespace="serve")
    stop = _Stop()
    # After ray.init, which installs its own handler (exit at once, dropping requests).
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    handle = lifecycle.create()
    client = serve_start(
        http_options=schema.http_options.model_dump(),
        proxy_location=schema.proxy_location,
        grpc_options=gRPCOptions(**schema.grpc_options.model_dump()),
    )
    client.deploy_apps(schema, _blocking=False)
    names = [app.name for app in schema.applications]
    http = schema.http_options
    log.info(
        "img2vec: serving %s on http://%s:%d, metrics on :%d",
        ", ".join(names),
        http.host,
        http.port,
        args.metrics_port,
    )
    code = 0
    while stop.signal is None:
        failure = _deploy_failure(names)
        if failure:
            log.error("img2vec: %s", failure)
            code = 1
            break
        time.sleep(1.0)
    stopping = time.monotonic()
    if stop.signal is not None:
        drained = _drain(handle, args.accept, args.grace)
        log.info(
            "img2vec: %s in %.1f s; shutting down",
            "drained" if drained else "grace period over",
            time.monotonic() - stopping,
        )
    ours = {p.pid for p in psutil.Process().children(recursive=True)}
    if address != "local":
        # Serve lives on a cluster we only joined: stop what we deployed there.
        serve.shutdown()
    # On our own local Ray, Serve's graceful shutdown adds nothing after our drain but time
    # (measured: 2.5-4 s of its replicas' and controller's shutdown loops, which pushed a
    # container's stop past Docker's 10 s grace): stopping Ray ends every replica, and
    # nothing is in flight any more.
    ray.shutdown()
    _wait_for_descendants(ours)
    shutil.rmtree(haproxy_files, ignore_errors=True)
    log.info("img2vec: stopped %.1f s after the signal", time.monotonic() - stopping)
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", default="serve_config.yaml")
    parser.add_argument(
        "--port",
        type=int,
        default=int(os.environ["IMG2VEC_PORT"]) if os.environ.get("IMG2VEC_PORT") else None,
        help="HTTP port, overriding the config's (env IMG2VEC_PORT)",
    )
    parser.add_argument("--host", default=os.environ.get("IMG2VEC_HOST") or None)
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
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
