"""Weights as data: the specs are pinned, and resolve -> verify -> load refuses bad files.
Downloads are tested against a real HTTP server on loopback."""

from __future__ import annotations

import dataclasses
import logging
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest
import torch
import torchvision

from img2vec.errors import WeightsError
from img2vec.models.image import load_module
from img2vec.models.weights import (
    SPECS,
    ModelSpec,
    cache_dir,
    get_spec,
    resolve_weights,
    sha256_of,
)
from tests.support.helpers import serving

ROOT = Path(__file__).resolve().parents[2]
# The published SHA-256 of resnet50-0676ba61.pth (ResNet50_Weights.IMAGENET1K_V1), in full:
# every vector in a user's Weaviate index depends on exactly this file.
RESNET50_V1_SHA256 = "0676ba61b6795bbe1773cffd859882e5e297624d384b6993f7c9e683e722fb8a"


def test_resnet50_v1_is_pinned_by_its_full_sha256():
    spec = SPECS["resnet50"]
    assert spec.weights_tag == "ResNet50_Weights.IMAGENET1K_V1"  # named, never a default
    assert spec.sha256 == RESNET50_V1_SHA256
    assert spec.weights_file == "resnet50-0676ba61.pth"
    assert RESNET50_V1_SHA256 in (ROOT / "docs" / "configuration.md").read_text()
    assert not spec.matches(RESNET50_V1_SHA256[:-1] + "0")  # the full digest, not a prefix


def test_specs_are_exactly_what_torchvision_publishes():
    """Each spec names its weights explicitly (`weights_tag`, e.g. IMAGENET1K_V1 for the
    default: what the replaced container's deprecated `pretrained=True` loads) and pins their
    URL, file and hash prefix to what torchvision publishes under that name."""
    for spec in SPECS.values():
        weights = torchvision.models.get_weight(spec.weights_tag)
        assert spec.url == weights.url
        assert spec.url.rsplit("/", 1)[1] == spec.weights_file
        assert weights.meta["num_params"] > 0
        if spec.sha256 is not None:
            assert len(spec.sha256) == 64 and spec.sha256.startswith(spec.sha256_prefix)
    assert SPECS["resnet50"].dim == 2048 and SPECS["mobilenet_v2"].dim == 1280
    assert SPECS["resnet50"].preprocess == "stretch224"


def test_shipped_mobilenet_file_is_the_published_one(mobilenet_v2_file):
    assert sha256_of(mobilenet_v2_file) == SPECS["mobilenet_v2"].sha256


def test_where_only_a_prefix_is_published_the_prefix_is_checked():
    spec = dataclasses.replace(SPECS["mobilenet_v2"], sha256=None)
    assert spec.sha256_prefix == "b0353104"
    assert spec.matches("b0353104" + "0" * 56)
    assert not spec.matches("b0353105" + "0" * 56)
    assert "prefix published by torchvision" in spec.pinned
    with pytest.raises(ValueError, match="does not start with"):
        dataclasses.replace(spec, sha256="f" * 64)
    with pytest.raises(ValueError, match="no hash prefix"):
        dataclasses.replace(spec, weights_file="mobilenet.pth")


def test_the_cache_is_where_torch_hub_puts_it(monkeypatch, tmp_path):
    for env in ({}, {"TORCH_HOME": str(tmp_path / "th")}, {"XDG_CACHE_HOME": str(tmp_path)}):
        monkeypatch.delenv("TORCH_HOME", raising=False)
        monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        assert cache_dir() == Path(torch.hub.get_dir()) / "checkpoints"


def test_a_file_is_hashed_and_loaded_strictly(resnet50_file):
    spec = get_spec("resnet50")
    resolved = resolve_weights(spec, str(resnet50_file))
    assert resolved.source == "file"
    assert resolved.sha256 == sha256_of(resnet50_file)
    module = load_module(spec, resolved)
    expected = torch.load(resnet50_file, weights_only=True)
    conv1 = dict(module.named_parameters())["extractor.conv1.weight"]
    assert torch.equal(conv1, expected["conv1.weight"])
    assert module(torch.zeros(2, 3, 224, 224)).shape == (2, 2048)


def test_a_file_with_the_published_name_but_another_hash_is_refused(tmp_path, resnet50_file):
    spec = get_spec("resnet50")
    fake = tmp_path / spec.weights_file
    shutil.copy(resnet50_file, fake)
    with pytest.raises(WeightsError, match=f"must have sha256 {spec.sha256}"):
        resolve_weights(spec, str(fake))


@pytest.fixture()
def hub(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch" / "hub" / "checkpoints"


def test_download_uses_a_verified_cached_file(hub, mobilenet_v2_file):
    spec = get_spec("mobilenet_v2")
    hub.mkdir(parents=True)
    shutil.copy(mobilenet_v2_file, hub / spec.weights_file)
    resolved = resolve_weights(spec, "download")
    assert resolved.source == "download"
    assert resolved.sha256 == spec.sha256


def test_download_refuses_a_corrupt_cached_file(hub):
    spec = get_spec("mobilenet_v2")
    hub.mkdir(parents=True)
    (hub / spec.weights_file).write_bytes(b"truncated download")
    with pytest.raises(WeightsError, match="corrupt, truncated or not the published one"):
        resolve_weights(spec, "download")


def local_spec(url: str) -> ModelSpec:
    return dataclasses.replace(get_spec("mobilenet_v2"), url=url)


def test_download_fetches_verifies_and_reports_progress(hub, mobilenet_v2_file, caplog):
    payload = mobilenet_v2_file.read_bytes()
    with serving(payload, chunk_delay_s=0.5) as (url, _), caplog.at_level(logging.INFO):
        resolved = resolve_weights(local_spec(url), "download")
    assert resolved.source == "download" and resolved.sha256 == SPECS["mobilenet_v2"].sha256
    assert (hub / SPECS["mobilenet_v2"].weights_file).read_bytes() == payload
    progress = [r.getMessage() for r in caplog.records if "MB (" in r.getMessage()]
    assert progress and "of 14.2 MB" in progress[0], progress


def test_replicas_starting_together_download_once(hub, mobilenet_v2_file):
    with serving(mobilenet_v2_file.read_bytes(), chunk_delay_s=0.1) as (url, handler):
        spec = local_spec(url)
        results: list[object] = []
        threads = [
            threading.Thread(target=lambda: results.append(resolve_weights(spec, "download")))
            for _ in range(3)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert len(results) == 3 and handler.gets == 1


def test_a_download_of_the_wrong_bytes_is_refused_and_leaves_nothing(hub):
    with (
        serving(b"not the weights" * 1000) as (url, _),
        pytest.raises(WeightsError, match="must have sha256"),
    ):
        resolve_weights(local_spec(url), "download")
    assert [p.name for p in hub.iterdir() if not p.name.endswith(".lock")] == []


def test_a_refused_connection_stops_with_the_offline_instructions(hub):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: connections are refused
        spec = local_spec(f"http://127.0.0.1:{port}/mobilenet_v2-b0353104.pth")
        with pytest.raises(WeightsError, match="set IMG2VEC_WEIGHTS to its path") as err:
            resolve_weights(spec, "download")
    assert "img2vec weights fetch mobilenet_v2" in str(err.value)
    assert [p.name for p in hub.iterdir() if not p.name.endswith(".lock")] == []


def test_a_stalled_download_gives_up_after_the_timeout(hub):
    """A server that accepts the connection and never answers (what a black-holed network
    looks like) costs the timeout, not forever."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        spec = local_spec(f"http://127.0.0.1:{server.getsockname()[1]}/m-b0353104.pth")
        started = time.monotonic()
        with pytest.raises(WeightsError, match="This machine may be offline"):
            resolve_weights(spec, "download", timeout_s=1.0)
        assert time.monotonic() - started < 10


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(WeightsError, match="not a file"):
        resolve_weights(get_spec("resnet50"), str(tmp_path / "nope.pth"))


def test_a_state_dict_of_another_architecture_is_refused(mobilenet_v2_file):
    spec = get_spec("resnet50")
    with pytest.raises(WeightsError, match="does not fit torchvision's resnet50"):
        load_module(spec, resolve_weights(spec, str(mobilenet_v2_file)))


def test_files_that_are_not_state_dicts_are_refused(tmp_path):
    spec = get_spec("mobilenet_v2")
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"\x00\x01 not a torch file")
    with pytest.raises(WeightsError, match="Could not read"):
        load_module(spec, resolve_weights(spec, str(garbage)))
    a_list = tmp_path / "list.pth"
    torch.save([1, 2, 3], a_list)
    with pytest.raises(WeightsError, match="not a state dict"):
        load_module(spec, resolve_weights(spec, str(a_list)))


def test_random_weights_are_seeded_and_reported_as_random():
    spec = get_spec("mobilenet_v2")
    resolved = resolve_weights(spec, "random")
    assert resolved.source == "random" and resolved.sha256 is None
    a, b = load_module(spec, resolved), load_module(spec, resolved)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_unknown_model_names_the_known_ones():
    with pytest.raises(WeightsError, match="resnet50, resnet50_v2, resnet101"):
        get_spec("vgg16")
