"""What the Docker image runs, run here (no Docker engine on this machine): the entrypoint's
settings, the weights-baking script, the health check, and the Dockerfile's references."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench.processes import free_port
from deployments.ops.container import settings
from img2vec.models.weights import SPECS, sha256_of

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def test_it_listens_on_8080_on_every_interface_like_the_container_it_replaces():
    """Weaviate reaches the container over Docker's network: the image opens what the
    launcher alone keeps on loopback; an explicit IMG2VEC_HOST still wins."""
    add, command = settings({})
    assert add == {"IMG2VEC_HOST": "0.0.0.0"}
    assert command[1:] == ["-m", "deployments.ops.launch", "serve_config.yaml", "--port", "8080"]
    assert settings({"IMG2VEC_PORT": "9000"})[1][-1] == "9000"
    assert "IMG2VEC_HOST" not in settings({"IMG2VEC_HOST": "127.0.0.1"})[0]


@pytest.mark.parametrize(
    ("value", "device", "config"),
    [
        ("1", "cuda", "serve_config.gpu.yaml"),
        ("true", "cuda", "serve_config.gpu.yaml"),
        ("True", "cuda", "serve_config.gpu.yaml"),
        ("0", "cpu", "serve_config.yaml"),
        ("false", "cpu", "serve_config.yaml"),
    ],
)
def test_enable_cuda_is_honoured(value, device, config):
    add, command = settings({"ENABLE_CUDA": value})
    assert add["IMG2VEC_DEVICE"] == device and command[3] == config


def test_our_own_settings_win_over_enable_cuda():
    add, command = settings(
        {"ENABLE_CUDA": "1", "IMG2VEC_DEVICE": "auto", "IMG2VEC_SERVE_CONFIG": "mine.yaml"}
    )
    assert "IMG2VEC_DEVICE" not in add and command[3] == "mine.yaml"
    add, _ = settings({"ENABLE_CUDA": "true", "CUDA_CORE": "cuda:1"})
    assert add["CUDA_VISIBLE_DEVICES"] == "1"
    with pytest.raises(ValueError, match="use 1/true"):
        settings({"ENABLE_CUDA": "maybe"})


def test_img2vec_module_picks_multi2vec_clip_on_cpu_or_gpu():
    assert settings({"IMG2VEC_MODULE": "multi2vec-clip"})[1][3] == "serve_config.clip.yaml"
    add, command = settings({"IMG2VEC_MODULE": "multi2vec-clip", "ENABLE_CUDA": "1"})
    assert command[3] == "serve_config.clip.gpu.yaml" and add["IMG2VEC_DEVICE"] == "cuda"
    for name in ("serve_config.clip.yaml", "serve_config.clip.gpu.yaml"):
        assert (ROOT / name).is_file()
    with pytest.raises(ValueError, match="img2vec-neural or multi2vec-clip"):
        settings({"IMG2VEC_MODULE": "text2vec"})


def test_a_bad_enable_cuda_stops_the_entrypoint_with_the_reason():
    out = subprocess.run(
        [sys.executable, "-m", "deployments.ops.container"],
        env={**os.environ, "ENABLE_CUDA": "maybe"},
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert out.returncode == 2 and "ENABLE_CUDA='maybe'" in out.stderr


def test_the_health_check_fails_when_nothing_answers():
    out = subprocess.run(
        [sys.executable, "-m", "deployments.ops.container", "health"],
        env={**os.environ, "IMG2VEC_PORT": str(free_port())},
        cwd=ROOT,
    )
    assert out.returncode == 1


def test_the_weights_baking_step_verifies_what_it_bakes(tmp_path, mobilenet_v2_file):
    env = {
        **os.environ,
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "TORCH_HOME": str(tmp_path / "torch"),
        "IMG2VEC_WEIGHTS_FROM": str(mobilenet_v2_file),
    }
    script = str(ROOT / "docker" / "bake-weights.sh")
    out = subprocess.run([script, "mobilenet_v2"], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    baked = tmp_path / "torch/hub/checkpoints/mobilenet_v2-b0353104.pth"
    assert sha256_of(baked) == SPECS["mobilenet_v2"].sha256 and "OK" in out.stdout
    # ...and converts them for the CPU engine, cached beside them: the first start finds it.
    (entry,) = (tmp_path / "torch" / "img2vec-engines").iterdir()
    assert {"model.xml", "model.bin", "key.json"} <= {f.name for f in entry.iterdir()}
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"corrupt")
    env.update(TORCH_HOME=str(tmp_path / "t2"), IMG2VEC_WEIGHTS_FROM=str(bad))
    out = subprocess.run([script, "mobilenet_v2"], env=env, capture_output=True, text=True)
    assert out.returncode != 0 and "must have sha256" in out.stderr


def test_the_dockerfile_runs_these_scripts_as_a_non_root_user():
    text = (ROOT / "Dockerfile").read_text()
    entrypoint = json.loads(re.search(r"^ENTRYPOINT (.+)$", text, re.M).group(1))
    assert entrypoint == ["python", "-m", "deployments.ops.container"]  # exec form
    assert '"deployments.ops.container", "health"' in text.split("HEALTHCHECK", 1)[1]
    assert "docker/bake-weights.sh" in text and "ARG BAKE_WEIGHTS=resnet50" in text
    assert re.search(r"^USER 10001$", text, re.M) and re.search(r"^EXPOSE 8080", text, re.M)
    for line in re.findall(r"^COPY (.+)$", text, re.M):
        for source in line.split()[:-1]:
            assert (ROOT / source).exists(), source
    assert "tests" in (ROOT / ".dockerignore").read_text()


def test_the_weights_step_checks_a_clip_model_and_says_how_to_bring_one_offline(tmp_path, clip_dir):
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "HF_HOME": str(tmp_path)}
    script = str(ROOT / "docker" / "bake-weights.sh")
    out = subprocess.run([script, str(clip_dir)], env=env, capture_output=True, text=True)
    assert out.returncode == 0 and "(clip, texts truncated to 77 tokens)" in out.stdout
    offline = {**env, "HF_HUB_OFFLINE": "1"}
    name = "openai/clip-vit-base-patch32"
    out = subprocess.run([script, name], env=offline, capture_output=True, text=True)
    assert out.returncode == 1 and f"hf download {name} --local-dir" in out.stdout
