"""The CUDA path: what only a GPU runs. Skipped where no CUDA device is visible (CI); run on a
card with `IMG2VEC_DEVICE=cuda pytest tests/unit` (bench/gpu.sh does).

Checked here: float32 on CUDA (IEEE math, cudnn autotuning, uint8 upload through pinned memory,
normalization on the device, padded batches) gives the reference's vectors by the parity
measure; TF32 and float16 stay within their documented drift; a real CUDA out-of-memory error
is recognised as one (the batcher splits the batch on it); the precision flags are what the
dtype asks for; a vector is the same bits whatever batch it ran in (images and CLIP)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from img2vec.inputs.preprocessing import STRETCH_224
from img2vec.models.engines import precision_flags
from img2vec.models.image import build_embedder, is_out_of_memory
from tests.support.parity import assert_same_vector, min_separation, relative_error
from tests.support.reference import ReferenceImg2Vec

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

# On CPU float16 drifts by 0.01-0.02 and bfloat16 by 0.1 (docs/benchmarks.md); these bound a change
# that would make TF32/float16 an index-breaking option rather than a small drift.
MAX_RELATIVE_ERROR = {"tf32": 0.05, "float16": 0.05, "bfloat16": 0.15}


@pytest.fixture(scope="module", params=["mobilenet_v2", "resnet50"])
def case(request, photos, resnet50_file, mobilenet_v2_file):
    path = mobilenet_v2_file if request.param == "mobilenet_v2" else resnet50_file
    ref = ReferenceImg2Vec(request.param, path)
    expected = {name: ref.vector_of(img) for name, img in photos.items()}
    arrays = [STRETCH_224.to_array(img) for img in photos.values()]
    return request.param, path, expected, arrays


def test_the_compiled_graph_gives_the_reference_vectors_in_float32(case):
    """engine compiled (torch.compile, CUDA graphs at the padded sizes): prepared for a GPU
    lease; the same parity as the frozen graph before it is offered as anything more."""
    model, path, expected, arrays = case
    emb = build_embedder(model=model, weights=str(path), device="cuda", engine="compiled")
    emb.warm_up(8)
    assert emb.info().engine == "compiled"
    out = emb.embed(arrays)
    separation = min_separation(expected)
    for (name, ref), vec in zip(expected.items(), out, strict=True):
        assert_same_vector(vec, ref, separation, f"{model} {name} compiled")


def test_float32_on_cuda_gives_the_reference_vectors(case):
    model, path, expected, arrays = case
    emb = build_embedder(model=model, weights=str(path), device="cuda")
    assert precision_flags() == {"cudnn.conv": "ieee", "cuda.matmul": "ieee"}
    emb.warm_up(8)
    out = emb.embed(arrays)
    separation = min_separation(expected)
    for (name, ref), vec in zip(expected.items(), out, strict=True):
        assert_same_vector(vec, ref, separation, f"{model} {name} on cuda")


@pytest.mark.parametrize("dtype", ["tf32", "float16", "bfloat16"])
def test_faster_precisions_drift_within_their_bound(case, dtype):
    model, path, expected, arrays = case
    emb = build_embedder(model=model, weights=str(path), device="cuda", dtype=dtype)
    if dtype == "tf32":
        assert precision_flags() == {"cudnn.conv": "tf32", "cuda.matmul": "tf32"}
    out = emb.embed(arrays)
    errors = [relative_error(v, r) for v, r in zip(out, expected.values(), strict=True)]
    assert max(errors) < MAX_RELATIVE_ERROR[dtype], errors
    if dtype != "bfloat16":  # the options we offer stay far from another photo's vector
        assert max(errors) < min_separation(expected) / 4, errors


@pytest.mark.parametrize(("engine", "dtype"), [("torchscript", "float32"), ("eager", "float32"),
                                            ("torchscript", "float16")])  # fmt: skip
def test_a_vector_is_bit_identical_whatever_batch_it_ran_in(case, engine, dtype):
    """The same bits alone as in any padded batch, mix and position (issue 33): cudnn picks
    its algorithms by heuristics (not timing), and where the buckets' kernels still differ,
    the warm-up check finds it and every pass runs at the largest batch."""
    model, path, _, arrays = case
    emb = build_embedder(model=model, weights=str(path), device="cuda", engine=engine, dtype=dtype)
    emb.warm_up(32)
    info = emb.info()
    assert info.batch_invariant is True, info
    assert emb.buckets in ([1, 2, 4, 8, 16, 32], [32]), emb.buckets
    assert (emb.buckets == [32]) == (info.fixed_pass == 32)
    alone = [emb.embed([a])[0] for a in arrays]
    rng = np.random.default_rng(0)
    for n in (2, 3, 17, 32):  # padded to 2, 4, 32 and none (with buckets)
        picked = rng.choice(len(arrays), size=n, replace=True)
        for i, v in zip(picked, emb.embed([arrays[i] for i in picked]), strict=True):
            assert np.array_equal(v, alone[i]), (model, n, float(np.abs(v - alone[i]).max()))


def test_clip_towers_on_cuda_are_bit_identical_whatever_they_are_batched_with(clip_dir, photos):
    """The multi2vec-clip model on a GPU (eager towers): images and texts of several lengths,
    alone and in random mixes, the same bits."""
    from img2vec.inputs.multimodal import TextTokenizer
    from img2vec.models.clip.registry import read_model_dir
    from img2vec.models.clip.towers import IMAGE, TEXT, Input, Towers

    spec = read_model_dir(clip_dir)
    towers = Towers(spec, "cuda", 2)
    towers.warm_up(32)
    assert towers.info()["batch_invariant"] is True, towers.info()
    texts = ["a cat", "a photo of a dog", "red rocket on the moon", "a cup", "a dog"]
    inputs = [Input(IMAGE, spec.preprocess.to_array(p)) for p in photos.values()]
    inputs += [Input(TEXT, t) for t in TextTokenizer(spec).encode(texts)]
    alone = [towers.run([x])[0] for x in inputs]
    rng = np.random.default_rng(0)
    for n in (2, 5, 17, 32):
        picked = rng.choice(len(inputs), size=n, replace=True)
        for i, v in zip(picked, towers.run([inputs[i] for i in picked]), strict=True):
            assert np.array_equal(v, alone[i]), (i, n, float(np.abs(v - alone[i]).max()))


def test_a_real_cuda_out_of_memory_is_recognised():
    free, _ = torch.cuda.mem_get_info()
    with pytest.raises(torch.OutOfMemoryError) as caught:
        torch.empty(free * 4, dtype=torch.uint8, device="cuda")
    assert is_out_of_memory(caught.value)
    torch.cuda.empty_cache()
