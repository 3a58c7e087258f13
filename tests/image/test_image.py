"""The Docker image, built from this checkout and run the way Weaviate's compose file runs it,
with whichever engine this machine has (docker, else podman). `make image-test`; skipped, with
the reason, where neither is installed (`bash ../shared/tools/container-engine.sh` sets podman
up on these machines). Not part of `make test`: the build takes minutes and gigabytes.

Run: a 1 GB /dev/shm (cluster/compose), ENABLE_CUDA=0, the port published on loopback only,
the calibrated random ResNet50 mounted read-only as the weights (no download here). Checked:
ready within Weaviate's 120 s, the old container's API and the same vectors as the library,
ENABLE_CUDA's mapping, the user, the HEALTHCHECK, no object-store warning, and `stop` with
Docker's default 10 s grace under load: exit 0, every request in flight answered."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import uuid
from collections import Counter
from pathlib import Path

import httpx
import pytest

from bench.processes import LOOPBACK, free_port, wait_ready
from tests.support.helpers import in_flight
from tests.support.images import b64, one_pixel_png
from tests.support.parity import check_parity
from tests.support.reference import ReferenceImg2Vec

ROOT = Path(__file__).resolve().parents[2]


def _engine() -> str | None:
    """The first of docker and podman that answers `info` (a docker client without a daemon,
    as on these machines, does not count)."""
    for name in ("docker", "podman"):
        path = shutil.which(name)
        if path and subprocess.run([path, "info"], capture_output=True, timeout=60).returncode == 0:
            return path
    return None


ENGINE = _engine()
TAG = "img2vec:image-test"
GRACE_S = 10  # Docker's default for `docker stop`
WEIGHTS_IN_IMAGE = "/weights/resnet50.pth"

pytestmark = pytest.mark.skipif(
    ENGINE is None,
    reason="no working container engine (docker or podman) on this machine; "
    "bash ../shared/tools/container-engine.sh installs podman",
)


def engine(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    assert ENGINE is not None
    return subprocess.run(
        [ENGINE, *args], check=check, capture_output=True, text=True, timeout=timeout
    )


def podman() -> bool:
    return ENGINE is not None and Path(ENGINE).name == "podman"


@pytest.fixture(scope="module")
def image() -> dict[str, float]:
    """Built once per run; its build time and size are printed for the record."""
    extra = ["--pull=never", "--format", "docker", "--network=host"] if podman() else []
    started = time.monotonic()
    build = subprocess.run(
        [ENGINE, "build", *extra, "--build-arg", "BAKE_WEIGHTS=", "-t", TAG, str(ROOT)],  # type: ignore[list-item]
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    took = time.monotonic() - started
    size = int(engine("image", "inspect", "--format", "{{.Size}}", TAG).stdout.strip())
    print(f"\nimage {TAG}: built in {took:.0f} s, {size / 1e9:.2f} GB")
    return {"build_s": took, "size_bytes": size}


@pytest.fixture(scope="module")
def container(image, resnet50_file, tmp_path_factory):
    name = f"i2v-test-{uuid.uuid4().hex[:8]}"
    port = free_port()
    started = time.monotonic()
    engine(
        "run", "-d", "--name", name,
        "-p", f"{LOOPBACK}:{port}:8080",
        "--shm-size=1g",
        "-e", "ENABLE_CUDA=0",
        "-e", f"IMG2VEC_WEIGHTS={WEIGHTS_IN_IMAGE}",
        "-v", f"{resnet50_file}:{WEIGHTS_IN_IMAGE}:ro",
        TAG,
    )  # fmt: skip
    url = f"http://{LOOPBACK}:{port}"
    try:
        wait_ready(url, timeout_s=120)  # Weaviate gives up after 120 s
        print(f"\ncontainer ready in {time.monotonic() - started:.1f} s")
        yield name, url
    finally:
        logs = engine("logs", name, check=False)
        saved = tmp_path_factory.mktemp("image") / "container.log"
        saved.write_text(logs.stdout + logs.stderr)
        print(f"\ncontainer log: {saved}")
        engine("rm", "-f", "-t", "0", name, check=False)


def test_the_image_answers_like_the_container_it_replaces(container):
    _, url = container
    body = json.dumps({"id": f"{uuid.uuid4()}_0", "image": b64(one_pixel_png())})
    r = httpx.post(url + "/vectors", content=body, timeout=60)  # no Content-Type, as Weaviate
    assert r.status_code == 200, r.text
    assert r.json()["dim"] == 2048 and len(r.json()["vector"]) == 2048
    assert httpx.post(url + "/vectors/", content=body, timeout=60).status_code == 200
    bad = httpx.post(url + "/vectors", content=json.dumps({"id": "x", "image": "@@"}), timeout=60)
    assert bad.status_code == 400 and set(bad.json()) == {"error"}
    assert httpx.get(url + "/.well-known/live").status_code == 204
    assert httpx.get(url + "/meta").json()["device"] == "cpu"


def test_the_image_gives_the_librarys_vectors(container, resnet50_file, photos):
    _, url = container
    check_parity(url, ReferenceImg2Vec("resnet50", resnet50_file), photos, 2048)


def test_the_image_runs_as_its_own_user_and_reports_healthy(container):
    name, _ = container
    assert engine("exec", name, "id", "-u").stdout.strip() == "10001"
    if podman():
        assert engine("healthcheck", "run", name, check=False).returncode == 0
    else:
        deadline = time.monotonic() + 60
        status = ""
        while time.monotonic() < deadline and status != "healthy":
            status = engine("inspect", "--format", "{{.State.Health.Status}}", name).stdout.strip()
            time.sleep(1)
        assert status == "healthy"


def test_the_object_store_fits_the_documented_shm_size(container):
    name, _ = container
    logs = engine("logs", name, check=False)
    text = logs.stdout + logs.stderr
    assert "to fit in /dev/shm" in text
    assert "harm performance" not in text, text[-3000:]


def test_enable_cuda_picks_the_config_in_the_image(image):
    code = (
        "import os; from deployments.ops.container import settings; "
        "print(settings(os.environ)[1][3], settings(os.environ)[0].get('IMG2VEC_DEVICE'))"
    )
    for value, expected in (("0", "serve_config.yaml cpu"), ("1", "serve_config.gpu.yaml cuda")):
        out = engine(
            "run", "--rm", "--entrypoint", "python", "-e", f"ENABLE_CUDA={value}", TAG, "-c", code
        )
        assert out.stdout.strip() == expected


def test_the_same_image_serves_multi2vec_clip_with_one_variable(image, clip_dir):
    """IMG2VEC_MODULE=multi2vec-clip: Weaviate's CLIP protocol on port 8080, the model a
    directory mounted read-only (what the container's download.py stores), ready within 120 s,
    vectors and JSON errors as the library's tests check them."""
    subprocess.run(["chmod", "-R", "a+rX", str(clip_dir)], check=True)
    name = f"i2v-clip-{uuid.uuid4().hex[:8]}"
    port = free_port()
    engine(
        "run", "-d", "--name", name,
        "-p", f"{LOOPBACK}:{port}:8080",
        "--shm-size=1g",
        "-e", "ENABLE_CUDA=0",
        "-e", "IMG2VEC_MODULE=multi2vec-clip",
        "-e", "IMG2VEC_WEIGHTS=/models/clip",
        "-v", f"{clip_dir}:/models/clip:ro",
        TAG,
    )  # fmt: skip
    url = f"http://{LOOPBACK}:{port}"
    try:
        wait_ready(url, timeout_s=120)
        body = json.dumps({"texts": ["a cat"], "images": [b64(one_pixel_png())]})
        r = httpx.post(url + "/vectorize", content=body, timeout=60)
        assert r.status_code == 200, r.text
        assert len(r.json()["textVectors"][0]) == len(r.json()["imageVectors"][0]) == 32
        bad = httpx.post(url + "/vectorize", content='{"images": ["@@"]}', timeout=60)
        assert bad.status_code == 400 and "images[0]" in bad.json()["error"]
        assert httpx.get(url + "/meta", timeout=30).json()["protocol"] == "multi2vec-clip"
    finally:
        logs = engine("logs", name, check=False)
        print((logs.stdout + logs.stderr)[-2000:])
        engine("rm", "-f", "-t", "0", name, check=False)


def test_stop_with_the_default_grace_drains_and_exits_0(container):
    """Last in this module: `docker stop` (SIGTERM, SIGKILL after 10 s) under load ends with
    exit 0, and every request in flight gets an answer (200, or a JSON 503 once draining)."""
    name, url = container
    threads, results = in_flight(url, 24, timeout_s=60)
    time.sleep(1.0)
    started = time.monotonic()
    engine("stop", "-t", str(GRACE_S), name, timeout=GRACE_S + 60)
    took = time.monotonic() - started
    for t in threads:
        t.join(60)
    code = engine("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip()
    statuses = Counter(r if isinstance(r, str) else r[0] for r in results)
    print(f"\nstop under load: {took:.1f} s, exit {code}, in flight: {dict(statuses)}")
    assert code == "0", f"exit {code} after {took:.1f} s (137: killed at the grace period)"
    assert took < GRACE_S
    assert set(statuses) <= {200, 503}, statuses
    assert all(r[1].startswith("application/json") for r in results if not isinstance(r, str))
