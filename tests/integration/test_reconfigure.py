"""Batch settings are live: a new `user_config` in the deployed config reaches the running
model replica through `reconfigure()`, without a restart (the model stays loaded)."""

from __future__ import annotations

import time

import httpx
from ray import serve
from ray.serve._private.api import serve_start

from tests.support.service import small_app_config, wait_ready


def config(user_config: dict) -> object:
    """What `serve deploy` sends for a config whose Embedder has this `user_config`."""
    return small_app_config("tuned", "/tuned", [{"name": "Embedder", "user_config": user_config}])


def batching(url: str) -> dict:
    meta = httpx.get(url + "/meta", timeout=10).json()
    return {**meta["batching"], "replica": meta["replica"]}


def test_user_config_changes_reach_the_running_replica(serve_base):
    # serve_start returns the running instance's client, as `serve deploy` talks to it.
    client = serve_start()
    url = serve_base + "/tuned"
    try:
        check_reconfigured_in_place(client, url)
    finally:
        serve.delete("tuned")  # frees its replicas for the tests that follow


def check_reconfigured_in_place(client, url: str) -> None:
    client.deploy_apps(config({"max_batch_size": 4, "batch_wait_timeout_s": 0.0}), _blocking=True)
    wait_ready(url)
    before = batching(url)
    assert before["config"] == {"max_batch_size": 4, "batch_wait_timeout_s": 0.0}

    client.deploy_apps(config({"max_batch_size": 2, "batch_wait_timeout_s": 0.02}), _blocking=True)
    deadline = time.monotonic() + 60
    while batching(url)["config"]["max_batch_size"] != 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    after = batching(url)
    assert after["config"] == {"max_batch_size": 2, "batch_wait_timeout_s": 0.02}
    assert after["replica"] == before["replica"]  # reconfigured in place, not restarted
