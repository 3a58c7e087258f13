"""One source of truth: every deployment file is rendered from serve_config.yaml plus an
overlay (cluster/render.py), and none may drift from what rendering gives."""

from __future__ import annotations

import yaml

from cluster import render


def test_the_committed_files_are_what_rendering_gives():
    assert render.main(["--check"]) == 0, "run `make cluster` and commit the result"


def test_a_stale_file_is_caught(tmp_path, monkeypatch):
    target = tmp_path / "serve_config.gpu.yaml"
    monkeypatch.setattr(render, "ROOT", tmp_path)
    monkeypatch.setattr(render, "rendered", lambda: {target: "fresh\n"})
    target.write_text("edited by hand\n")
    assert render.main(["--check"]) == 1
    assert render.main([]) == 0 and target.read_text() == "fresh\n"
    assert render.main(["--check"]) == 0


def test_overlays_merge_by_name_delete_with_null_and_copy():
    base = {
        "applications": [
            {
                "name": "a",
                "args": {"model": "m", "x": 1},
                "deployments": [{"name": "D", "n": 1, "k": 2}],
            }
        ]
    }
    overlay = {
        "applications": [
            {"name": "a", "args": {"x": None}, "deployments": [{"name": "D", "n": 5}]},
            {"name": "b", "copy_of": "a", "route_prefix": "/b", "args": {"model": "other"}},
            {"name": "c", "copy_of": "b", "route_prefix": "/c"},
        ]
    }
    out = render.merge(base, overlay)
    a, b, c = out["applications"]
    assert a == {
        "name": "a",
        "args": {"model": "m"},
        "deployments": [{"name": "D", "n": 5, "k": 2}],
    }
    assert b["route_prefix"] == "/b" and b["args"] == {"model": "other", "x": 1}
    assert b["deployments"] == [{"name": "D", "n": 1, "k": 2}] and "copy_of" not in b
    # A copy of one this overlay made starts from it as made.
    assert c == {**b, "name": "c", "route_prefix": "/c"}


def test_the_gpu_config_is_the_base_with_the_gpu_differences_only():
    base = yaml.safe_load(render.BASE.read_text())
    gpu = yaml.safe_load((render.ROOT / "serve_config.gpu.yaml").read_text())
    assert gpu["http_options"] == base["http_options"]
    (bapp,), (gapp,) = base["applications"], gpu["applications"]
    assert gapp["import_path"] == bapp["import_path"] and gapp["route_prefix"] == "/"
    embedder = {d["name"]: d for d in gapp["deployments"]}["Embedder"]
    assert embedder["ray_actor_options"]["num_gpus"] == 1 and "num_replicas" not in embedder
    assert embedder["autoscaling_config"]["min_replicas"] >= 1  # never 0: see cluster/README.md
    assert embedder["max_ongoing_requests"] >= 2 * embedder["user_config"]["max_batch_size"]
