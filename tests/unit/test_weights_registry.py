"""The registry of backbones: every spec is torchvision's published weights, its embedding is
the pooled feature before the classifier (checked against an independent hook on random
weights), and `<name>:native` selects the model's own preprocessing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision

from img2vec.errors import WeightsError
from img2vec.inputs.preprocessing import get_preset
from img2vec.models.image import build_embedder
from img2vec.models.weights import NATIVE_SUFFIX, SPECS, get_spec, preset_of
from tests.support.parity import relative_error

REQUIRED = {
    "resnet50",
    "resnet50_v2",
    "resnet101",
    "resnet152",
    "mobilenet_v2",
    "mobilenet_v3_large",
    "efficientnet_b0",
    "convnext_tiny",
    "vit_b_16",
}


def test_the_registry_holds_the_documented_backbones_with_resnet50_v1_first():
    assert set(SPECS) >= REQUIRED
    assert next(iter(SPECS)) == "resnet50" and SPECS["resnet50"].weights_tag.endswith("V1")
    assert SPECS["resnet50_v2"].weights_tag == "ResNet50_Weights.IMAGENET1K_V2"


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_each_spec_is_what_torchvision_publishes(name):
    spec = SPECS[name]
    weights = torchvision.models.get_weight(spec.weights_tag)
    assert weights.url == spec.url and spec.url.endswith("/" + spec.weights_file)
    assert getattr(torchvision.models, spec.builder) is not None
    # torch.hub's own check: the file name carries the start of its SHA-256.
    assert spec.matches(spec.sha256 or spec.sha256_prefix + "0" * (64 - len(spec.sha256_prefix)))


def _hooked(name: str, module: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The documented extraction point, read independently with a forward hook."""
    captured: list[torch.Tensor] = []
    if name == "mobilenet_v2":
        handle = module.classifier.register_forward_hook(lambda m, i, o: captured.append(i[0]))
    elif name == "vit_b_16":  # the class token, as the head reads it
        handle = module.heads.register_forward_hook(lambda m, i, o: captured.append(i[0]))
    else:  # the pool module, before whatever the head does (ConvNeXt: LayerNorm first)
        handle = module.avgpool.register_forward_hook(lambda m, i, o: captured.append(o))
    with torch.no_grad():
        module(x)
    handle.remove()
    return captured[0].flatten(1)


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_the_embedding_is_taken_at_the_documented_pooling_point(name):
    spec = SPECS[name]
    embedder = build_embedder(model=name, weights="random", device="cpu", engine="eager")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
    ours = embedder.embed(images)
    assert ours.shape == (2, spec.dim) and embedder.dim == spec.dim

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # what weights="random" builds
        reference = getattr(torchvision.models, spec.builder)(weights=None).eval()
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255)
    preset = get_preset(spec.preprocess)
    x = (x - torch.tensor(preset.mean).view(1, 3, 1, 1)) / torch.tensor(preset.std).view(1, 3, 1, 1)
    expected = _hooked(name, reference, x).numpy()
    for a, b in zip(ours, expected, strict=True):
        assert relative_error(a, b) < 1e-4, name


def test_native_names_select_the_models_own_preprocessing():
    assert preset_of("convnext_tiny") == "stretch224"
    assert preset_of("convnext_tiny" + NATIVE_SUFFIX) == "resize236-crop224"
    assert preset_of("efficientnet_b0:native") == "resize256-crop224-bicubic"
    assert get_spec("vit_b_16:native") is SPECS["vit_b_16"]
    with pytest.raises(WeightsError, match="as <name>:native"):
        get_spec("vgg16:native")
    embedder = build_embedder(model="mobilenet_v2:native", weights="random", device="cpu")
    assert embedder.info().model == "mobilenet_v2:native"
    assert embedder.info().preprocess == "resize256-crop224"


@pytest.mark.parametrize("name", ["vit_b_16", "convnext_tiny", "efficientnet_b0"])
def test_the_frozen_graph_gives_the_eager_vectors(name):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
    frozen = build_embedder(model=name, weights="random", device="cpu", engine="torchscript")
    eager = build_embedder(model=name, weights="random", device="cpu", engine="eager")
    assert frozen.info().engine == "torchscript"
    for a, b in zip(frozen.embed(images), eager.embed(images), strict=True):
        assert relative_error(a, b) < 1e-4, name


@pytest.mark.parametrize(
    "name", ["mobilenet_v3_large", "efficientnet_b0", "convnext_tiny", "vit_b_16"]
)
def test_every_architecture_runs_on_the_cpu_engine_with_the_eager_vectors(
    name, tmp_path, monkeypatch
):
    """The default CPU engine takes each kind of backbone in the registry (the ResNets and
    MobileNetV2: tests/unit/test_engines.py) and gives PyTorch's vectors."""
    monkeypatch.setenv("IMG2VEC_ENGINE_CACHE", str(tmp_path))
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (2, 224, 224, 3), dtype=np.uint8)
    engine = build_embedder(model=name, weights="random", device="cpu", torch_threads=2)
    eager = build_embedder(model=name, weights="random", device="cpu", engine="eager")
    assert engine.info().engine == "openvino"
    for a, b in zip(engine.embed(images), eager.embed(images), strict=True):
        assert relative_error(a, b) < 1e-4, name
