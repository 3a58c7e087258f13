"""What a CLIP-style model's inputs are, read without torch: the spec the model replica
sends the ingress (`ClipSpec`: the tokenizer, the context length, how an image becomes
pixels), the ingress's `TextTokenizer`, and the readers of the input files of a directory in
Hugging Face's `save_pretrained` layout (what multi2vec-clip's `download.py` stores:
`config.json`, `tokenizer.json`, `tokenizer_config.json`, `preprocessor_config.json`), which the
families use. Each family reads its own layout and builds its towers:
img2vec/models/clip/ (registry.py names them).

Texts longer than the model's context (77 tokens for CLIP, 64 for SigLIP) are truncated, as
sentence-transformers does, with the end token kept last; the container we replace answered
them with a 500 ("The size of tensor a (...) must match the size of tensor b (77)").
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from img2vec.errors import InvalidRequest
from img2vec.inputs import openclip
from img2vec.inputs.preprocessing import Preprocess


@dataclass(frozen=True)
class ClipSpec:
    """One model directory's inputs."""

    path: Path
    family: str  # the family that read it and loads it (img2vec/models/clip/registry.py)
    context: int  # tokens per text, the special tokens included
    pad_id: int
    fixed_length: bool  # pad every text to `context` (SigLIP), else to the pass's longest
    preprocess: Preprocess
    # tokenizer.json's text: the ingress builds its tokenizer from the spec the model replica
    # sends it, so an ingress on another node needs no copy of the model directory.
    tokenizer: str = field(repr=False, compare=False, default="")
    # The transformers directories of the image and the text tower (the same one for CLIP
    # and SigLIP; sentence-transformers keeps a CLIP for images and a text model apart).
    image_path: Path | None = None
    text_path: Path | None = None
    # The weight files, where the layout names them (OpenCLIP's one checkpoint); else the
    # towers' directories' *.safetensors and *.bin.
    weights: tuple[Path, ...] = ()
    # OpenCLIP: open_clip's cleaning of a text before its tokenizer (openclip.CLEANINGS), and
    # the separator id its tokenizer replaces with 0 (`strip_sep_token`); None: neither.
    clean: str | None = None
    strip_id: int | None = None

    def describe(self) -> dict[str, Any]:
        """What /meta says about the inputs (what every stored vector depends on)."""
        size = self.preprocess.resize
        return {
            "family": self.family,
            "text_context_tokens": self.context,
            "long_texts": f"truncated to {self.context} tokens (the end token kept last)",
            "image_resize": (
                f"shorter side to {size}, centre crop {self.preprocess.crop}"
                if isinstance(size, int)
                else f"stretch to {size}"
            ),
            "image_resample": self.preprocess.resample.name.lower(),
            "image_mean": list(self.preprocess.mean),
            "image_std": list(self.preprocess.std),
        }


class TextTokenizer:
    """Texts -> token ids (int32, one array per text, at most `context` long)."""

    def __init__(self, spec: ClipSpec) -> None:
        from tokenizers import Tokenizer

        self._tokenizer = Tokenizer.from_str(spec.tokenizer)
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(max_length=spec.context)
        self.context = spec.context
        # open_clip cleans a text before its tokenizer (ftfy, HTML entities, whitespace, and
        # lower case for its SimpleTokenizer).
        self._clean = spec.clean
        self._strip_id = spec.strip_id

    def encode(self, texts: list[str]) -> list[np.ndarray]:
        """One array per text; every text gets its own end token, a long one is cut short
        before it."""
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise InvalidRequest(f"texts[{i}] is not a string")
        if self._clean is not None:
            texts = [openclip.clean_text(text, self._clean) for text in texts]
        encodings = self._tokenizer.encode_batch(texts, add_special_tokens=True)
        ids = [np.asarray(e.ids, dtype=np.int32) for e in encodings]
        if self._strip_id is not None:
            for one in ids:
                one[one == self._strip_id] = 0
        return ids


def image_preprocess(processor: dict[str, Any], name: str) -> Preprocess:
    """transformers' image processor settings as a Preprocess (PIL in the ingress, the mean
    and std applied by the towers): CLIP scales the shorter side and crops the centre,
    SigLIP stretches to a square."""
    size = processor.get("size") or {}
    resample = Image.Resampling(int(processor.get("resample", Image.Resampling.BICUBIC)))
    mean = tuple(float(v) for v in processor.get("image_mean", (0.5, 0.5, 0.5)))
    std = tuple(float(v) for v in processor.get("image_std", (0.5, 0.5, 0.5)))
    if float(processor.get("rescale_factor", 1 / 255)) != 1 / 255 or not processor.get(
        "do_rescale", True
    ):
        raise ValueError(f"{name}: only pixel values rescaled by 1/255 are supported")
    resize: tuple[int, int] | int
    if "shortest_edge" in size:
        resize = int(size["shortest_edge"])
    else:
        resize = (int(size["height"]), int(size["width"]))
    crop = None
    if processor.get("do_center_crop", False):
        crop_size = processor.get("crop_size") or {}
        crop = (int(crop_size["height"]), int(crop_size["width"]))
    return Preprocess(
        name=name,
        resize=resize,
        crop=crop,
        resample=resample,
        mean=mean,  # type: ignore[arg-type]
        std=std,  # type: ignore[arg-type]
        crop_offset="floor",
    )


def load_tokenizer(root: Path) -> Any:
    from tokenizers import Tokenizer

    path = root / "tokenizer.json"
    if not path.is_file():
        raise ValueError(
            f"{root}: no tokenizer.json (a fast tokenizer, as `save_pretrained` writes it)"
        )
    return Tokenizer.from_file(str(path))


def pad_id(root: Path, tokenizer: Any, default: int) -> int:
    """The pad token of tokenizer_config.json, else the end token (what CLIP's own configs
    name as pad), else the family's `default`."""
    config = read_json(root / "tokenizer_config.json", missing_ok=True)
    for key in ("pad_token", "eos_token"):
        token = config.get(key)
        if isinstance(token, dict):
            token = token.get("content")
        if isinstance(token, str) and tokenizer.token_to_id(token) is not None:
            return int(tokenizer.token_to_id(token))
    return default


def read_transformers_dir(
    root: Path, model_types: tuple[str, ...], *, context: int, pad: int, fixed_length: bool
) -> ClipSpec | None:
    """A transformers CLIP-style directory whose config.json's `model_type` is one of
    `model_types` (the spec's family), read with that family's defaults (its context where
    text_config names none, its pad id where the tokenizer's config names none, whether every
    text is padded to the full context); None where config.json names another model_type."""
    config = read_json(root / "config.json", missing_ok=True)
    family = config.get("model_type")
    if family not in model_types:
        return None
    text = config.get("text_config") or {}
    tokenizer = load_tokenizer(root)
    return ClipSpec(
        path=root,
        family=family,
        context=int(text.get("max_position_embeddings", context)),
        pad_id=pad_id(root, tokenizer, pad),
        fixed_length=fixed_length,
        preprocess=image_preprocess(image_processor(root), name=f"{family}-{root.name}"),
        tokenizer=tokenizer.to_str(),
        image_path=root,
        text_path=root,
    )


def image_processor(root: Path) -> dict[str, Any]:
    """preprocessor_config.json (the hub's layout), else processor_config.json's
    "image_processor" (what transformers 5 writes)."""
    flat = root / "preprocessor_config.json"
    if flat.is_file():
        return read_json(flat)
    nested = read_json(root / "processor_config.json").get("image_processor")
    if not isinstance(nested, dict):
        raise ValueError(f"{root}: processor_config.json has no image_processor")
    return nested


def read_json(path: Path, missing_ok: bool = False) -> dict[str, Any]:
    if not path.is_file():
        if missing_ok:
            return {}
        raise ValueError(
            f"{path.parent}: no {path.name} (a model directory saved with `save_pretrained`)"
        )
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a JSON object")
    return data
