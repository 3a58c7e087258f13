"""Starting the launcher (and `serve run`) as a user would, in processes of their own, and
stopping exactly what a test started: what the e2e test modules share."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.processes import MARKER_VAR, front_end_as_served, marked_pids, own_ports
from tests.support.helpers import in_flight
from tests.support.service import LOOPBACK, free_port

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "serve_config.yaml"


def launch_cmd(port: int, metrics_port: int, config: Path = CONFIG) -> list[str]:
    return [
        sys.executable,
        "-m",
        "deployments.ops.launch",
        str(config),
        "--host",
        LOOPBACK,
        "--port",
        str(port),
        "--metrics-port",
        str(metrics_port),
    ]


def launcher_env(**extra: str) -> dict[str, str]:
    """The launcher's environment as the image and the systemd unit run it: HAProxy in front
    as serve.env says (`front_end_as_served`)."""
    base = {**os.environ, **own_ports(), **front_end_as_served(ROOT)}
    return {**base, "IMG2VEC_WEIGHTS": "random", "RAY_ADDRESS": "local", **extra}


# Ray's own SIGTERM path (`serve run`): every process it started is gone within this after the
# command exits (measured 2026-11-30 on the 2-core machine under the test suite: see the
# README's "Stopping"); the launcher waits for them itself before it exits.
RAY_STOP_BOUND_S = 15.0
# Docker's default grace between SIGTERM and SIGKILL (`docker stop`); Kubernetes gives 30 s.
STOP_GRACE_S = 10.0
# What the launcher may add after its drain: stopping Ray and its processes (2.6-3.5 s measured
# on the 2-core machine), with the exit of the launcher itself.
STOP_AFTER_DRAIN_S = 6.0


def stale_record(ray_tmp: str) -> str:
    """What a Ray cluster ended by SIGKILL leaves: `ray_current_cluster` naming a GCS that is
    no longer there (a free loopback port: nothing answers)."""
    address = f"{LOOPBACK}:{free_port()}"
    record = Path(ray_tmp) / "ray" / "ray_current_cluster"
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(address)
    return address


RAY_TMP: dict[str, str] = {}  # marker -> the Ray temp dir its start was given


def start(cmd: list[str], env: dict[str, str], log: Path) -> tuple[subprocess.Popen, str]:
    """In its own Ray temp dir (removed by _cleanup): a cluster this test has to kill leaves
    its record there, where no later start looks."""
    marker = uuid.uuid4().hex
    ray_tmp = env.get("RAY_TMPDIR") or tempfile.mkdtemp(prefix="i2v-ray-", dir="/tmp")
    out = log.open("wb")
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env={**env, MARKER_VAR: marker, "RAY_TMPDIR": ray_tmp},
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    RAY_TMP[marker] = ray_tmp
    return proc, marker


def gone_within(marker: str, bound_s: float) -> tuple[list[int], float]:
    """Waits up to `bound_s` for every process carrying `marker` to exit; returns those still
    there and how long it waited."""
    started_at = time.monotonic()
    while (left := marked_pids(marker)) and time.monotonic() - started_at < bound_s:
        time.sleep(0.2)
    return left, time.monotonic() - started_at


def cleanup(proc: subprocess.Popen, marker: str) -> list[int]:
    """Whatever the test left: killed, and returned so that the test can fail on it."""
    left = marked_pids(marker)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    shutil.rmtree(RAY_TMP.pop(marker), ignore_errors=True)
    return left


@dataclass
class Stopped:
    code: int  # the launcher's exit code
    took_s: float  # from the stop to its exit
    results: list[object]  # each in-flight request's (status, content type) or exception name
    left_at_exit: list[int]  # marked processes still there when it exited


def stop_under_load(
    proc: subprocess.Popen,
    marker: str,
    url: str,
    n: int,
    stop: Callable[[], None],
    settle_s: float = 0.5,
    timeout_s: float = 90,
) -> Stopped:
    """`n` requests in flight (tests/support/helpers.in_flight), then `stop()` after
    `settle_s`; waits for the launcher's exit and for every request's answer."""
    threads, results = in_flight(url, n)
    time.sleep(settle_s)
    stop()
    stopping = time.monotonic()
    code = proc.wait(timeout_s)
    took = time.monotonic() - stopping
    left = marked_pids(marker)
    for t in threads:
        t.join(120)
    return Stopped(code, took, results, left)
