"""Weights as data: the specs are pinned, and resolve -> verify -> load refuses bad files."""

from __future__ import annotations

import dataclasses
import shutil

import pytest
import torch
import torchvision

from img2vec.errors import WeightsError
from img2vec.weights import (
    SPECS,
    get_spec,
    load_module,
    resolve_weights,
    sha256_of,
)


def test_specs_are_exactly_what_torchvision_publishes():
    """img2vec-pytorch's `pretrained=True` loads IMAGENET1K_V1: each spec names those weights
    explicitly (`weights_tag`) and pins their URL and file."""
    tv = {
        "resnet50": torchvision.models.ResNet50_Weights.IMAGENET1K_V1,
        "mobilenet_v2": torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1,
    }
    assert list(SPECS) == ["resnet50", "mobilenet_v2"]
    for name, weights in tv.items():
        spec = SPECS[name]
        assert torchvision.models.get_weight(spec.weights_tag) is weights
        assert spec.url == weights.url
        assert spec.url.rsplit("/", 1)[1] == spec.weights_file
        # torchvision's file names carry the first 8 hex digits of the SHA-256.
        assert spec.weights_file.rsplit("-", 1)[1].startswith(spec.sha256[:8])
        assert len(spec.sha256) == 64
    assert SPECS["resnet50"].dim == 2048 and SPECS["mobilenet_v2"].dim == 1280
    assert SPECS["resnet50"].preprocess == "stretch224"


def test_shipped_mobilenet_file_is_the_published_one(mobilenet_v2_file):
    assert sha256_of(mobilenet_v2_file) == SPECS["mobilenet_v2"].sha256


def test_a_file_is_hashed_and_loaded_strictly(random_resnet50_file):
    spec = get_spec("resnet50")
    resolved = resolve_weights(spec, str(random_resnet50_file))
    assert resolved.source == "file"
    assert resolved.sha256 == sha256_of(random_resnet50_file)
    module = load_module(spec, resolved)
    expected = torch.load(random_resnet50_file, weights_only=True)
    assert torch.equal(module.conv1.weight, expected["conv1.weight"])
    assert isinstance(module.fc, torch.nn.Identity)


def test_a_file_with_the_published_name_but_another_hash_is_refused(tmp_path, random_resnet50_file):
    spec = get_spec("resnet50")
    fake = tmp_path / spec.weights_file
    shutil.copy(random_resnet50_file, fake)
    with pytest.raises(WeightsError, match=f"must have sha256 {spec.sha256}"):
        resolve_weights(spec, str(fake))


def test_download_uses_a_verified_cached_file(tmp_path, monkeypatch, mobilenet_v2_file):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    spec = get_spec("mobilenet_v2")
    (tmp_path / "checkpoints").mkdir()
    shutil.copy(mobilenet_v2_file, tmp_path / "checkpoints" / spec.weights_file)
    resolved = resolve_weights(spec, "download")
    assert resolved.source == "download"
    assert resolved.sha256 == spec.sha256


def test_download_refuses_a_corrupt_cached_file(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    spec = get_spec("mobilenet_v2")
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / spec.weights_file).write_bytes(b"truncated download")
    with pytest.raises(WeightsError, match="corrupt, truncated or not the published one"):
        resolve_weights(spec, "download")


def test_offline_download_stops_with_instructions(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    # Port 9 (discard) on loopback: nothing listens, the connection is refused at once.
    spec = dataclasses.replace(get_spec("mobilenet_v2"), url="http://127.0.0.1:9/mobilenet.pth")
    with pytest.raises(WeightsError, match="set IMG2VEC_WEIGHTS to its path"):
        resolve_weights(spec, "download")
    assert list((tmp_path / "checkpoints").iterdir()) == []  # no partial file left behind


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
    with pytest.raises(WeightsError, match="resnet50, mobilenet_v2"):
        get_spec("vgg16")
