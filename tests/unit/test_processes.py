"""bench/processes.py, the harness that starts every server the tests and benchmarks run: a
server that dies or never gets ready is reported with the end of its own log (CI keeps no
other trace of why)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bench.processes import free_port, started, wait_ready


def test_a_server_that_exits_before_it_is_ready_is_reported_with_its_logs_last_lines(tmp_path):
    log = tmp_path / "server.log"
    cmd = [
        sys.executable,
        "-c",
        "print('first'); print('weights: no such file', flush=True); raise SystemExit(3)",
    ]
    with started(cmd, {}, log, tmp_path) as proc:
        proc.wait(30)
        with pytest.raises(RuntimeError) as caught:
            wait_ready(f"http://127.0.0.1:{free_port()}", timeout_s=30, proc=proc, log=log)
    message = str(caught.value)
    assert "exited with 3" in message
    assert message.endswith("first\nweights: no such file")


def test_a_server_that_never_answers_times_out_with_its_log(tmp_path):
    log = tmp_path / "server.log"
    log.write_text("loading...\n")
    with pytest.raises(TimeoutError, match=r"loading\.\.\."):
        wait_ready(f"http://127.0.0.1:{free_port()}", timeout_s=1, log=log)


def test_without_a_log_the_error_is_the_bare_reason(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(1)"])
    proc.wait(30)
    with pytest.raises(RuntimeError) as caught:
        wait_ready(f"http://127.0.0.1:{free_port()}", timeout_s=30, proc=proc)
    assert str(caught.value) == "server exited with 1 before it was ready"


def test_the_benchmarks_baseline_starts_ready_at_the_workers_level_and_stops(tmp_path, monkeypatch):
    """bench.processes.baseline_server, as bench.run and bench.weaviate start the
    img2vec-pytorch stand-in (bench/baseline.py): ready on loopback, at WORKER_NICE below
    this process, gone afterwards, and so is the folder it writes each image into."""
    import os
    from pathlib import Path

    import httpx

    from bench.processes import LOOPBACK, WORKER_NICE, baseline_server

    root = Path(__file__).resolve().parents[2]
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setenv("TMPDIR", str(temp))
    with baseline_server("bench.baseline", [], tmp_path / "baseline.log", root) as (url, proc):
        assert [p.name.split("-")[1] for p in temp.iterdir()] == ["baseline"]
        assert url.startswith(f"http://{LOOPBACK}:")
        assert httpx.get(url + "/.well-known/ready", timeout=10).status_code == 204
        ours = os.getpriority(os.PRIO_PROCESS, 0)
        assert os.getpriority(os.PRIO_PROCESS, proc.pid) == min(19, ours + WORKER_NICE)
    assert proc.poll() is not None
    assert list(temp.iterdir()) == []
