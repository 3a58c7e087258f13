"""The multi2vec-clip library path (img2vec/models/clip/: the families read by registry.py, and
towers.py; img2vec/inputs/multimodal.py) against the independent reference (transformers' own
processor and model, tests/support/clip_reference.py): the tokenizer's ids, and each tower's
vectors, with random towers and OpenAI CLIP's real tokenizer; SigLIP's and SigLIP 2's padding and
pooling with small tokenizers; MetaCLIP 1 and 2 on CLIP's path; OpenCLIP against open_clip itself
(its tokenizer, transform and towers)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from img2vec.inputs.multimodal import ClipSpec, TextTokenizer
from img2vec.models.clip.registry import read_model_dir
from img2vec.models.clip.towers import IMAGE, TEXT, Input, Towers
from tests.support.clip_reference import ReferenceClip
from tests.support.images import photo
from tests.support.parity import min_separation, relative_error

ROOT = Path(__file__).resolve().parents[2]

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera")  # rocket: an odd crop margin
TEXTS = [
    "a photo of a cat",
    "Ein Foto einer Katze, café, naïve — 東京 🚀",
    "   A   RED rocket\non the launch pad  ",
    " ".join(["astronaut"] * 120),  # past CLIP's 77 tokens
]
# The bound for the OpenAI CLIP path. Measured (random towers, these photos): images
# 0.6-1.4e-4 (PIL's bicubic in the ingress against torchvision's), texts 0. Each mistake
# checked moves a vector by 0.026 (a shorter side of 226) to 0.055 (a stretch for the crop).
CLIP_BOUND = 1e-3
# SigLIP: images 2-8e-4 (its stretch from 640 to 224 amplifies the two resizes' difference);
# 1 % of the distance between photos (0.19) is 2x that, and a bilinear resize moves 0.032.
SIGLIP_FRACTION = 0.01


@pytest.fixture(autouse=True)
def _engine_cache(tmp_path_factory, monkeypatch):
    """Converted image towers of this run's own, not the user's cache."""
    monkeypatch.setenv("IMG2VEC_ENGINE_CACHE", str(tmp_path_factory.getbasetemp() / "engines"))


def warmed_towers(path, tmp_path_factory, engine: str = "auto") -> tuple[ClipSpec, Towers]:
    """A model directory's spec and towers, warmed up as the model replica warms them (the
    invariance check, fixed passes), converted into this run's engine cache: for
    module-scoped fixtures, which run before the autouse one."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("IMG2VEC_ENGINE_CACHE", str(tmp_path_factory.getbasetemp() / "engines"))
        spec = read_model_dir(path)
        towers = Towers(spec, "cpu", 2, engine=engine)
        towers.warm_up(8)
    assert engine == "auto" or towers.engine_name == engine
    return spec, towers


@pytest.fixture(scope="module", params=["eager", "openvino"])
def clip(request, clip_dir, tmp_path_factory):
    """Both engines of both towers."""
    spec, towers = warmed_towers(clip_dir, tmp_path_factory, request.param)
    return spec, towers, ReferenceClip(clip_dir)


def test_the_tokenizer_gives_the_reference_ids_and_truncates_keeping_the_end_token(clip):
    spec, _, ref = clip
    ours = TextTokenizer(spec).encode(TEXTS)
    theirs = ref.processor.tokenizer(TEXTS, truncation=True, max_length=77)["input_ids"]
    assert [t.tolist() for t in ours] == theirs
    assert [len(t) for t in ours][-1] == 77 == spec.context
    end = ref.processor.tokenizer.eos_token_id
    assert all(t[-1] == end for t in ours)


def test_clip_image_and_text_vectors_are_the_references(clip):
    spec, towers, ref = clip
    images = [photo(name) for name in PHOTOS]
    ids = TextTokenizer(spec).encode(TEXTS)
    # One pass of mixed inputs, as the batcher forms them: images and texts interleaved.
    inputs = [Input(IMAGE, spec.preprocess.to_array(img)) for img in images]
    texts = [Input(TEXT, t) for t in ids]
    inputs = [x for pair in zip(inputs, texts, strict=False) for x in pair] + inputs[4:]
    vectors = towers.run(inputs)
    ours_images = [v for x, v in zip(inputs, vectors, strict=True) if x.kind == IMAGE]
    ours_texts = [v for x, v in zip(inputs, vectors, strict=True) if x.kind == TEXT]
    ref_images, ref_texts = ref.images(images), ref.texts(TEXTS)
    assert min_separation(dict(zip(PHOTOS, ref_images, strict=True))) > 100 * CLIP_BOUND
    for name, o, r in zip(PHOTOS, ours_images, ref_images, strict=True):
        assert relative_error(o, r) <= CLIP_BOUND, (name, relative_error(o, r))
    for text, o, r in zip(TEXTS, ours_texts, ref_texts, strict=True):
        assert relative_error(o, r) <= CLIP_BOUND, (text[:20], relative_error(o, r))
    assert all(abs(np.linalg.norm(v) - 1) < 1e-5 for v in vectors)


def test_a_text_has_the_same_vector_alone_and_padded_in_a_pass_with_longer_ones(clip):
    spec, towers, _ = clip
    ids = TextTokenizer(spec).encode(TEXTS)
    alone = towers.embed_texts([ids[0]])[0]
    together = towers.embed_texts(ids)[0]
    assert relative_error(together, alone) < 1e-5


def test_a_texts_vector_is_bit_identical_whatever_it_is_batched_with(clip):
    """The same bits as alone, in any company, position and pass size: texts of several
    lengths (so that padding to the longest would change the shorter ones), duplicates of
    one length, in random mixes. On both engines: OpenVINO, the CPU's default, is invariant
    as it is; eager PyTorch picks its matmul blocking by the number of rows, so its warm-up
    check finds it is not and it runs fixed passes."""
    spec, towers, _ = clip
    assert towers.info()["batch_invariant"] is True
    assert towers.info()["fixed_pass"]["text"] == (1 if towers.engine_name == "eager" else None)
    texts = [*TEXTS, "a cat", "a dog", "red", "a photo of a dog", "a photo of a cup"]
    ids = TextTokenizer(spec).encode(texts)
    alone = [towers.embed_texts([t])[0] for t in ids]
    assert len({len(t) for t in ids}) >= 4
    rng = np.random.default_rng(0)
    for _ in range(12):
        picked = rng.choice(len(ids), size=int(rng.integers(2, 9)), replace=True)
        for i, v in zip(picked, towers.embed_texts([ids[i] for i in picked]), strict=True):
            assert np.array_equal(v, alone[i]), (texts[i][:20], float(np.abs(v - alone[i]).max()))


def test_an_images_vector_is_bit_identical_whatever_it_is_batched_with(clip):
    """Real photos, alone and in random mixes of 2 to 8 with repeats, each position."""
    spec, towers, _ = clip
    arrays = [spec.preprocess.to_array(photo(name)) for name in PHOTOS]
    alone = [towers.embed_images(a[None])[0] for a in arrays]
    rng = np.random.default_rng(1)
    for _ in range(6):
        picked = rng.choice(len(arrays), size=int(rng.integers(2, 9)), replace=True)
        vectors = towers.embed_images(np.stack([arrays[i] for i in picked]))
        for i, v in zip(picked, vectors, strict=True):
            assert np.array_equal(v, alone[i]), (PHOTOS[i], float(np.abs(v - alone[i]).max()))


@pytest.mark.parametrize("family", ["siglip", "siglip2"])
def test_siglip_pads_to_its_full_context_and_matches_the_reference(family, request):
    """SigLIP, and SigLIP 2's fixed-resolution checkpoints (a SiglipModel at 256 px whose
    pad token, 0, is not its end token, 1): texts padded to the full context with the pad
    token, unmasked, pooled at the last position; images stretched to the tower's size."""
    path = request.getfixturevalue(f"{family}_dir")
    spec = read_model_dir(path)
    assert (spec.family, spec.context, spec.fixed_length) == ("siglip", 64, True)
    assert spec.pad_id == (0 if family == "siglip2" else 1)
    towers, ref = Towers(spec, "cpu", 2), ReferenceClip(path)
    texts = ["a photo of a cat", "red rocket on the moon", " ".join(["dog"] * 100)]
    ids = TextTokenizer(spec).encode(texts)
    assert [len(t) for t in ids] == [6, 6, 64]  # the end token included
    images = [photo(name) for name in PHOTOS]
    ref_images = ref.images(images)
    bound = SIGLIP_FRACTION * min_separation(dict(zip(PHOTOS, ref_images, strict=True)))
    ours = towers.embed_images(np.stack([spec.preprocess.to_array(i) for i in images]))
    for name, o, r in zip(PHOTOS, ours, ref_images, strict=True):
        assert relative_error(o, r) <= bound, (name, relative_error(o, r), bound)
    for text, o, r in zip(texts, towers.embed_texts(ids), ref.texts(texts), strict=True):
        assert relative_error(o, r) <= 1e-5, text[:20]


def assert_photos_match(spec: ClipSpec, towers: Towers, ref) -> None:
    """Every photo's vector within CLIP_BOUND of the reference's, a bound far below the
    distance between two photos."""
    images = [photo(name) for name in PHOTOS]
    ref_images = ref.images(images)
    assert min_separation(dict(zip(PHOTOS, ref_images, strict=True))) > 100 * CLIP_BOUND
    ours = towers.embed_images(np.stack([spec.preprocess.to_array(i) for i in images]))
    for name, o, r in zip(PHOTOS, ours, ref_images, strict=True):
        assert relative_error(o, r) <= CLIP_BOUND, (name, relative_error(o, r))


@pytest.fixture(scope="module", params=["metaclip", "metaclip2"])
def metaclip(request, tmp_path_factory):
    """MetaCLIP 1 (a CLIPModel with QuickGELU, OpenAI's tokenizer) and MetaCLIP 2
    (`MetaClip2Model`, whose pad token is not its end token), both on the default engine."""
    from tests.support.clip_models import write_metaclip

    if request.param == "metaclip":
        path = write_metaclip(tmp_path_factory.mktemp("metaclip"))
    else:
        path = request.getfixturevalue("metaclip2_dir")
    spec, towers = warmed_towers(path, tmp_path_factory)
    return request.param, spec, towers, ReferenceClip(path)


def test_metaclip_1_and_2_take_clips_path_and_give_the_references_vectors(metaclip):
    """End-token pooling, masked padding, projection, L2-normalized: the tokenizer's ids, each
    text and image against transformers' own model and processor, and the same bits for a
    text alone and among longer ones."""
    name, spec, towers, ref = metaclip
    assert spec.family == ("clip" if name == "metaclip" else "metaclip_2")
    assert spec.fixed_length is False and spec.context == 77
    texts = ["a photo of a cat", "red rocket on the moon with a big blue dog", "a dog"]
    ids = TextTokenizer(spec).encode(texts)
    theirs = ref.processor.tokenizer(texts, truncation=True, max_length=77)["input_ids"]
    assert [t.tolist() for t in ids] == theirs
    for text, o, r in zip(texts, towers.embed_texts(ids), ref.texts(texts), strict=True):
        assert relative_error(o, r) <= CLIP_BOUND, (text, relative_error(o, r))
    assert_photos_match(spec, towers, ref)
    alone = towers.embed_texts([ids[2]])[0]
    assert np.array_equal(towers.embed_texts(ids)[2], alone)


@pytest.fixture(
    scope="module",
    params=[("openclip_dir", "eager"), ("openclip_dir", "openvino"),
            ("openclip_xlmr_dir", "eager"), ("openclip_xlmr_dir", "openvino")],
    ids=lambda p: f"{p[0].removesuffix('_dir')}-{p[1]}",
)  # fmt: skip
def openclip_towers(request, tmp_path_factory):
    """An OpenCLIP model on both engines, with open_clip's own text tower and tokenizer, and
    with a Hugging Face text tower and tokenizer (XLM-RoBERTa); open_clip's own pipeline as
    the reference."""
    from tests.support.clip_reference import ReferenceOpenClip

    layout, engine = request.getfixturevalue(request.param[0]), request.param[1]
    spec, towers = warmed_towers(layout, tmp_path_factory, engine)
    return spec, towers, ReferenceOpenClip(layout / "tiny")


# What open_clip's tokenizers do to a text besides their vocabulary: ftfy's fixes (mojibake),
# HTML entities unescaped twice (ftfy leaves them inside markup), whitespace runs as one, and
# for its SimpleTokenizer Python's lower-casing (a final sigma) with its special tokens' text
# read as characters (an HF tokenizer reads its own as its tokens); both truncate keeping the
# end token.
OPENCLIP_TEXTS = [
    *TEXTS, "<b>fish &amp; chips</b>", "schÃ¶n ΣΑΣ", "a <|endoftext|> b", "a <s> b </s>",
    "Ж\u00a0\u00a0cat  \t dog",
]  # fmt: skip


def test_openclip_tokenizes_as_open_clip_and_gives_its_vectors(openclip_towers):
    """The multi2vec-clip container's OpenCLIP path (open_clip's get_tokenizer, its inference
    transform, encode_text / encode_image, normalized): the same token ids, padded to the full
    context with the tokenizer's pad token (0 for open_clip's own); every text and photo within
    the bound; a text's bits alone and among others."""
    spec, towers, ref = openclip_towers
    assert (spec.family, spec.context, spec.fixed_length) == ("openclip", 77, True)
    ids = TextTokenizer(spec).encode(OPENCLIP_TEXTS)
    padded = np.stack(
        [np.pad(t, (0, spec.context - len(t)), constant_values=spec.pad_id) for t in ids]
    )
    assert np.array_equal(padded, ref.tokenizer(OPENCLIP_TEXTS).numpy())
    ours, theirs = towers.embed_texts(ids), ref.texts(OPENCLIP_TEXTS)
    for text, o, r in zip(OPENCLIP_TEXTS, ours, theirs, strict=True):
        assert relative_error(o, r) <= CLIP_BOUND, (text[:20], relative_error(o, r))
    assert_photos_match(spec, towers, ref)
    assert np.array_equal(towers.embed_texts([ids[0]])[0], towers.embed_texts(ids)[0])
    assert towers.info()["model"] == "local-dir:tiny"


def test_the_openclip_checkpoint_hashed_is_the_one_open_clip_loads(tmp_path):
    """In a `local-dir:` holding several checkpoints, /meta's weights hash names the file
    open_clip loads (its preferred name), not the first by name."""
    from tests.support.clip_models import write_openclip

    layout = write_openclip(tmp_path)
    tiny = layout / "tiny"
    (tiny / "a_finetune.safetensors").write_bytes(
        (tiny / "open_clip_model.safetensors").read_bytes()
    )
    assert [p.name for p in read_model_dir(layout).weights] == ["open_clip_model.safetensors"]


def test_openclip_cleans_texts_as_open_clip_does():
    """Each of open_clip's text cleanings (`get_clean_fn`: SimpleTokenizer's "lower", an HF
    tokenizer's "whitespace", SigLIP's "canonicalize"), applied by the ingress without torch."""
    from open_clip.tokenizer import get_clean_fn

    from img2vec.inputs.openclip import CLEANINGS, clean_text

    texts = [*OPENCLIP_TEXTS, "Hello, World! it's_a snake_case test...", " ΣΑΣ. "]
    texts.append("ǅ ﬁ \uff21\uff22")  # a titlecase digraph, a ligature, full-width letters
    for clean in CLEANINGS:
        assert [clean_text(t, clean) for t in texts] == [get_clean_fn(clean)(t) for t in texts]


def openclip_with(source, dest, **text_cfg):
    """A copy of an OpenCLIP layout whose open_clip config's `text_cfg` has these keys set."""
    shutil.copytree(source, dest)
    saved = dest / "tiny" / "open_clip_config.json"
    config = json.loads(saved.read_text())
    config["model_cfg"]["text_cfg"] |= text_cfg
    saved.write_text(json.dumps(config))
    return dest


@pytest.mark.parametrize(
    ("layout_fixture", "settings"),
    [("openclip_xlmr_dir", {"clean": "canonicalize", "strip_sep_token": True}),
     ("openclip_xlmr_dir", {"clean": "lower"}),
     ("openclip_dir", {"clean": "lower"})],
)  # fmt: skip
def test_openclip_tokenizer_settings_tokenize_as_open_clip(
    request, tmp_path, layout_fixture, settings
):
    """The tokenizer settings of open_clip's config (an HF tokenizer's `clean` and
    `strip_sep_token`, the separator id replaced with 0, as CLIPA's BERT texts are; its
    SimpleTokenizer's default, written out) give open_clip's own ids."""
    import open_clip

    source = request.getfixturevalue(layout_fixture)
    layout = openclip_with(source, tmp_path / "layout", tokenizer_kwargs=settings)
    spec = read_model_dir(layout)
    ids = TextTokenizer(spec).encode(OPENCLIP_TEXTS)
    ours = np.stack([np.pad(t, (0, 77 - len(t)), constant_values=spec.pad_id) for t in ids])
    theirs = open_clip.get_tokenizer(f"local-dir:{layout / 'tiny'}")(OPENCLIP_TEXTS)
    assert np.array_equal(ours, theirs.numpy())


def test_an_openclip_model_with_unserved_tokenizer_settings_or_an_unknown_tag_is_refused(
    tmp_path, openclip_xlmr_dir, openclip_dir
):
    """Tokenizer settings the ingress does not reproduce (NLLB's `language`, `tokenizer_mode`
    "clips", a SimpleTokenizer cleaning other than its lower-casing) are refused by name,
    before anything is fetched; an unknown tag lists the known ones."""
    language = {"tokenizer_kwargs": {"language": "fra_Latn"}}
    with pytest.raises(ValueError, match=r"tokenizer settings \{'language': 'fra_Latn'\}"):
        read_model_dir(openclip_with(openclip_xlmr_dir, tmp_path / "nllb", **language))
    clips = openclip_with(openclip_xlmr_dir, tmp_path / "clips", tokenizer_mode="clips")
    with pytest.raises(ValueError, match="tokenizer_mode 'clips'"):
        read_model_dir(clips)
    simple = {"tokenizer_kwargs": {"clean": "whitespace"}}
    with pytest.raises(ValueError, match=r"SimpleTokenizer settings \{'clean': 'whitespace'\}"):
        read_model_dir(openclip_with(openclip_dir, tmp_path / "simple", **simple))
    (tmp_path / "config.json").write_text(json.dumps({"model_name": "ViT-B-32", "pretrained": "x"}))
    with pytest.raises(ValueError, match=r"'x' is neither a tag of ViT-B-32 \(known: .*laion2b"):
        read_model_dir(tmp_path)


def test_a_directory_that_is_not_a_clip_model_is_refused_saying_why(tmp_path, clip_dir):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "resnet"}))
    with pytest.raises(ValueError, match=r"'resnet' is not a CLIP-style model"):
        read_model_dir(tmp_path)
    with pytest.raises(ValueError, match="neither a model directory nor a hub name"):
        read_model_dir(str(tmp_path / "missing"))
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "processor_config.json"):
        (bare / name).write_bytes((clip_dir / name).read_bytes())
    with pytest.raises(ValueError, match=r"no tokenizer\.json"):
        read_model_dir(bare)


def test_a_hub_name_offline_says_how_to_bring_the_model(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(ValueError, match=r"hf download openai/clip-vit-base-patch32 --local-dir"):
        read_model_dir("openai/clip-vit-base-patch32")


@pytest.mark.parametrize(
    ("name", "folder", "config"),
    [
        ("open_clip:ViT-B-32:laion2b_s34b_b79k", "open_clip--ViT-B-32--laion2b_s34b_b79k",
         {"model_name": "ViT-B-32", "pretrained": "laion2b_s34b_b79k"}),
        ("open_clip:hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K",
         "open_clip--hf-hub--laion--CLIP-ViT-B-32-laion2B-s34B-b79K--",
         {"model_name": "hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K", "pretrained": None}),
    ],
)  # fmt: skip
def test_an_openclip_name_offline_writes_its_layout_and_says_how_to_bring_the_weights(
    name, folder, config, monkeypatch, tmp_path
):
    """`open_clip:NAME:TAG` (or `open_clip:hf-hub:REPO`) becomes the container's layout in the
    hub cache, where open_clip would fetch the weights; offline, the error says how to bring
    them."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    command = rf"python -m img2vec\.models\.clip open_clip:{name[10:]}"
    with pytest.raises(ValueError, match=command):
        read_model_dir(name)
    assert json.loads((tmp_path / "img2vec" / folder / "config.json").read_text()) == config


def test_the_default_multilingual_layout_matches_sentence_transformers(tmp_path):
    """multi2vec-clip's default: images through a sentence-transformers CLIP, texts through a
    multilingual DistilBERT student (mean pooling, a dense layer), neither normalized; the
    reference is sentence-transformers itself, loading the same two directories."""
    from sentence_transformers import SentenceTransformer

    from tests.support.clip_models import write_multilingual

    root = write_multilingual(tmp_path)
    spec = read_model_dir(root)
    assert (spec.family, spec.context, spec.pad_id) == ("sentence-transformers", 128, 0)
    towers = Towers(spec, "cpu", 2)
    texts = ["a photo of a cat", "Ein Foto einer Katze", "une photo d'un chat " * 60]
    images = [photo(name) for name in PHOTOS]
    ref_texts = SentenceTransformer(str(root / "text"), device="cpu").encode(texts)
    ref_images = SentenceTransformer(str(root / "clip"), device="cpu").encode(images)
    ours_texts = towers.embed_texts(TextTokenizer(spec).encode(texts))
    ours_images = towers.embed_images(np.stack([spec.preprocess.to_array(i) for i in images]))
    assert min_separation(dict(zip(PHOTOS, ref_images, strict=True))) > 100 * CLIP_BOUND
    for o, r in [
        *zip(ours_texts, ref_texts, strict=True),
        *zip(ours_images, ref_images, strict=True),
    ]:
        assert relative_error(o, r) <= CLIP_BOUND
    assert not towers.info()["normalized"] and abs(np.linalg.norm(ours_images[0]) - 1) > 0.1


def test_the_default_hub_name_joins_its_two_towers_from_the_cache_offline(
    tmp_path, monkeypatch, clip_dir
):
    """`sentence-transformers/clip-ViT-B-32-multilingual-v1` names the text model; its image
    tower is fetched with it and the two are joined as clip/ + text/. Here both sit in a
    Hugging Face cache laid out as the hub client leaves it, and the hub is offline."""
    from tests.support.clip_models import write_multilingual

    built = write_multilingual(tmp_path / "src")
    cache = tmp_path / "hub"
    for repo, source in (
        ("sentence-transformers/clip-ViT-B-32-multilingual-v1", built / "text"),
        ("sentence-transformers/clip-ViT-B-32", built / "clip"),
    ):
        entry = cache / f"models--{repo.replace('/', '--')}"
        snapshot = entry / "snapshots" / ("0" * 40)
        shutil.copytree(source, snapshot, symlinks=False)
        (entry / "refs").mkdir()
        (entry / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as hub

    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    spec = read_model_dir("sentence-transformers/clip-ViT-B-32-multilingual-v1")
    assert spec.family == "sentence-transformers"
    assert (spec.path / "clip").resolve() == (
        cache / "models--sentence-transformers--clip-ViT-B-32" / "snapshots" / ("0" * 40)
    )
    assert spec.context == 128


def test_random_weights_run_the_api_offline_with_vit_b32_sizes(tmp_path, monkeypatch):
    """`IMG2VEC_WEIGHTS=random`, as for the image models: a seeded random ViT-B/32 CLIP with a
    byte-level tokenizer, written once into the Hugging Face cache and found there again."""
    import huggingface_hub.constants as hub

    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path))
    spec = read_model_dir("random")
    assert spec.family == "clip" and spec.context == 77 and spec.path.parent.parent == tmp_path
    written = (spec.path / "model.safetensors").stat().st_mtime
    assert read_model_dir("random").path == spec.path
    assert (spec.path / "model.safetensors").stat().st_mtime == written  # not written again
    towers = Towers(spec, "cpu", 2, engine="eager")
    vectors = towers.embed_texts(TextTokenizer(spec).encode(["a cat", "a dog"]))
    assert vectors.shape == (2, 512) and relative_error(vectors[0], vectors[1]) > 1e-3


def test_on_an_avx2_cpu_images_keep_their_bits_in_one_input_calls_run_at_once(tmp_path):
    """OpenVINO's AVX2 kernels (ONEDNN_MAX_CPU_ISA=AVX2 on any x86, natively on an AVX2-only
    EPYC) give a wide image tower other bits batched than alone. The warm-up check finds it
    for the image tower only, and puts that tower in calls of one input run several at once
    (OpenVINO streams, one per thread): the same bits alone and in a pass. Without
    batch_invariance the dependence is there (so the check has something to find)."""
    import subprocess
    import sys

    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"}
    cmd = [sys.executable, "-m", "tests.support.invariance_probe", str(tmp_path)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    on, off = (json.loads(done.stdout.splitlines()[-1])[k] for k in ("true", "false"))
    assert off["same_bits"] is False and off["batch_invariant"] is False
    assert on["fixed_pass"] == {"image": 1, "text": None}
    assert on["streams"] == {"image": 2, "text": None}
    assert on["batch_invariant"] is True and on["same_bits"] is True
