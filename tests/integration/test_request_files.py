"""docs/architecture.md's files of a request are counted, not estimated: the files whose code
runs for one request of each protocol, traced on every thread while the whole application
serves it in one process (tests/support/request_files.py), are the files the architecture
lists, as many as it says."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LEAD = "The files whose code runs for one request"


def documented() -> dict[str, tuple[int, set[str]]]:
    """route -> (the count the paragraph gives, the files it lists)."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    assert LEAD in text, "docs/architecture.md no longer lists a request's files"
    paragraph = text.split(LEAD, 1)[1].split("\n\n", 1)[0]
    found = {}
    for route, count, files in re.findall(r"`(/\w+)`\s(\d+):\s(.*?)(?:;|\.$)", paragraph, re.S):
        found[route] = (
            int(count),
            set(re.findall(r"`((?:img2vec|deployments)/[\w/]+\.py)`", files)),
        )
    return found


@pytest.mark.parametrize("route", ["/vectors", "/vectorize"])
def test_the_files_a_request_runs_in_are_those_the_architecture_lists(route):
    run = subprocess.run(
        [sys.executable, "-m", "tests.support.request_files", route],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    traced = set(json.loads(run.stdout.strip().splitlines()[-1]))
    # The request's own path is traced, not only the edge: both replicas and the library.
    assert {"deployments/edge/edge.py", "deployments/model/models.py"} <= traced
    assert "img2vec/serving/batching.py" in traced
    count, listed = documented()[route]
    assert listed == traced, (sorted(listed - traced), sorted(traced - listed))
    assert count == len(traced)
