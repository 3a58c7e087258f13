"""Weaviate's own server (`weaviate-server`, built from its Go module by `make weaviate`), started
on loopback the way its dev script runs it without Docker, with both image modules pointed at
inference services; stopped with everything it started. Used by tests/weaviate and
bench/weaviate.py.

Every port Weaviate opens is one of ours on 127.0.0.1 where Weaviate lets us say so (HTTP,
gRPC, its cluster's gossip, data and Raft ports), and its profiling listener (6060 on all
interfaces by default) is off: two of them, or one beside a user's, never clash."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.processes import LOOPBACK, free_port, started

ROOT = Path(__file__).resolve().parent.parent
# Weaviate gives its modules this long to answer ready at start, then exits (v1.39,
# adapters/handlers/rest/configure_api.go: a 120 s module context, polled once a second).
MODULE_START_S = 120.0


def server_path() -> Path:
    """The binary `make weaviate` built (the Makefile exports WEAVIATE_SERVER)."""
    path = os.environ.get("WEAVIATE_SERVER", "")
    if not path or not Path(path).is_file():
        raise FileNotFoundError(
            f"Weaviate's server not found (WEAVIATE_SERVER={path!r}): run `make weaviate` "
            "(or `make test`, which builds it first)"
        )
    return Path(path)


@dataclass(frozen=True)
class Weaviate:
    url: str  # REST, http://127.0.0.1:<port>
    port: int
    grpc_port: int
    proc: subprocess.Popen
    log: Path

    def client(self):  # -> weaviate.WeaviateClient (imported here: tests and bench only)
        import weaviate

        return weaviate.connect_to_local(host=LOOPBACK, port=self.port, grpc_port=self.grpc_port)

    def ready(self) -> bool:
        try:
            return httpx.get(self.url + "/v1/.well-known/ready", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, timeout_s: float = MODULE_START_S + 30) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.ready():
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"Weaviate exited with {self.proc.returncode} before it was ready; its log "
                    "ends:\n" + "\n".join(self.log_text().splitlines()[-30:])
                )
            if time.monotonic() > deadline:
                raise TimeoutError(f"Weaviate not ready after {timeout_s} s")
            time.sleep(0.25)


def weaviate_env(data: Path, port_map: Mapping[str, int], **modules: str) -> dict[str, str]:
    """What Weaviate reads: anonymous access, the two image modules, no telemetry, and its
    other listeners moved to free loopback ports. `modules`: IMAGE_INFERENCE_API and/or
    CLIP_INFERENCE_API (each enables its module), and anything else Weaviate reads (a caller's
    value wins)."""
    enabled = [
        module
        for module, api in (
            ("img2vec-neural", "IMAGE_INFERENCE_API"),
            ("multi2vec-clip", "CLIP_INFERENCE_API"),
        )
        if api in modules
    ]
    return {
        "PATH": os.environ.get("PATH", ""),
        "HOME": os.environ.get("HOME", "/tmp"),
        "PERSISTENCE_DATA_PATH": str(data),
        "AUTHENTICATION_ANONYMOUS_ACCESS_ENABLED": "true",
        "DEFAULT_VECTORIZER_MODULE": "none",
        "ENABLE_MODULES": ",".join(enabled),
        "CLUSTER_HOSTNAME": "node1",
        # Its gossip on loopback. (Not CLUSTER_IN_LOCALHOST: that makes a node look for its own
        # Raft RPC at the Raft port + 1, several nodes on one host, and a single node never
        # elects itself when RAFT_INTERNAL_RPC_PORT is elsewhere.)
        "CLUSTER_BIND_ADDR": LOOPBACK,
        "CLUSTER_ADVERTISE_ADDR": LOOPBACK,
        "DISABLE_TELEMETRY": "true",
        "GO_PROFILING_DISABLE": "true",
        "LOG_LEVEL": "info",
        "QUERY_DEFAULTS_LIMIT": "25",
        **{name: str(port) for name, port in port_map.items()},
        **modules,
    }


@contextlib.contextmanager
def running(workdir: Path, *, wait: bool = True, **modules: str) -> Iterator[Weaviate]:
    """Weaviate on free loopback ports, its data in `workdir`; stopped (SIGINT, then whatever
    is left killed) on the way out. With `wait`, yields once it answers ready, which it does
    only after every enabled module's inference service has (it polls them itself)."""
    port = free_port()
    ports = {
        "GRPC_PORT": free_port(),
        "CLUSTER_GOSSIP_BIND_PORT": free_port(),
        "CLUSTER_DATA_BIND_PORT": free_port(),
        "RAFT_PORT": free_port(),
        "RAFT_INTERNAL_RPC_PORT": free_port(),
    }
    data = workdir / "weaviate-data"
    data.mkdir(parents=True, exist_ok=True)
    cmd = [str(server_path()), "--scheme", "http", "--host", LOOPBACK, "--port", str(port)]
    env = weaviate_env(data, ports, **modules)
    with started(cmd, env, workdir / "weaviate.log", ROOT, stop_timeout_s=30) as proc:
        server = Weaviate(
            f"http://{LOOPBACK}:{port}", port, ports["GRPC_PORT"], proc, workdir / "weaviate.log"
        )
        if wait:
            server.wait_ready()
        yield server
