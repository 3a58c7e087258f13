"""How many CPUs this process may really use: its affinity mask (where the OS has one) and
its container's CPU quota (cgroup v2 `cpu.max`, or v1 `cpu.cfs_quota_us`), whichever is
smaller. `os.cpu_count()` alone counts the host's cores: inside a container limited to two
CPUs on a 64-core host, 64 torch threads would fight over two."""

from __future__ import annotations

import contextlib
import math
import os
import threading
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def available_cpus(cgroup_root: Path = CGROUP_ROOT) -> int:
    if hasattr(os, "sched_getaffinity"):
        count = len(os.sched_getaffinity(0))
    else:  # macOS, Windows
        count = os.cpu_count() or 1
    quota = cgroup_cpu_quota(cgroup_root)
    if quota is not None:
        count = min(count, max(1, math.ceil(quota)))
    return max(1, count)


def cgroup_cpu_quota(root: Path = CGROUP_ROOT) -> float | None:
    """CPUs' worth of time per period this cgroup may use, or None when unlimited/unknown."""
    try:
        v2 = (root / "cpu.max").read_text().split()
    except OSError:
        v2 = []
    if len(v2) == 2:
        if v2[0] == "max":
            return None
        return int(v2[0]) / int(v2[1])
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


# The OS-level names of the threads that do the work a request pays for anyway (decoding an
# image, the forward pass), so that `bench.where`, top -H and py-spy can tell them apart from
# the serving path's own cost. Threads that a named thread starts (torch's OpenMP team) inherit
# its name on Linux.
DECODE_THREAD = "i2v-decode"
FORWARD_THREAD = "i2v-forward"


def name_this_thread(name: str) -> None:
    """Sets the calling thread's OS name (Linux: at most 15 bytes); a no-op elsewhere."""
    with contextlib.suppress(OSError):
        Path(f"/proc/self/task/{threading.get_native_id()}/comm").write_text(name[:15])


def as_decode_thread() -> None:
    """A decode pool's thread initializer: named `DECODE_THREAD`, so that `bench.where`
    counts its CPU as decoding, and at a lower CPU priority than the rest of the node. Where
    the model shares the CPU with decoding, its forward pass (whose threads wait on each
    other at every op) should not be the one that gets preempted; decoding still fills every
    idle cycle. Linux applies nice values per thread; elsewhere this is a no-op."""
    name_this_thread(DECODE_THREAD)
    with contextlib.suppress(OSError, AttributeError):
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + 4))
