"""What one ingress replica costs: the import in a fresh interpreter (time, peak RSS, whether
torch came with it) and the resident memory of a live Ingress replica in a real Serve instance.

The ingress is the deployment that scales with request rate (up to 8 replicas per node in the
GPU config), so what it drags in is paid many times over. Run: `python -m bench.ingress`.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_PROBE = """
import resource, sys, time
t = time.perf_counter()
import deployments.edge.neural
took = time.perf_counter() - t
print({"import_s": took, "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
       "torch_imported": "torch" in sys.modules})
"""


def import_cost(repeats: int = 5) -> dict:
    """Fresh interpreters importing the ingress module: median time, peak RSS."""
    runs = []
    for _ in range(repeats):
        out = subprocess.run(
            [sys.executable, "-c", _PROBE], cwd=ROOT, capture_output=True, text=True, check=True
        )
        runs.append(eval(out.stdout.strip().splitlines()[-1]))  # our own literal dict
    return {
        "import_s_median": round(statistics.median(r["import_s"] for r in runs), 3),
        "max_rss_mb_median": round(statistics.median(r["max_rss_mb"] for r in runs), 1),
        "torch_imported": runs[0]["torch_imported"],
    }


def _app_config(ingress_replicas: int) -> object:
    from tests.support.service import small_app_config

    return small_app_config(
        "footprint", "/", [{"name": "Ingress", "num_replicas": ingress_replicas}]
    )


def _running(deployment: str) -> int:
    from ray import serve

    app = serve.status().applications.get("footprint")
    if app is None or deployment not in app.deployments:
        return 0
    return app.deployments[deployment].replica_states.get("RUNNING", 0)


def live_replica() -> dict:
    """RSS of the Ingress and Embedder replicas of a running application (random MobileNetV2),
    after a few requests; whether libtorch is mapped into the ingress process; and how long a
    second Ingress replica takes to start (a scale-up from one to two)."""
    import base64
    import io

    import httpx
    from PIL import Image
    from ray import serve
    from ray.serve._private.api import serve_start

    from tests.support.service import ray_serve, rss_mb, wait_ready

    img = io.BytesIO()
    Image.new("RGB", (64, 48), (10, 200, 30)).save(img, "PNG")
    body = json.dumps({"id": "x", "image": base64.b64encode(img.getvalue()).decode()})
    with ray_serve(num_cpus=4) as instance:
        client = serve_start()
        client.deploy_apps(_app_config(1), _blocking=True)
        url = instance.base_url
        wait_ready(url)
        for _ in range(5):
            assert httpx.post(url + "/vectors", content=body, timeout=60).status_code == 200
        roles = {}
        for pid in instance.replica_pids("footprint"):
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            role = "ingress" if "Ingress" in cmdline else "embedder"
            maps = Path(f"/proc/{pid}/maps").read_text()
            roles[role] = {"rss_mb": round(rss_mb(pid), 1), "libtorch": "libtorch" in maps}
        starts = []
        for _ in range(3):
            started = time.perf_counter()
            client.deploy_apps(_app_config(2), _blocking=False)
            while _running("Ingress") < 2:
                time.sleep(0.05)
            starts.append(time.perf_counter() - started)
            client.deploy_apps(_app_config(1), _blocking=False)
            while _running("Ingress") > 1:
                time.sleep(0.1)
            time.sleep(2)
        serve.delete("footprint")
    return {**roles, "second_ingress_start_s_median": round(statistics.median(starts), 2)}


def main() -> None:
    result = {"import": import_cost(), "live": live_replica()}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
