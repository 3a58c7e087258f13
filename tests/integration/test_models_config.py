"""serve_config.models.yaml: several models on their own route prefixes, each answering with
its own model and /meta, deployed through the declarative path `serve deploy` uses. The file's
resources are for GPU nodes; on this CPU-only test machine they are scaled down and the
weights are random, nothing else changes."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import httpx
import yaml
from ray import serve
from ray.serve._private.api import serve_start
from ray.serve.schema import ServeDeploySchema

from img2vec.models.weights import get_spec, preset_of
from tests.support.images import b64, one_pixel_png
from tests.support.service import wait_ready

CONFIG = Path(__file__).resolve().parents[2] / "serve_config.models.yaml"


PREFIX = "/models-config"  # other applications of this test instance hold "/"


# Each multi2vec-clip application's family, as its weights name it, and /meta says it.
FAMILY_OF = {
    "sentence-transformers/": "sentence-transformers",
    "google/siglip2-": "siglip",
    "facebook/metaclip-2-": "metaclip_2",
    "open_clip:": "openclip",
}


def family_of(weights: str) -> str:
    return next(family for prefix, family in FAMILY_OF.items() if weights.startswith(prefix))


def on_this_machine(config: dict, dirs: dict[str, Path]) -> dict:
    """Random weights of each application's family, resources scaled to 2 CPU cores."""
    for app in config["applications"]:
        app["route_prefix"] = PREFIX + app["route_prefix"].rstrip("/")
        clip = app["import_path"].endswith("build_clip_app")
        weights = app["args"]["weights"]
        app["args"]["weights"] = str(dirs[family_of(weights)]) if clip else "random"
        app["args"]["torch_threads"] = 1
        for dep in app["deployments"]:
            dep["ray_actor_options"] = {"num_cpus": 0.5, "num_gpus": 0}
            if "autoscaling_config" in dep:
                dep["autoscaling_config"].update(min_replicas=1, max_replicas=1)
    return {"applications": config["applications"]}


def test_the_models_share_gpus_by_fraction():
    config = yaml.safe_load(CONFIG.read_text())
    prefixes = [app["route_prefix"] for app in config["applications"]]
    assert len(prefixes) >= 2 and len(set(prefixes)) == len(prefixes) and "/" in prefixes
    gpus = [
        dep["ray_actor_options"]["num_gpus"]
        for app in config["applications"]
        for dep in app["deployments"]
        if dep["name"] == "Embedder"
    ]
    assert all(0 < g < 1 for g in gpus) and sum(gpus) <= 1


def test_each_application_answers_with_its_own_model(serve_instance, request):
    config = yaml.safe_load(CONFIG.read_text())
    apps = {app["name"]: copy.deepcopy(app) for app in config["applications"]}
    dirs = {
        "sentence-transformers": request.getfixturevalue("clip_dir"),
        **{
            family: request.getfixturevalue(f"{fixture}_dir")
            for family, fixture in [
                ("siglip", "siglip2"), ("metaclip_2", "metaclip2"), ("openclip", "openclip")
            ]
        },
    }  # fmt: skip
    client = serve_start()
    schema = ServeDeploySchema.model_validate(on_this_machine(config, dirs))
    try:
        # Not `_blocking`: Ray's client gives three applications 60 s to start, and on two
        # cores their warm-ups together take longer; each app's readiness is awaited below.
        client.deploy_apps(schema, _blocking=False)
        for name, app in apps.items():
            url = serve_instance.base_url + PREFIX + app["route_prefix"].rstrip("/")
            wait_ready(url, timeout_s=180)
            if app["import_path"].endswith("build_clip_app"):
                # Weaviate's multi2vec-clip: CLIP_INFERENCE_API (with the prefix) + "/vectorize".
                body = json.dumps({"texts": ["a cat"], "images": [b64(one_pixel_png())]})
                r = httpx.post(url + "/vectorize", content=body, timeout=60)
                assert r.status_code == 200, r.text
                meta = httpx.get(url + "/meta", timeout=30).json()
                assert meta["protocol"] == "multi2vec-clip", name
                if family_of(app["args"]["weights"]) != "sentence-transformers":
                    assert meta["family"] == family_of(app["args"]["weights"]), name
                continue
            model = app["args"]["model"]
            meta = httpx.get(url + "/meta", timeout=30).json()
            assert meta["model"] == model and meta["preprocess"] == preset_of(model), name
            # Weaviate's string join: IMAGE_INFERENCE_API (with the prefix) + "/vectors".
            body = json.dumps({"id": name, "image": b64(one_pixel_png())})
            r = httpx.post(url + "/vectors", content=body, timeout=60)
            assert r.status_code == 200 and r.json()["dim"] == get_spec(model).dim, name
    finally:
        for name in apps:
            serve.delete(name)
