"""The launcher's choice of Ray cluster: its own local one unless told otherwise, and a dead
cluster's record removed before Ray can try to join it (a bare `ray.init()` would hang)."""

from __future__ import annotations

import logging

from deployments import launch


def test_the_launcher_starts_its_own_ray_unless_an_address_is_given(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert launch.ray_address(None) == "local"
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    assert launch.ray_address(None) == "10.0.0.5:6379"
    assert launch.ray_address("127.0.0.1:6380") == "127.0.0.1:6380"  # the flag wins


def test_a_dead_clusters_record_is_removed_with_a_log_line(tmp_path, caplog):
    record = tmp_path / "ray_current_cluster"
    record.write_text("127.0.0.1:1")  # no raylet on this machine belongs to it
    with caplog.at_level(logging.INFO, logger="img2vec.launch"):
        assert launch.clear_stale_record(str(tmp_path)) == "127.0.0.1:1"
    assert not record.exists()
    assert "record of a Ray cluster at 127.0.0.1:1 that is no longer running" in caplog.text


def test_a_live_clusters_record_is_kept(tmp_path, monkeypatch, caplog):
    record = tmp_path / "ray_current_cluster"
    record.write_text("127.0.0.1:6379")
    # Ray's process-table scan, as it would answer with that cluster's raylet running here.
    monkeypatch.setattr(launch, "_live_gcs_addresses", lambda: {"127.0.0.1:6379"})
    with caplog.at_level(logging.INFO, logger="img2vec.launch"):
        assert launch.clear_stale_record(str(tmp_path)) is None
    assert record.read_text() == "127.0.0.1:6379"
    assert "RAY_ADDRESS=127.0.0.1:6379" in caplog.text


def test_no_record_is_nothing_to_do(tmp_path):
    assert launch.clear_stale_record(str(tmp_path)) is None
