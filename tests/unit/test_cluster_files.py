"""The files under cluster/ say what cluster/README.md says: checked against Ray's own
schema where one ships (the cluster launcher), otherwise structurally."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import yaml
from ray.serve.schema import ServeDeploySchema

from deployments.ops.node import read_env_file

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster"
IMAGE = "ghcr.io/img2vec/img2vec:0.2.0"


def load(path: str) -> dict:
    return yaml.safe_load((CLUSTER / path).read_text())


def rayservice(variant: str = "") -> dict:
    return load(f"kuberay/rayservice{'.' + variant if variant else ''}.yaml")


def test_the_rayservice_uses_current_kuberay_fields_only():
    manifest = rayservice()
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] == "RayService"
    text = (CLUSTER / "kuberay" / "rayservice.yaml").read_text()
    for gone in (
        "v1alpha1",
        "serviceUnhealthySecondThreshold",
        "deploymentUnhealthySecondThreshold",
    ):
        assert gone not in text
    assert manifest["spec"]["upgradeStrategy"]["type"] == "NewCluster"


def test_both_rayservices_turn_on_rays_token_authentication():
    """KubeRay >= 1.5.1's authOptions: a Secret with a random token, RAY_AUTH_MODE=token and
    RAY_AUTH_TOKEN on every Ray container; nothing of ours turns it off again."""
    for variant in ("", "clip"):
        cluster = rayservice(variant)["spec"]["rayClusterConfig"]
        assert cluster["authOptions"] == {"mode": "token"}, variant
        assert tuple(int(p) for p in cluster["rayVersion"].split(".")) >= (2, 52)
        groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
        for group in groups:
            for container in group["template"]["spec"]["containers"]:
                names = {e["name"] for e in container.get("env", [])}
                assert not names & {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN"}, (variant, names)


def test_the_head_hosts_no_replica_and_the_gpu_workers_autoscale():
    cluster = rayservice()["spec"]["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] is True
    options = cluster["autoscalerOptions"]
    assert options["idleTimeoutSeconds"] > 0 and options["upscalingMode"] in {
        "Default",
        "Conservative",
        "Aggressive",
    }
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0" and head["rayStartParams"]["num-gpus"] == "0"
    (gpu,) = cluster["workerGroupSpecs"]
    assert 1 <= gpu["minReplicas"] <= gpu["replicas"] <= gpu["maxReplicas"]
    (container,) = gpu["template"]["spec"]["containers"]
    res = container["resources"]
    assert res["requests"]["nvidia.com/gpu"] == res["limits"]["nvidia.com/gpu"] == 1
    assert any(t["key"] == "nvidia.com/gpu" for t in gpu["template"]["spec"]["tolerations"])
    for group in (head, gpu):
        assert group["rayStartParams"]["metrics-export-port"] == "8080"
        (c,) = group["template"]["spec"]["containers"]
        assert c["image"] == IMAGE
        assert {"name": "metrics", "containerPort": 8080} in c["ports"]
        assert group["template"]["metadata"]["labels"]["app.kubernetes.io/part-of"] == "img2vec"
        # Ray reads serve.env's settings when it starts: every container carries them.
        env = {e["name"]: e["value"] for e in c["env"]}
        assert env == read_env_file(ROOT / "serve.env")


def test_serve_config_v2_is_a_valid_serve_config_with_one_gpu_per_model_replica():
    manifest = rayservice()
    config = yaml.safe_load(manifest["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(config)
    (app,) = config["applications"]
    deployments = {d["name"]: d for d in app["deployments"]}
    assert deployments["Embedder"]["ray_actor_options"]["num_gpus"] == 1
    workers = manifest["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    assert deployments["Embedder"]["autoscaling_config"]["max_replicas"] <= workers["maxReplicas"]
    assert deployments["Embedder"]["autoscaling_config"]["min_replicas"] >= 1


def test_the_clip_rayservice_serves_multi2vec_clip_with_the_same_shape():
    manifest, base = rayservice("clip"), rayservice()
    assert manifest["metadata"]["name"] == base["metadata"]["name"] + "-clip"
    config = yaml.safe_load(manifest["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(config)
    (app,) = config["applications"]
    (base_app,) = yaml.safe_load(base["spec"]["serveConfigV2"])["applications"]
    assert app["import_path"] == "deployments.app:build_clip_app" and "model" not in app["args"]
    assert app["deployments"] == base_app["deployments"]
    groups = manifest["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    assert all(
        c["image"] == IMAGE + "-clip" for g in groups for c in g["template"]["spec"]["containers"]
    )


def test_the_network_policy_admits_weaviate_to_the_serve_port_only():
    policy = load("kuberay/networkpolicy.yaml")
    assert policy["spec"]["podSelector"]["matchLabels"] == {"app.kubernetes.io/part-of": "img2vec"}
    weaviate, ray_internal, prometheus = policy["spec"]["ingress"]
    assert weaviate["ports"] == [{"protocol": "TCP", "port": 8000}]
    assert prometheus["ports"] == [{"protocol": "TCP", "port": 8080}]
    assert (
        ray_internal["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/part-of"]
        == "img2vec"
    )
    monitor = load("kuberay/podmonitor.yaml")
    assert monitor["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"


def test_compose_is_weaviates_seed_example_with_our_image():
    compose = load("compose/docker-compose.yml")["services"]
    weaviate, ours = compose["weaviate"], compose["i2v-neural"]
    assert weaviate["environment"]["ENABLE_MODULES"] == "img2vec-neural"
    assert weaviate["environment"]["IMAGE_INFERENCE_API"] == "http://i2v-neural:8080"
    assert ours["image"] == IMAGE and ours["environment"]["ENABLE_CUDA"] == "0"
    assert ours["shm_size"] and "ports" not in ours
    gpu = load("compose/docker-compose.gpu.yml")["services"]["i2v-neural"]
    assert gpu["environment"]["ENABLE_CUDA"] == "1"
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["capabilities"] == ["gpu"] and device["count"] == 1


def test_the_clip_compose_is_weaviates_multi2vec_clip_example_with_our_image():
    compose = load("compose/docker-compose.clip.yml")["services"]
    weaviate, ours = compose["weaviate"], compose["multi2vec-clip"]
    assert weaviate["environment"]["ENABLE_MODULES"] == "multi2vec-clip"
    assert weaviate["environment"]["CLIP_INFERENCE_API"] == "http://multi2vec-clip:8080"
    assert ours["image"].startswith(IMAGE) and ours["environment"]["IMG2VEC_MODULE"] == (
        "multi2vec-clip"
    )
    assert ours["shm_size"] and "ports" not in ours


def test_the_cluster_launcher_config_is_valid_for_ray_up():
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    config = load("launcher/aws-gpu.yaml")
    jsonschema.validate(config, schema)
    assert config["docker"]["image"] == IMAGE
    assert config["available_node_types"]["head"]["resources"] == {"CPU": 0, "GPU": 0}
    for commands in (config["head_start_ray_commands"], config["worker_start_ray_commands"]):
        assert any("serve.env" in c and "--metrics-export-port=8080" in c for c in commands)


def test_the_cluster_launcher_starts_every_node_with_rays_token_and_a_loopback_dashboard():
    """Ray 2.60 leaves token authentication off for clusters started with `ray start`: every
    node's start command turns it on, with the token file that file_mounts puts on every node,
    and the head's dashboard (its job API) listens on loopback only."""
    config = load("launcher/aws-gpu.yaml")
    (path, source), *_ = config["file_mounts"].items()
    assert source == "~/.ray/auth_token" and path == "~/.ray/auth_token"
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        (start,) = [c for c in config[key] if "ray start" in c]
        before = start[: start.index("ray start")]
        assert "RAY_AUTH_MODE=token" in before, (key, start)
        assert "RAY_AUTH_TOKEN_PATH=$HOME/.ray/auth_token" in before, (key, start)
    (head,) = [c for c in config["head_start_ray_commands"] if "ray start" in c]
    assert "--dashboard-host=127.0.0.1" in head and "0.0.0.0" not in head


def test_no_discontinued_ray_ml_image_anywhere():
    for path in CLUSTER.rglob("*.y*ml"):
        images = [line for line in path.read_text().splitlines() if "image:" in line]
        assert not any("ray-ml" in line for line in images), path


def test_local_configs_listen_on_loopback_and_cluster_configs_on_every_interface():
    """Loopback unless asked: the configs `make serve` and `serve run` read keep the Serve port
    on 127.0.0.1; what a cluster serves Weaviate from other machines with (the RayServices'
    serveConfigV2, the config `serve deploy` sends to the cluster launcher's cluster) binds
    every interface, each behind its own network's rules."""
    for path in sorted(ROOT.glob("serve_config*.yaml")):
        config = yaml.safe_load(path.read_text())
        assert config["http_options"]["host"] == "127.0.0.1", path.name
    clusters = {
        variant or "rayservice": yaml.safe_load(rayservice(variant)["spec"]["serveConfigV2"])
        for variant in ("", "clip")
    }
    clusters["launcher"] = load("launcher/serve_config.gpu.yaml")
    for name, config in clusters.items():
        assert config["http_options"]["host"] == "0.0.0.0", name
    text = (CLUSTER / "launcher" / "aws-gpu.yaml").read_text()
    assert "serve deploy cluster/launcher/serve_config.gpu.yaml" in text
