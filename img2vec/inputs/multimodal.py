"""What a CLIP-style model directory says about its inputs, read without torch: the text
tokenizer (the Rust `tokenizers` library), the context length, and how an image becomes
pixels. The ingress uses this module (it must not load torch); the towers that turn these
inputs into vectors are `img2vec/models/towers.py`.

A model directory is Hugging Face's `save_pretrained` layout, what multi2vec-clip's
`download.py` stores: `config.json` (`model_type` "clip", "metaclip_2" or "siglip"), the weights,
`tokenizer.json`, `tokenizer_config.json` and `preprocessor_config.json`; or its OpenCLIP layout
(`config.json` naming open_clip's `model_name` and `pretrained`: img2vec/inputs/openclip.py).

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
from img2vec.inputs.model_dirs import resolve_model_dir
from img2vec.inputs.preprocessing import Preprocess

# What each model family does with its inputs (transformers' processors and models):
# CLIP pools the end token, so texts are padded (masked) and any padding leaves them as they
# are; SigLIP pools the last position and was trained on texts padded to the full context,
# unmasked. MetaCLIP 1 checkpoints are CLIP ("clip"); MetaCLIP 2 (`MetaClip2Model`) is CLIP's
# architecture with a multilingual tokenizer whose pad and end tokens differ; SigLIP 2's
# fixed-resolution checkpoints are SigLIP ("siglip") with Gemma's tokenizer (pad 0, end 1).
FAMILIES = ("clip", "metaclip_2", "siglip")
FIXED_LENGTH = {"clip": False, "metaclip_2": False, "siglip": True}
# The families whose text tower pools the end token and projects it (CLIP's shape).
END_TOKEN_POOLED = ("clip", "metaclip_2")


@dataclass(frozen=True)
class ClipSpec:
    """One model directory's inputs."""

    path: Path
    family: str  # a FAMILIES entry, "openclip" or "sentence-transformers"
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

    @classmethod
    def from_dir(cls, path: str | Path) -> ClipSpec:
        """A model directory, or a hub name (`resolve_model_dir`)."""
        root = resolve_model_dir(str(path))
        if (root / "clip" / "modules.json").is_file() and (root / "text").is_dir():
            return cls._sentence_transformers(root)
        if openclip.is_layout(root):
            return cls._openclip(root)
        config = _read_json(root / "config.json")
        family = config.get("model_type")
        if family not in FAMILIES:
            raise ValueError(
                f"{root}: model_type {family!r} is not a CLIP-style model "
                f"(supported: {', '.join(FAMILIES)}, OpenCLIP's config.json with model_name and "
                "pretrained, or the clip/ and text/ directories of sentence-transformers)"
            )
        text = config.get("text_config") or {}
        context = int(text.get("max_position_embeddings", 64 if family == "siglip" else 77))
        tokenizer = load_tokenizer(root)
        return cls(
            path=root,
            family=family,
            context=context,
            pad_id=_pad_id(root, tokenizer, family),
            fixed_length=FIXED_LENGTH[family],
            preprocess=image_preprocess(_image_processor(root), name=f"{family}-{root.name}"),
            tokenizer=tokenizer.to_str(),
            image_path=root,
            text_path=root,
        )

    @classmethod
    def _sentence_transformers(cls, root: Path) -> ClipSpec:
        """multi2vec-clip's default layout (what its download.py saves): `clip/`, a
        sentence-transformers CLIP for images, and `text/`, a sentence-transformers text
        model (e.g. the multilingual DistilBERT student: mean pooling, a dense layer)."""
        image = st_modules(root / "clip")
        if [kind for kind, _ in image] != ["CLIPModel"]:
            raise ValueError(f"{root / 'clip'}: expected one CLIPModel module, got {image}")
        text_modules = st_modules(root / "text")
        if not text_modules or text_modules[0][0] != "Transformer":
            raise ValueError(f"{root / 'text'}: expected a Transformer module first")
        image_path, text_path = image[0][1], text_modules[0][1]
        tokenizer = load_tokenizer(text_path)
        config = _read_json(text_path / "config.json")
        limit = int(config.get("max_position_embeddings", 512))
        st_config = _read_json(root / "text" / "sentence_bert_config.json", missing_ok=True)
        tokenizer_config = _read_json(text_path / "tokenizer_config.json", missing_ok=True)
        context = int(
            st_config.get("max_seq_length") or tokenizer_config.get("model_max_length") or limit
        )
        return cls(
            path=root,
            family="sentence-transformers",
            context=min(context, limit),
            pad_id=_pad_id(text_path, tokenizer, "bert"),
            fixed_length=False,
            preprocess=image_preprocess(_image_processor(image_path), name=f"st-{root.name}"),
            tokenizer=tokenizer.to_str(),
            image_path=image_path,
            text_path=text_path,
        )

    @classmethod
    def _openclip(cls, root: Path) -> ClipSpec:
        """multi2vec-clip's OpenCLIP layout: open_clip reads the configuration, the tokenizer
        is the equivalent of open_clip's for the model, texts padded to the full context as
        open_clip pads them (its text towers see every position)."""
        inputs = openclip.read(openclip.Layout.read(root))
        return cls(
            path=root,
            family=openclip.FAMILY,
            context=inputs.context,
            pad_id=inputs.pad_id,
            fixed_length=True,
            preprocess=inputs.preprocess,
            tokenizer=inputs.tokenizer,
            image_path=root,
            text_path=root,
            weights=(inputs.checkpoint,) if inputs.checkpoint else (),
            clean=inputs.clean,
            strip_id=inputs.strip_id,
        )

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


def st_modules(root: Path) -> list[tuple[str, Path]]:
    """A sentence-transformers directory's modules, in order: (class name, directory), from
    modules.json (old and new type paths alike: only the class name is read)."""
    entries = json.loads((root / "modules.json").read_text())
    return [(e["type"].rsplit(".", 1)[-1], root / e.get("path", "")) for e in entries]


def load_tokenizer(root: Path) -> Any:
    from tokenizers import Tokenizer

    path = root / "tokenizer.json"
    if not path.is_file():
        raise ValueError(
            f"{root}: no tokenizer.json (a fast tokenizer, as `save_pretrained` writes it)"
        )
    return Tokenizer.from_file(str(path))


def _pad_id(root: Path, tokenizer: Any, family: str) -> int:
    """The pad token of tokenizer_config.json, else the end token (what CLIP's own configs
    name as pad), else 1 (SigLIP's)."""
    config = _read_json(root / "tokenizer_config.json", missing_ok=True)
    for key in ("pad_token", "eos_token"):
        token = config.get(key)
        if isinstance(token, dict):
            token = token.get("content")
        if isinstance(token, str) and tokenizer.token_to_id(token) is not None:
            return int(tokenizer.token_to_id(token))
    return {"siglip": 1, "clip": 0}.get(family, 0)


def _image_processor(root: Path) -> dict[str, Any]:
    """preprocessor_config.json (the hub's layout), else processor_config.json's
    "image_processor" (what transformers 5 writes)."""
    flat = root / "preprocessor_config.json"
    if flat.is_file():
        return _read_json(flat)
    nested = _read_json(root / "processor_config.json").get("image_processor")
    if not isinstance(nested, dict):
        raise ValueError(f"{root}: processor_config.json has no image_processor")
    return nested


def _read_json(path: Path, missing_ok: bool = False) -> dict[str, Any]:
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


def main(argv: list[str]) -> int:
    """`python -m img2vec.inputs.multimodal NAME|DIR`: fetch (once) and check a CLIP-style model,
    print its directory: the image's weights step for multi2vec-clip (docker/bake-weights.sh)."""
    if len(argv) != 2:
        print("usage: python -m img2vec.inputs.multimodal <hub name or model directory>")
        return 2
    try:
        spec = ClipSpec.from_dir(argv[1])
    except ValueError as exc:
        print(f"img2vec: {exc}")
        return 1
    print(f"{spec.path} ({spec.family}, texts truncated to {spec.context} tokens)")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv))
