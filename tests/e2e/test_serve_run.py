"""The main command, as a user runs it: `serve run serve_config.yaml`, in its own process."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from bench.processes import serve_env, started, wait_ready
from tests.conftest import b64, one_pixel_png
from tests.service import LOOPBACK, free_port

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "serve_config.yaml"


def load_config() -> dict:
    return yaml.safe_load(CONFIG.read_text())


def deployments(config: dict) -> dict[str, dict]:
    (app,) = config["applications"]
    return {d["name"]: d for d in app["deployments"]}


def test_config_is_the_documented_shape():
    config = load_config()
    assert config["http_options"] == {"host": "0.0.0.0", "port": 8000}
    (app,) = config["applications"]
    assert app["import_path"] == "deployments.app:build_app"
    assert app["route_prefix"] == "/"
    deps = deployments(config)
    assert set(deps) == {"Ingress", "Embedder"}
    for dep in deps.values():
        if "autoscaling_config" in dep:
            auto = dep["autoscaling_config"]
            assert 1 <= auto["min_replicas"] < auto["max_replicas"]  # else a dead setting
            assert auto["target_ongoing_requests"] > 0
        else:
            assert dep["num_replicas"] >= 1
        assert dep["max_queued_requests"] > 0
        assert "ray_actor_options" in dep
    embedder = deps["Embedder"]
    # Serve's default max_ongoing_requests (5) would cap every batch at 5.
    assert embedder["max_ongoing_requests"] >= 2 * embedder["user_config"]["max_batch_size"]
    assert embedder["ray_actor_options"].get("num_gpus", 0) == 0  # runs on a laptop as is


def test_config_args_are_valid_builder_args():
    from deployments.app import AppArgs

    (app,) = load_config()["applications"]
    AppArgs.model_validate(app["args"])


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> str:
    """`serve run` as `make serve` runs it (serve.env applied), on a copy of serve_config.yaml
    that differs only in binding to a free loopback port; IMG2VEC_WEIGHTS=random as the
    README's quick start says."""
    config = load_config()
    port = free_port()
    config["http_options"] = {"host": LOOPBACK, "port": port}
    path = tmp_path_factory.mktemp("config") / "serve_config.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {**os.environ, **serve_env(ROOT), "IMG2VEC_WEIGHTS": "random", "RAY_ADDRESS": "local"}
    serve_cli = str(Path(sys.executable).with_name("serve"))
    log = tmp_path_factory.mktemp("log") / "serve.log"
    with started([serve_cli, "run", str(path)], env, log, ROOT) as proc:
        url = f"http://{LOOPBACK}:{port}"
        wait_ready(url, timeout_s=240, proc=proc)
        yield url


def test_serve_run_answers_the_api(served):
    assert httpx.get(served + "/.well-known/live").status_code == 204
    assert httpx.get(served + "/.well-known/ready").status_code == 204
    body = json.dumps({"id": "e2e_0", "image": b64(one_pixel_png())})
    r = httpx.post(served + "/vectors", content=body, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["id"] == "e2e_0" and r.json()["dim"] == 2048
    meta = httpx.get(served + "/meta").json()
    assert meta["model"] == "resnet50" and meta["weights"] == "random"
    assert meta["batching"]["config"] == deployments(load_config())["Embedder"]["user_config"]
