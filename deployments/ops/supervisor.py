"""The launcher's two processes, so that a service manager can stop it however it stops things.

`python -m deployments.ops.launch` starts as the *supervisor*: a small process (no Ray) that runs
the *server* (the same module, which starts Ray and Serve and drains them) in a session of its
own, forwards the stop signals to it, serves the public metrics port, and exits with its code.

Why two: systemd (`KillMode=control-group`), supervisord's `stopasgroup`, `tini -g` and
`kill -- -PGID` send SIGTERM to the launcher's whole process group. Ray's own processes (GCS,
raylet, workers, HAProxy) were in that group, died at once, and left the launcher waiting 60 s
for a GCS that was gone, with HAProxy and replicas still running. In a session of their own,
only the supervisor gets the group's signal, and the server drains as on a plain SIGTERM.

The server side (`as_server`): it dies with the supervisor (PR_SET_PDEATHSIG: a SIGKILLed
supervisor must not leave a service running) and is a child subreaper (PR_SET_CHILD_SUBREAPER),
so that a Ray process orphaned by another's death (HAProxy when its manager dies) stays its
descendant, where the final sweep finds it. Linux only; elsewhere both are skipped.
"""

from __future__ import annotations

import contextlib
import ctypes
import http.client
import http.server
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from types import FrameType

import psutil

log = logging.getLogger("img2vec.launch")

# Set in the server's environment: the supervisor's pid.
SERVER_ENV = "IMG2VEC_LAUNCH_SUPERVISOR"
# The signals a manager stops with; SIGHUP (a closed terminal) stops too.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36


def supervise(argv: Sequence[str], metrics: tuple[str, int, int] | None) -> int:
    """Run the server (`python -m deployments.ops.launch argv`) in a new session and wait for it;
    `metrics`: (host, public port, the server's loopback port) to forward scrapes between.
    Returns the server's exit code (128 + N if a signal N ended it)."""
    server = subprocess.Popen(
        [sys.executable, "-m", "deployments.ops.launch", *argv],
        env={**os.environ, SERVER_ENV: str(os.getpid())},
        start_new_session=True,
    )

    def forward(signum: int, frame: FrameType | None) -> None:
        # SIGINT as SIGINT (Ctrl-C), anything else as SIGTERM: the server drains on both.
        with contextlib.suppress(ProcessLookupError):
            os.kill(server.pid, signal.SIGINT if signum == signal.SIGINT else signal.SIGTERM)

    for signum in STOP_SIGNALS:
        signal.signal(signum, forward)
    if metrics is not None:
        serve_metrics(*metrics)
    while True:
        # As PID 1 (a container without an init) every orphan of the container becomes our
        # child: reap them all, and return when the server is the one that exited.
        pid, status = os.waitpid(-1 if os.getpid() == 1 else server.pid, 0)
        if pid == server.pid:
            code = os.waitstatus_to_exitcode(status)
            return code if code >= 0 else 128 - code


def as_server() -> None:
    """In the server process: end with the supervisor, and keep orphaned descendants."""
    supervisor = os.environ.get(SERVER_ENV)
    if supervisor is None or not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    if os.getppid() != int(supervisor):  # it died before the prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def is_server() -> bool:
    return SERVER_ENV in os.environ


class _Scrapes(http.server.BaseHTTPRequestHandler):
    """GET <path> answered with what the same path answers on the node's own (loopback)
    metrics port."""

    upstream_port = 0

    def do_GET(self) -> None:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.upstream_port, timeout=10)
            conn.request("GET", self.path)
            answer = conn.getresponse()
            body, status = answer.read(), answer.status
            ctype = answer.getheader("Content-Type", "text/plain")
        except OSError as exc:
            body, status, ctype = f"metrics not available yet: {exc}\n".encode(), 503, "text/plain"
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def serve_metrics(host: str, port: int, upstream_port: int) -> None:
    """The node's Prometheus metrics on host:port, from the Ray agent's loopback port: Ray's
    own processes all listen on loopback on a single node (deployments/ops/launch.py), and the
    metrics port is the one of them that a scraper elsewhere may need. One scrape every few
    seconds: a thread of its own is plenty."""
    handler = type("Scrapes", (_Scrapes,), {"upstream_port": upstream_port})
    server = http.server.ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()


# -- the server's descendants, at its stop -------------------------------------------


def wait_for_descendants(before: set[int], timeout_s: float = 20, say: bool = True) -> None:
    """Ray's shutdown signals its processes and returns; wait until they are gone (and end
    the stragglers), so that nothing outlives the launcher."""
    me = psutil.Process()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        _reap(me)
        if not _descendants(me, before):
            return
        time.sleep(0.2)
    for proc in _descendants(me, before):
        with contextlib.suppress(psutil.Error):
            if say:
                log.warning("killing %s (pid %d), still running", proc.name(), proc.pid)
            proc.kill()
    time.sleep(0.2)
    _reap(me)


def _reap(me: psutil.Process) -> None:
    """Collect the exit of every child that has exited: as a subreaper this process inherits
    the orphans of Ray's processes (deployments/ops/supervisor.py), and Ray is done with them."""
    for child in me.children():
        with contextlib.suppress(psutil.Error, ChildProcessError):
            if child.status() == psutil.STATUS_ZOMBIE:
                os.waitpid(child.pid, os.WNOHANG)


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


def end_processes(pids: set[int], grace_s: float = 3.0) -> None:
    """SIGTERM to each process, SIGKILL to those still there after `grace_s`."""
    me = psutil.Process()
    left = _descendants(me, pids)
    log.info("img2vec: ending the %d processes left of Ray", len(left))
    for proc in left:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    wait_for_descendants(pids, timeout_s=grace_s, say=False)
