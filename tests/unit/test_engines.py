"""The OpenVINO engine (img2vec/models/engines.py): the same vectors as img2vec-pytorch by the
parity measure, on the calibrated ResNet50 and the real MobileNetV2; the converted model cached,
keyed and verified; float32 asked for explicitly; bfloat16 a fast mode that either runs (and
stays closer to each photo's own vector than to any other photo's) or is refused clearly."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from img2vec.errors import ConfigError
from img2vec.inputs.preprocessing import STRETCH_224
from img2vec.models.engines import OPENVINO, engine_cache_dir
from img2vec.models.image import build_embedder
from tests.support.images import encode
from tests.support.parity import assert_same_vector, min_separation
from tests.support.reference import ReferenceImg2Vec


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("IMG2VEC_ENGINE_CACHE", str(tmp_path / "engines"))


def _openvino(model: str, weights: str, **options: object):
    return build_embedder(
        model=model, weights=weights, device="cpu", engine=OPENVINO, torch_threads=2, **options
    )


@pytest.mark.parametrize("model", ["resnet50", "mobilenet_v2"])
def test_openvino_gives_the_reference_vectors(model, resnet50_file, mobilenet_v2_file, photos):
    """Against the independent reference pipeline (tests/support/reference.py), by an error far
    below the distance between different photos (tests/support/parity.py): what every stored
    vector depends on holds on the engine as it does on PyTorch."""
    path = resnet50_file if model == "resnet50" else mobilenet_v2_file
    reference = ReferenceImg2Vec(model, path)
    embedder = _openvino(model, str(path))
    assert embedder.info().engine == OPENVINO
    refs = {name: reference.vector(encode(img, "PNG")) for name, img in photos.items()}
    separation = min_separation(refs)
    ours = embedder.embed([STRETCH_224.to_array(img) for img in photos.values()])
    for (name, ref), vector in zip(refs.items(), ours, strict=True):
        assert_same_vector(vector, ref, separation, f"{model} {name}")


def test_float32_is_asked_for_not_left_to_the_cpu(mobilenet_v2_file):
    """OpenVINO runs bf16 by itself on CPUs with AMX unless told f32: a silent drift."""
    embedder = _openvino("mobilenet_v2", str(mobilenet_v2_file))
    assert embedder.engine is not None and embedder.engine.precision == "f32"


def test_the_converted_model_is_cached_keyed_and_verified(mobilenet_v2_file, caplog):
    first = _openvino("mobilenet_v2", str(mobilenet_v2_file)).engine
    assert first is not None and not first.cache_hit
    assert first.entry.parent == engine_cache_dir()
    again = _openvino("mobilenet_v2", str(mobilenet_v2_file)).engine
    assert again is not None and again.cache_hit and again.entry == first.entry
    # Other weights are another entry: the key holds the weights' SHA-256.
    other = _openvino("mobilenet_v2", "random").engine
    assert other is not None and not other.cache_hit and other.entry != first.entry
    assert first.key["weights_sha256"] != other.key["weights_sha256"]
    # A damaged entry is noticed (the files' SHA-256 is recorded) and converted again.
    weights = first.entry / "model.bin"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING):
        rebuilt = _openvino("mobilenet_v2", str(mobilenet_v2_file)).engine
    assert rebuilt is not None and not rebuilt.cache_hit
    assert "stale or damaged" in caplog.text


def test_a_model_converted_by_other_code_is_converted_again(mobilenet_v2_file, monkeypatch):
    """The key holds the source of what was converted (the wrapper, its pooling, the
    normalization): a cache kept across an upgrade of img2vec never runs the old code."""
    import img2vec.models.engines

    first = _openvino("mobilenet_v2", str(mobilenet_v2_file)).engine
    assert _openvino("mobilenet_v2", str(mobilenet_v2_file)).engine.cache_hit
    monkeypatch.setattr(img2vec.models.engines, "code_digest", lambda module: "edited")
    edited = _openvino("mobilenet_v2", str(mobilenet_v2_file)).engine
    assert not edited.cache_hit and edited.entry != first.entry


def test_graph_auto_is_openvino_on_cpu_and_the_engine_is_cpu_only(mobilenet_v2_file):
    auto = build_embedder(model="mobilenet_v2", weights="random", device="cpu", engine="auto")
    assert auto.info().engine == OPENVINO
    with pytest.raises(ConfigError, match="openvino runs float32, bfloat16"):
        _openvino("mobilenet_v2", "random", dtype="float16")


def test_bfloat16_runs_where_the_cpu_has_it_and_is_refused_clearly_where_not(
    mobilenet_v2_file, photos
):
    """The fast mode changes vectors (never the default); each stays nearer its own photo's
    float32 vector than any other photo's is. On a CPU without AMX or AVX512-BF16 it would be
    slower than float32, and start-up says so instead."""
    import openvino as ov

    capable = "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    if not capable:
        with pytest.raises(ConfigError, match="AMX or AVX512-BF16"):
            _openvino("mobilenet_v2", str(mobilenet_v2_file), dtype="bfloat16")
        return
    fast = _openvino("mobilenet_v2", str(mobilenet_v2_file), dtype="bfloat16")
    exact = _openvino("mobilenet_v2", str(mobilenet_v2_file))
    assert fast.engine is not None and fast.engine.precision == "bf16"
    assert fast.info().dtype == "bfloat16"
    arrays = [STRETCH_224.to_array(img) for img in photos.values()]
    approx, ref = fast.embed(arrays), exact.embed(arrays)
    assert approx.dtype == np.float32 and approx.shape == ref.shape
    assert not np.allclose(approx, ref)  # it is another computation...
    for i in range(len(arrays)):  # ...whose vectors still find their own photo
        distances = np.linalg.norm(ref - approx[i], axis=1)
        assert int(np.argmin(distances)) == i


def test_a_test_run_keeps_converted_models_out_of_the_users_home(monkeypatch):
    # tests/conftest.py gives the run its own TORCH_HOME: services started without
    # IMG2VEC_ENGINE_CACHE convert into it, and it is removed when the run ends.
    monkeypatch.delenv("IMG2VEC_ENGINE_CACHE")
    assert Path.home() not in engine_cache_dir().parents
    assert engine_cache_dir().parent.name.startswith("img2vec-tests-torch-")
