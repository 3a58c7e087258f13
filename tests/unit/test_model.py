"""The embedder: shapes, dtypes, batch invariance, and the real weights doing real work."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from img2vec.errors import ConfigError, WeightsError
from img2vec.inputs.preprocessing import STRETCH_224
from img2vec.models.engines import bucket_sizes, configure_precision, precision_flags
from img2vec.models.image import build_embedder, is_out_of_memory, pick_device
from img2vec.models.weights import SPECS
from tests.support.parity import relative_error
from tests.support.weights import TEST_DEVICE

DEFAULT_ENGINE = "openvino" if TEST_DEVICE == "cpu" else "torchscript"


@pytest.fixture(scope="module")
def resnet(resnet50_file):
    return build_embedder(model="resnet50", weights=str(resnet50_file), device=TEST_DEVICE)


@pytest.fixture(scope="module")
def mobilenet(mobilenet_v2_file):
    return build_embedder(model="mobilenet_v2", weights=str(mobilenet_v2_file), device=TEST_DEVICE)


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
    assert info.model == "mobilenet_v2" and info.dim == 1280 and info.device == TEST_DEVICE
    # The default engine: OpenVINO on CPU (it is installed with the project), TorchScript on CUDA.
    assert info.dtype == "float32" and info.engine == DEFAULT_ENGINE
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


def test_torch_threads_are_set_when_asked(resnet50_file):
    before = torch.get_num_threads()
    try:
        build_embedder(model="mobilenet_v2", weights="random", device=TEST_DEVICE, torch_threads=1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_the_embedding_is_the_pooled_feature_before_the_classifier(resnet, resnet50_file, arrays):
    """The feature node gives exactly what a hook on avgpool gives (what img2vec-pytorch
    reads), flattened."""
    import torchvision

    model = torchvision.models.resnet50(weights=None)
    model.load_state_dict(torch.load(resnet50_file, weights_only=True))
    model.eval()
    captured = []
    model.avgpool.register_forward_hook(lambda m, i, o: captured.append(o.flatten(1)))
    x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float().div(255)
    mean = torch.tensor(STRETCH_224.mean).view(1, 3, 1, 1)
    std = torch.tensor(STRETCH_224.std).view(1, 3, 1, 1)
    with torch.no_grad():
        model((x - mean) / std)
    ours = resnet.embed(arrays)
    for i in range(len(arrays)):
        assert relative_error(ours[i], captured[0][i].numpy()) < 1e-4


def test_float32_means_ieee_float32_and_tf32_is_a_named_option():
    try:
        assert configure_precision("float32") == {"cudnn.conv": "ieee", "cuda.matmul": "ieee"}
        assert configure_precision("tf32") == {"cudnn.conv": "tf32", "cuda.matmul": "tf32"}
        assert configure_precision("float16")["cudnn.conv"] == "ieee"
        with pytest.raises(ConfigError, match="dtype must be one of"):
            configure_precision("float8")
        configure_precision("tf32")  # left behind by someone else in this process...
        build_embedder(model="mobilenet_v2", weights="random", device=TEST_DEVICE, dtype="float32")
        assert precision_flags() == {"cudnn.conv": "ieee", "cuda.matmul": "ieee"}  # ...reset
    finally:
        configure_precision("float32")


def test_bucket_sizes_cover_every_batch_up_to_the_maximum():
    assert bucket_sizes(1) == [1]
    assert bucket_sizes(8) == [1, 2, 4, 8]
    assert bucket_sizes(48) == [1, 2, 4, 8, 16, 32, 48]


def test_padding_to_warmed_buckets_changes_no_vector(mobilenet_v2_file, arrays):
    padded = build_embedder(
        model="mobilenet_v2", weights=str(mobilenet_v2_file), device=TEST_DEVICE
    )
    plain = build_embedder(model="mobilenet_v2", weights=str(mobilenet_v2_file), device=TEST_DEVICE)
    padded.pad_to_buckets = True
    warmed = padded.warm_up(6)
    assert warmed.sizes == [1, 2, 4, 6] and warmed.seconds_per_image > 0
    assert padded.warm_up(6).sizes == []  # nothing new to warm up
    batch = [arrays[i % len(arrays)] for i in range(5)]  # runs padded to 6
    np.testing.assert_allclose(padded.embed(batch), plain.embed(batch), rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(TEST_DEVICE != "cpu", reason="on CUDA, batches are padded")
def test_without_padding_only_batch_one_is_warmed(mobilenet):
    assert mobilenet.pad_to_buckets is False  # CPU: no cudnn autotuning to pay for
    assert set(mobilenet.warm_up(16).sizes) <= {1}


def test_the_graph_can_be_switched_to_eager(mobilenet_v2_file, mobilenet, arrays):
    eager = build_embedder(
        model="mobilenet_v2", weights=str(mobilenet_v2_file), device=TEST_DEVICE, engine="eager"
    )
    assert eager.info().engine == "eager" and mobilenet.info().engine == DEFAULT_ENGINE
    for a, b in zip(eager.embed(arrays), mobilenet.embed(arrays), strict=True):
        assert relative_error(a, b) < 1e-4
    with pytest.raises(ConfigError, match="engine must be one of"):
        build_embedder(model="mobilenet_v2", weights="random", device=TEST_DEVICE, engine="onnx")
    if TEST_DEVICE == "cpu":  # the GPU-only engine says so on a CPU, before any work
        with pytest.raises(ConfigError, match="for CUDA GPUs"):
            build_embedder(model="mobilenet_v2", weights="random", device="cpu", engine="compiled")


def test_out_of_memory_is_recognised():
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate"))
    assert is_out_of_memory(RuntimeError("DefaultCPUAllocator: not enough memory: out of memory"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    assert not is_out_of_memory(ValueError("out of memory"))


def test_one_rule_chooses_the_engine_of_a_backbone_and_of_a_clip_tower():
    from img2vec.models.engines import OPENVINO, resolve_engine
    from img2vec.options import CLIP_ENGINES

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    # auto: OpenVINO on CPU for both; off it, each model's own fallback.
    assert resolve_engine("auto", cpu, "float32") == OPENVINO
    assert resolve_engine("auto", cpu, "float32", runs=CLIP_ENGINES) == OPENVINO
    assert resolve_engine("auto", cuda, "float32") == "torchscript"
    assert resolve_engine("auto", cuda, "float32", runs=CLIP_ENGINES) == "eager"
    assert resolve_engine("auto", cpu, "float16") == "torchscript"  # OpenVINO's dtypes only
    with pytest.raises(ConfigError, match="does not run this model: use auto or openvino or eager"):
        resolve_engine("torchscript", cpu, "float32", runs=CLIP_ENGINES)
    with pytest.raises(ConfigError, match=r"on a GPU use eager$"):
        resolve_engine(OPENVINO, cuda, "float32", runs=CLIP_ENGINES)
    with pytest.raises(ConfigError, match=r"on a GPU use torchscript or eager$"):
        resolve_engine(OPENVINO, cuda, "float32")
