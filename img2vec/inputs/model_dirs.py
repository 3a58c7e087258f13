"""Where a CLIP-style model directory comes from (`IMG2VEC_WEIGHTS` for multi2vec-clip): a
directory as it is; a Hugging Face hub name, fetched once into the hub's cache;
`open_clip:NAME:TAG`, an OpenCLIP layout written into that cache (open_clip fetches its
weights); or `random`, a seeded random CLIP written once. Its family reads what the
directory holds (img2vec/models/clip/registry.py)."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from img2vec.inputs import openclip

# What a model directory needs from the hub: configs, tokenizer and processor files, weights
# (older sentence-transformers repositories have only pytorch_model.bin: read with
# `weights_only`, tensors and nothing else).
HUB_FILES = ["*.json", "*.safetensors", "*.bin", "*.txt", "*.model"]
_REPO_ID = re.compile(r"^[\w.-]+/[\w.-]+$")
# multi2vec-clip's default (the image Weaviate's docs use): texts through the multilingual
# student, images through the CLIP it was distilled from.
IMAGE_TOWER_OF = {
    "sentence-transformers/clip-ViT-B-32-multilingual-v1": "sentence-transformers/clip-ViT-B-32"
}


RANDOM = "random"


def resolve_model_dir(weights: str, timeout_s: float = 30.0) -> Path:
    """`weights` as a model directory: a directory as is, or a hub name (`openai/clip-vit-
    base-patch32`) fetched once into Hugging Face's cache (each file verified against the
    hub's SHA-256 by huggingface_hub) and found there afterwards, offline too. A text model
    of IMAGE_TOWER_OF comes with its image tower: both fetched, joined as `clip/` + `text/`."""
    path = Path(weights).expanduser()
    if path.is_dir():
        return path
    if weights == RANDOM:
        return random_model_dir()
    if weights.startswith(openclip.SCHEME):
        from huggingface_hub import constants

        return openclip.layout_for(weights, Path(constants.HF_HUB_CACHE))
    if not _REPO_ID.match(weights):
        raise ValueError(f"{weights}: neither a model directory nor a hub name like owner/model")
    if weights not in IMAGE_TOWER_OF:
        return _fetch(weights, timeout_s)
    try:
        text, image = _fetch(weights, timeout_s), _fetch(IMAGE_TOWER_OF[weights], timeout_s)
    except ValueError as exc:
        raise ValueError(
            f"{exc}; for {weights}, IMG2VEC_WEIGHTS=DIR holds two such directories: DIR/text "
            f"({weights}) and DIR/clip ({IMAGE_TOWER_OF[weights]})"
        ) from None
    from huggingface_hub import constants

    joined = Path(constants.HF_HUB_CACHE) / "img2vec" / weights.replace("/", "--")
    joined.mkdir(parents=True, exist_ok=True)
    for name, target in (("clip", image), ("text", text)):
        link = joined / name
        if not (link.is_symlink() and link.resolve() == target.resolve()):
            staged = joined / f".{name}.{os.getpid()}"
            staged.unlink(missing_ok=True)
            staged.symlink_to(target, target_is_directory=True)
            staged.replace(link)  # atomic: a replica starting meanwhile sees old or new
    return joined


def random_model_dir(seed: int = 0) -> Path:
    """`weights: random`: a seeded random CLIP of ViT-B/32's sizes (512-d vectors) with a
    byte-level tokenizer (no merges), written once into the Hugging Face cache. The API runs
    offline; the vectors mean nothing (tests, benchmarks, trying it out)."""
    import torch
    from huggingface_hub import constants
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    root = Path(constants.HF_HUB_CACHE) / "img2vec" / f"random-clip-vit-b32-seed{seed}"
    if (root / "config.json").is_file():
        return root
    staged = root.with_name(f"{root.name}.tmp{os.getpid()}")
    staged.mkdir(parents=True, exist_ok=True)
    chars = openclip.bytes_to_unicode()
    vocab = [*chars, *(c + "</w>" for c in chars), "<|startoftext|>", "<|endoftext|>"]
    (staged / "vocab.json").write_text(json.dumps({v: i for i, v in enumerate(vocab)}))
    (staged / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(staged / "vocab.json"), str(staged / "merges.txt"))
    torch.manual_seed(seed)
    # CLIP pools the end token's state: its id must be this vocabulary's.
    start, end = len(vocab) - 2, len(vocab) - 1
    text = {
        "vocab_size": len(vocab),
        "bos_token_id": start,
        "eos_token_id": end,
        "pad_token_id": end,
    }
    config = CLIPConfig(text_config=text, projection_dim=512)
    CLIPModel(config).eval().save_pretrained(staged)
    CLIPProcessor(image_processor=CLIPImageProcessor(), tokenizer=tokenizer).save_pretrained(staged)
    if root.exists():  # another process wrote it meanwhile: the same seed, the same model
        shutil.rmtree(staged)
    else:
        os.replace(staged, root)
    return root


def _fetch(repo: str, timeout_s: float) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo, allow_patterns=HUB_FILES, etag_timeout=timeout_s))
    except Exception as exc:
        why = (str(exc).splitlines() or [""])[0][:160]
        raise ValueError(
            f"cannot fetch {repo} from the Hugging Face hub ({type(exc).__name__}: {why}). "
            f"Offline: on a machine with network run `hf download {repo} --local-dir DIR`, "
            "copy DIR here and set IMG2VEC_WEIGHTS=DIR"
        ) from None
