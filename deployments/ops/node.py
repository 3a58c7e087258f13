"""The one machine the launcher runs the service on: which Ray it starts or joins, the record
of a dead cluster it clears, the environment Ray's processes get (serve.env and the
single-node settings), the object store's size, and the config's port and host overrides."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import tempfile
from collections.abc import Mapping, MutableMapping
from pathlib import Path

import yaml

log = logging.getLogger("img2vec.launch")


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


# How long a direct-ingress replica being removed (a scale-down, a redeploy) keeps serving
# after Serve stops routing to it, so that HAProxy has reloaded without it first. One node's
# HAProxy reloads within a second of a change (Serve coalesces changes for 0.1 s); Ray's default
# of 30 s is for HAProxies on other nodes. At 0 (what the launcher once set, for its own stop),
# a scale-down under load dropped 1 request in 6,524: HAProxy still sent it to the replica.
MIN_DRAINING_S = 5


def single_node_settings(files: str, local: bool = True) -> dict[str, str]:
    """Ray Serve settings that hold for the one node the launcher runs (variables already set
    win):
    - a replica being removed keeps serving for MIN_DRAINING_S. The launcher's own stop does
      not wait for it: it drains every replica itself and then stops Ray directly.
    - HAProxy's files (config, admin socket, server state) go to `files`, a directory of this
      run's own, not Ray's default /tmp/haproxy-serve, which two services on one machine
      would share.
    - on its own local Ray (`local`), Ray's processes listen on loopback only: with
      RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 Ray takes 127.0.0.1 as the node's address, as it
      does on a laptop, instead of the machine's network address, and binds its GCS, raylet,
      agents, dashboard and workers there. What Serve binds to all interfaces regardless is in
      docs/security.md."""
    settings = {
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": str(MIN_DRAINING_S),
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": f"{files}/haproxy.cfg",
        "RAY_SERVE_HAPROXY_SOCKET_PATH": f"{files}/admin.sock",
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": files,
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": f"{files}/server-state",
    }
    if local:
        settings["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    return settings


# Ray's token authentication (Ray >= 2.52; on by default for a local Ray from 2.60). Off, any
# host that reaches a replica's gRPC port (bound on every interface by Serve 2.60 whatever it
# is told, docs/security.md#single-node) can have it unpickle what it sends: code execution.
RAY_AUTH_MODE = "RAY_AUTH_MODE"
ALLOW_AUTH_OFF = "IMG2VEC_ALLOW_RAY_AUTH_OFF"


def auth_refusal(env: Mapping[str, str]) -> str | None:
    """Why the launcher will not start with this environment, or None: Ray's token switched
    off (RAY_AUTH_MODE=disabled) without IMG2VEC_ALLOW_RAY_AUTH_OFF=1 saying it is meant."""
    mode = env.get(RAY_AUTH_MODE, "").strip().lower()
    if mode != "disabled" or env.get(ALLOW_AUTH_OFF, "").strip() == "1":
        return None
    return (
        f"{RAY_AUTH_MODE}=disabled switches Ray's token authentication off: every Serve "
        "replica's gRPC port (on all interfaces) would then unpickle, that is run, what any "
        "host that reaches it sends (docs/security.md#single-node). Unset it (Ray's token is "
        f"the default), or set {ALLOW_AUTH_OFF}=1 to start without it all the same."
    )


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


def is_loopback(host: str | None) -> bool:
    """Whether `host` is an address of this machine only (127.0.0.0/8, ::1, localhost)."""
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


HAPROXY = "RAY_SERVE_ENABLE_HA_PROXY"


def keep_on_loopback(env: MutableMapping[str, str], explicit: set[str], host: str | None) -> bool:
    """On a loopback address, HAProxy stays off unless the environment asked for it itself:
    Ray 2.60's HAProxy binds its stats page and Prometheus port on every interface, whatever
    the service's address (its template: `bind *:`), so serve.env's HAProxy would open two
    ports to the network beside a service kept on loopback. Serve's own proxy then binds
    where the service does. True where it turned HAProxy off."""
    if not is_loopback(host) or HAPROXY in explicit or env.get(HAPROXY) != "1":
        return False
    env[HAPROXY] = "0"
    return True


def load_config(path: Path, port: int | None, host: str | None) -> dict:
    config = yaml.safe_load(path.read_text())
    http = dict(config.get("http_options") or {})
    if port is not None:
        http["port"] = port
    if host is not None:
        http["host"] = host
    config["http_options"] = http
    return config


def prepare_environment(env_file: Path, local: bool, host: str | None) -> str:
    """serve.env, then (on its own local Ray) the single-node settings, into this process's
    environment, which Ray's processes inherit; returns HAProxy's directory. A service on
    loopback runs without serve.env's HAProxy unless the environment asks for it
    (`keep_on_loopback`)."""
    explicit = set(os.environ)
    if env_file.is_file():
        for key, value in read_env_file(env_file).items():
            os.environ.setdefault(key, value)
    if keep_on_loopback(os.environ, explicit, host):
        log.info(
            "img2vec: on %s, Serve's proxy instead of HAProxy, whose stats and metrics ports "
            "would listen on every interface (--host 0.0.0.0 / IMG2VEC_HOST to serve other "
            "hosts, with HAProxy)",
            host,
        )
    haproxy_files = tempfile.mkdtemp(prefix="img2vec-haproxy-")
    for key, value in single_node_settings(haproxy_files, local).items():
        os.environ.setdefault(key, value)
    return haproxy_files


def start_ray(address: str, metrics_port: int) -> str | None:
    """Join the cluster at `address`, or start a local Ray sized to /dev/shm; returns the
    address of the local Ray's dashboard (what Ray's CLI talks to), if it runs one."""
    import ray

    if address != "local":
        log.info("img2vec: joining the Ray cluster at %s", address)
        ray.init(address=address, namespace="serve")
        return None
    clear_stale_record()
    from ray._common.utils import get_system_memory

    store = object_store_bytes(shm_free_bytes(), get_system_memory())
    if store is not None:
        log.info("img2vec: object store %d MB, to fit in /dev/shm", store // 2**20)
    context = ray.init(
        address="local",
        namespace="serve",
        object_store_memory=store,
        _metrics_export_port=metrics_port,
    )
    url = context.dashboard_url
    return f"http://{url}" if url and not url.startswith("http") else url or None


def ray_cli_hint(dashboard: str | None, config: str) -> str | None:
    """The line that tells an operator how to point Ray's CLI (`serve status`, `serve config`,
    `serve deploy`) at this Ray: it has Ray's token, and the CLI sends it only when told
    RAY_AUTH_MODE=token (Ray 2.60 reads the token from ~/.ray/auth_token then)."""
    if dashboard is None:
        return None
    return (
        f"img2vec: Ray's CLI for this service: export RAY_AUTH_MODE=token "
        f"RAY_DASHBOARD_ADDRESS={dashboard}; then `serve status`, `serve config`, "
        f"`serve deploy {config}` (user_config applied live)"
    )
