"""The embedder: shapes, dtypes, batch invariance, and the real weights doing real work."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from img2vec.errors import ConfigError, WeightsError
from img2vec.model import build_embedder, pick_device
from img2vec.preprocessing import STRETCH_224
from img2vec.weights import SPECS


@pytest.fixture(scope="module")
def resnet(random_resnet50_file):
    return build_embedder(model="resnet50", weights=str(random_resnet50_file), device="cpu")


@pytest.fixture(scope="module")
def mobilenet(mobilenet_v2_file):
    return build_embedder(model="mobilenet_v2", weights=str(mobilenet_v2_file), device="cpu")


@pytest.fixture(scope="module")
def arrays(photos):
    return [STRETCH_224.to_array(img) for img in photos.values()]


def test_resnet50_gives_float32_vectors_of_dim_2048(resnet, arrays):
    out = resnet.embed(arrays)
    assert out.shape == (len(arrays), 2048)
    assert out.dtype == np.float32
    assert np.isfinite(out).all()
    assert resnet.dim == 2048


def test_mobilenet_gives_dim_1280(mobilenet, arrays):
    assert mobilenet.embed(arrays[:1]).shape == (1, 1280)


def test_an_image_alone_and_inside_a_batch_of_8_gives_the_same_vector(resnet, arrays):
    rng = np.random.default_rng(0)
    batch = [arrays[i % len(arrays)] for i in range(7)]
    batch.insert(3, rng.integers(0, 256, (224, 224, 3), dtype=np.uint8))
    together = resnet.embed(batch)
    for i, img in enumerate(batch):
        alone = resnet.embed([img])[0]
        np.testing.assert_allclose(together[i], alone, rtol=1e-5, atol=1e-5 * np.abs(alone).max())


def test_a_stacked_array_is_accepted_too(resnet, arrays):
    a = resnet.embed(np.stack(arrays[:2]))
    b = resnet.embed(arrays[:2])
    np.testing.assert_array_equal(a, b)


def test_wrong_inputs_are_refused(resnet):
    with pytest.raises(ValueError, match="at least one"):
        resnet.embed([])
    with pytest.raises(ValueError, match="shape"):
        resnet.embed([np.zeros((100, 100, 3), np.uint8)])
    with pytest.raises(ValueError, match="uint8"):
        resnet.embed([np.zeros((224, 224, 3), np.float32)])


def test_real_weights_recognise_a_cat(mobilenet, photos, mobilenet_v2_file):
    """Preprocessing + weights end to end: the pooled vector, through the published
    classifier, must say "cat" for scikit-image's chelsea (ImageNet classes 281-285)."""
    state = torch.load(mobilenet_v2_file, weights_only=True)
    vec = torch.from_numpy(mobilenet.embed([STRETCH_224.to_array(photos["chelsea"])]))
    logits = vec @ state["classifier.1.weight"].T + state["classifier.1.bias"]
    assert int(logits.argmax()) in range(281, 286)


def test_real_weights_tell_photos_apart(mobilenet, arrays):
    out = mobilenet.embed(arrays).astype(np.float64)
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    sims = out @ out.T
    off_diagonal = sims[~np.eye(len(arrays), dtype=bool)]
    assert off_diagonal.max() < 0.9


def test_info_names_the_model_and_its_weights(resnet, mobilenet, mobilenet_v2_file):
    info = mobilenet.info()
    assert info.model == "mobilenet_v2" and info.dim == 1280 and info.device == "cpu"
    assert info.weights == "MobileNet_V2_Weights.IMAGENET1K_V1"
    assert info.weights_sha256 == SPECS["mobilenet_v2"].sha256
    assert resnet.info().weights == "custom"  # a random file is not the published one


def test_device_choice():
    assert pick_device("cpu").type == "cpu"
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError, match="device must be one of"):
        pick_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA device"):
            pick_device("cuda")


def test_unknown_model_fails_before_loading_anything():
    with pytest.raises(WeightsError, match="Unknown model"):
        build_embedder(model="nope", weights="random")


def test_torch_threads_are_set_when_asked(random_resnet50_file):
    before = torch.get_num_threads()
    try:
        build_embedder(model="mobilenet_v2", weights="random", device="cpu", torch_threads=1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
