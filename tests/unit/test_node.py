"""The launcher's choice of Ray cluster: its own local one unless told otherwise, and a dead
cluster's record removed before Ray can try to join it (a bare `ray.init()` would hang)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from deployments.ops import node


def test_the_launcher_starts_its_own_ray_unless_an_address_is_given(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert node.ray_address(None) == "local"
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    assert node.ray_address(None) == "10.0.0.5:6379"
    assert node.ray_address("127.0.0.1:6380") == "127.0.0.1:6380"  # the flag wins


def test_a_dead_clusters_record_is_removed_with_a_log_line(tmp_path, caplog):
    record = tmp_path / "ray_current_cluster"
    record.write_text("127.0.0.1:1")  # no raylet on this machine belongs to it
    with caplog.at_level(logging.INFO, logger="img2vec.launch"):
        assert node.clear_stale_record(str(tmp_path)) == "127.0.0.1:1"
    assert not record.exists()
    assert "record of a Ray cluster at 127.0.0.1:1 that is no longer running" in caplog.text


def test_a_live_clusters_record_is_kept(tmp_path, monkeypatch, caplog):
    record = tmp_path / "ray_current_cluster"
    record.write_text("127.0.0.1:6379")
    # Ray's process-table scan, as it would answer with that cluster's raylet running here.
    monkeypatch.setattr(node, "_live_gcs_addresses", lambda: {"127.0.0.1:6379"})
    with caplog.at_level(logging.INFO, logger="img2vec.launch"):
        assert node.clear_stale_record(str(tmp_path)) is None
    assert record.read_text() == "127.0.0.1:6379"
    assert "RAY_ADDRESS=127.0.0.1:6379" in caplog.text


def test_no_record_is_nothing_to_do(tmp_path):
    assert node.clear_stale_record(str(tmp_path)) is None


GB = 2**30


def test_the_object_store_is_sized_to_fit_a_small_dev_shm():
    """`--shm-size=1g` on a 16 GB host: Ray's default (30 %, 4.8 GB) would not fit, and Ray
    would move the store to /tmp with a performance warning. The launcher asks for what fits."""
    size = node.object_store_bytes(shm_free=1 * GB, memory=16 * GB)
    assert size is not None and size <= 1 * GB
    assert size >= 0.5 * GB  # most of it: the store is not starved


def test_the_object_store_is_left_to_ray_where_dev_shm_is_large_enough():
    assert node.object_store_bytes(shm_free=8 * GB, memory=16 * GB) is None
    assert node.object_store_bytes(shm_free=None, memory=16 * GB) is None  # no /dev/shm


def test_a_dev_shm_below_rays_minimum_is_left_to_ray():
    """Docker's default 64 MB: below Ray's 75 MB minimum, nothing fits; Ray's fallback (and its
    warning, which names --shm-size) is the honest answer."""
    assert node.object_store_bytes(shm_free=64 * 2**20, memory=16 * GB) is None


def test_on_loopback_serve_envs_haproxy_stays_off_unless_the_environment_asks_for_it():
    """Ray's HAProxy binds its stats and metrics ports on every interface: a service kept on
    loopback runs without it, unless HAProxy was asked for in the environment itself (not
    only by serve.env); a service on every interface keeps it."""
    on = {node.HAPROXY: "1"}
    for host in ("127.0.0.1", "127.0.0.2", "::1", "localhost"):
        env = dict(on)
        assert node.keep_on_loopback(env, set(), host) and env[node.HAPROXY] == "0", host
    env = dict(on)
    assert not node.keep_on_loopback(env, {node.HAPROXY}, "127.0.0.1") and env == on
    for host in ("0.0.0.0", "::", "10.0.0.5", "img2vec.internal", None):
        env = dict(on)
        assert not node.keep_on_loopback(env, set(), host) and env == on, host
    env = {node.HAPROXY: "0"}
    assert not node.keep_on_loopback(env, set(), "127.0.0.1") and env[node.HAPROXY] == "0"


def test_rays_token_switched_off_is_refused_unless_explicitly_allowed():
    from deployments.ops.node import auth_refusal

    assert auth_refusal({}) is None  # Ray's default: the token
    assert auth_refusal({"RAY_AUTH_MODE": "token"}) is None
    why = auth_refusal({"RAY_AUTH_MODE": "Disabled"})
    assert why is not None and "IMG2VEC_ALLOW_RAY_AUTH_OFF=1" in why and "gRPC" in why
    allowed = {"RAY_AUTH_MODE": "disabled", "IMG2VEC_ALLOW_RAY_AUTH_OFF": "1"}
    assert auth_refusal(allowed) is None


@pytest.mark.parametrize("where", ["environment", "serve.env"])
def test_the_launcher_refuses_to_start_with_rays_token_off(where, tmp_path, monkeypatch, caplog):
    """Nothing starts (no supervisor, no Ray) and the exit code is 2, whether the setting comes
    from the environment or from serve.env; IMG2VEC_ALLOW_RAY_AUTH_OFF=1 lets it start."""
    from deployments.ops import launch

    config = tmp_path / "serve_config.yaml"
    shutil.copy(Path(__file__).parents[2] / "serve_config.yaml", config)
    env_file = tmp_path / "serve.env"
    env_file.write_text("RAY_AUTH_MODE=disabled\n" if where == "serve.env" else "")
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    monkeypatch.delenv("IMG2VEC_ALLOW_RAY_AUTH_OFF", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    if where == "environment":
        monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    started = []
    monkeypatch.setattr(launch, "supervise", lambda argv, metrics: started.append(argv) or 0)
    monkeypatch.setattr(launch, "is_server", lambda: False)
    assert launch.main([str(config)]) == 2
    assert started == []
    assert "IMG2VEC_ALLOW_RAY_AUTH_OFF" in caplog.text
    monkeypatch.setenv("IMG2VEC_ALLOW_RAY_AUTH_OFF", "1")
    assert launch.main([str(config)]) == 0
    assert len(started) == 1
