"""OpenCLIP checkpoints (the open_clip library's own format), in multi2vec-clip's layout: a
directory whose `config.json` names `model_name` and `pretrained` (its download.py writes these,
and `model_config`) and holds open_clip's download cache. `model_name` is one of open_clip's
(`ViT-B-32`, with `pretrained` a tag such as `laion2b_s34b_b79k` or a checkpoint file),
`hf-hub:org/repo`, or `local-dir:PATH` (a relative PATH is the model directory's).

The model is open_clip's own (`create_model`, `encode_image`, `encode_text`), as the container
runs it. What differs is where the inputs are prepared: in the ingress, without torch, from what
`read` returns (the tokenizer as `tokenizers` JSON, the image preset); the tests check both
against open_clip's `get_tokenizer` and transforms.

Served: the models open_clip tokenizes with its `SimpleTokenizer` (OpenAI CLIP's BPE, lower-cased,
texts padded to the full context with 0): the ViT, ConvNeXt and ResNet CLIPs of LAION, DataComp,
DFN and OpenAI; and those whose config names a Hugging Face tokenizer (`hf_tokenizer_name`:
XLM-RoBERTa, RoBERTa, MT5, the MetaCLIP "worldwide" and CLIPA models, SigLIP's through
open_clip), tokenized as open_clip's `HFTokenizer` does: its cleaning, the fast tokenizer's
own special tokens, texts padded to the full context with its pad token. Refused, saying why:
a tokenizer without a fast (`tokenizers`) version or a pad token, HF tokenizer settings other
than `clean` and `strip_sep_token` (`tokenizer_mode`, NLLB's `language`), and SimpleTokenizer
settings other than its default lower-casing.
"""

from __future__ import annotations

import json
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from img2vec.inputs.preprocessing import Preprocess

FAMILY = "openclip"
CONFIG = "config.json"
# What IMG2VEC_WEIGHTS names for an OpenCLIP model without a directory: `open_clip:NAME:TAG`.
SCHEME = "open_clip:"


@dataclass(frozen=True)
class Layout:
    """One OpenCLIP model directory's config.json, resolved."""

    root: Path
    model_name: str
    pretrained: str | None
    label: str  # model_name[:pretrained] as config.json writes them (/meta's "model")

    @classmethod
    def read(cls, root: Path) -> Layout:
        config = json.loads((root / CONFIG).read_text())
        name = config.get("model_name")
        if not isinstance(name, str) or not name:
            raise ValueError(f"{root / CONFIG}: no model_name (open_clip's model name)")
        label = ":".join(filter(None, [name, config.get("pretrained")]))
        if name.startswith("local-dir:") and not Path(name[10:]).is_absolute():
            name = f"local-dir:{root / name[10:]}"
        pretrained = config.get("pretrained") or None
        if pretrained and (root / pretrained).is_file():
            pretrained = str(root / pretrained)
        return cls(root=root, model_name=name, pretrained=pretrained, label=label)


def is_layout(root: Path) -> bool:
    """A directory in multi2vec-clip's OpenCLIP layout (config.json names a model_name)."""
    path = root / CONFIG
    if not path.is_file():
        return False
    try:
        config = json.loads(path.read_text())
    except ValueError:
        return False
    return isinstance(config, dict) and "model_name" in config and "model_type" not in config


def layout_for(name: str, cache: Path) -> Path:
    """`open_clip:NAME:TAG` as a model directory under `cache`: its config.json written once;
    open_clip fetches the weights into it (`read`, `load`)."""
    rest = name[len(SCHEME) :]
    # open_clip:hf-hub:org/repo (or local-dir:PATH) names no tag: the repository holds one.
    schemed = rest.startswith(("hf-hub:", "local-dir:"))
    model_name, tag = (rest, "") if schemed else rest.partition(":")[::2]
    if not model_name:
        raise ValueError(f"{name}: expected open_clip:MODEL_NAME:PRETRAINED_TAG")
    slug = model_name.replace("/", "--").replace(":", "--")
    root = cache / "img2vec" / f"open_clip--{slug}--{tag}"
    root.mkdir(parents=True, exist_ok=True)
    config = {"model_name": model_name, "pretrained": tag or None}
    if not (root / CONFIG).is_file() or json.loads((root / CONFIG).read_text()) != config:
        staged = root / f".{CONFIG}.tmp"
        staged.write_text(json.dumps(config))
        staged.replace(root / CONFIG)
    return root


# open_clip's text cleanings (`get_clean_fn`), by the name its tokenizer_kwargs use.
CLEANINGS = ("lower", "whitespace", "canonicalize")


@dataclass(frozen=True)
class Inputs:
    """What an OpenCLIP model's inputs are, as the ingress prepares them."""

    context: int
    preprocess: Preprocess
    tokenizer: str  # tokenizers JSON, equivalent to open_clip's tokenizer for the model
    checkpoint: Path | None  # the weights file open_clip loads
    pad_id: int = 0  # what texts are padded with to the full context
    clean: str = "lower"  # the cleaning before the tokenizer (CLEANINGS)
    # HFTokenizer's `strip_sep_token`: the separator token's id, replaced with 0.
    strip_id: int | None = None


def read(layout: Layout) -> Inputs:
    """The model's configuration, image preprocessing and tokenizer, as open_clip's
    `create_model` and `get_tokenizer` determine them, and its checkpoint (fetched into the
    model directory, open_clip's cache, where it is not there yet). Imports open_clip (torch):
    the model replica and the application builder call it, never the ingress."""
    from open_clip.factory import parse_model_name
    from open_clip.transform import PreprocessCfg, merge_preprocess_dict

    schema, identifier = parse_model_name(layout.model_name)
    preprocess: dict[str, Any] = PreprocessCfg().__dict__.copy()
    tag_cfg: dict[str, Any] = {}
    if schema is None:
        identifier = identifier.replace("/", "-")
        model_cfg, tag_cfg = _builtin(layout, identifier)
        preprocess = merge_preprocess_dict(preprocess, tag_cfg)
    else:
        saved = json.loads(_fetching(layout, lambda: _saved_config(layout, schema, identifier)))
        model_cfg = saved["model_cfg"]
        preprocess = merge_preprocess_dict(preprocess, saved.get("preprocess_cfg", {}))
    text = model_cfg.get("text_cfg", {})
    preprocess["size"] = model_cfg["vision_cfg"].get("image_size", preprocess["size"])
    tokens: dict[str, Any] = {"tokenizer": simple_tokenizer()}
    if text.get("hf_tokenizer_name"):
        tokens = _hf_tokenizer(layout, schema, identifier, text)
    elif (text.get("tokenizer_kwargs") or {}) not in ({}, {"clean": "lower"}):
        # The tokenizers JSON lower-cases as SimpleTokenizer's own cleaning does; its other
        # settings (another cleaning, a reduction mask) are not in any open_clip model.
        raise ValueError(
            f"{layout.model_name}: SimpleTokenizer settings {text['tokenizer_kwargs']} are not "
            "served (only its default lower-casing cleaning)"
        )
    return Inputs(
        context=int(text.get("context_length", 77)),
        preprocess=preprocess_of(preprocess, f"openclip-{identifier.rsplit('/', 1)[-1]}"),
        checkpoint=_fetching(layout, lambda: _checkpoint(layout, schema, identifier, tag_cfg)),
        **tokens,
    )


def _hf_tokenizer(
    layout: Layout, schema: str | None, identifier: str, text: dict[str, Any]
) -> dict[str, Any]:
    """open_clip's `HFTokenizer` for this model, as `Inputs` fields: its fast tokenizer's
    JSON, pad token, cleaning and separator stripping. The tokenizer comes from where
    open_clip's `get_tokenizer` takes it (a `local-dir:` directory itself, else the hub name),
    cached in the model directory; an HF text tower's config is fetched too (open_clip reads
    it at load), so that an offline replica finds both."""
    from transformers import AutoConfig, AutoTokenizer

    kwargs = dict(text.get("tokenizer_kwargs") or {})
    clean = kwargs.pop("clean", "whitespace")
    strip = bool(kwargs.pop("strip_sep_token", False))
    if kwargs or text.get("tokenizer_mode") or clean not in CLEANINGS:
        raise ValueError(
            f"{layout.model_name}: its tokenizer settings {text.get('tokenizer_kwargs')} "
            f"(tokenizer_mode {text.get('tokenizer_mode')!r}) are not served: only `clean` "
            f"({', '.join(CLEANINGS)}) and `strip_sep_token`"
        )
    source = identifier if schema == "local-dir" else text["hf_tokenizer_name"]
    tokenizer = _fetching(
        layout, lambda: AutoTokenizer.from_pretrained(source, cache_dir=str(layout.root))
    )
    if text.get("hf_model_name"):
        _fetching(layout, lambda: AutoConfig.from_pretrained(text["hf_model_name"]))
    if not tokenizer.is_fast or tokenizer.pad_token_id is None:
        raise ValueError(
            f"{layout.model_name}: its tokenizer {source!r} has no fast (tokenizers) version or "
            "no pad token; the ingress needs both"
        )
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    spec["padding"] = spec["truncation"] = None  # the ingress sets both
    return {
        "tokenizer": json.dumps(spec),
        "pad_id": int(tokenizer.pad_token_id),
        "clean": clean,
        "strip_id": int(tokenizer.sep_token_id) if strip else None,
    }


def _builtin(layout: Layout, identifier: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """One of open_clip's own model names: its config, and its `pretrained` tag's (preprocess
    settings, where to fetch it: {} for a checkpoint file)."""
    from open_clip import get_model_config
    from open_clip.pretrained import get_pretrained_cfg, list_pretrained_tags_by_model

    model_cfg = get_model_config(identifier)
    if model_cfg is None:
        raise ValueError(f"{layout.root}: open_clip has no model named {identifier!r}")
    tag_cfg = get_pretrained_cfg(identifier, layout.pretrained) if layout.pretrained else {}
    if layout.pretrained and not tag_cfg and not Path(layout.pretrained).is_file():
        tags = ", ".join(list_pretrained_tags_by_model(identifier)) or "none"
        raise ValueError(
            f"{layout.root}: {layout.pretrained!r} is neither a tag of {identifier} "
            f"(known: {tags}) nor a checkpoint file"
        )
    return model_cfg, tag_cfg


def _saved_config(layout: Layout, schema: str, identifier: str) -> str:
    """open_clip_config.json of a `local-dir:` directory or an `hf-hub:` repository."""
    if schema == "local-dir":
        return (Path(identifier) / "open_clip_config.json").read_text()
    from huggingface_hub import hf_hub_download

    return Path(
        hf_hub_download(identifier, "open_clip_config.json", cache_dir=str(layout.root))
    ).read_text()


def _checkpoint(
    layout: Layout, schema: str | None, identifier: str, tag_cfg: dict[str, Any]
) -> Path | None:
    """The weights file open_clip loads (a built-in model's from its tag's `tag_cfg`), fetched
    into the model directory if need be."""
    from open_clip.pretrained import download_pretrained, download_pretrained_from_hf

    cache = str(layout.root)
    if schema == "local-dir":
        return _checkpoint_in(Path(identifier))
    if schema == "hf-hub":
        return Path(download_pretrained_from_hf(identifier, cache_dir=cache))
    if tag_cfg:
        return Path(download_pretrained(tag_cfg, cache_dir=cache))
    return Path(layout.pretrained) if layout.pretrained else None


def _fetching(layout: Layout, step: Any) -> Any:
    """`step()`, a failed download said as what to do offline."""
    try:
        return step()
    except (OSError, RuntimeError, ValueError) as exc:
        why = (str(exc).splitlines() or [""])[0][:160]
        raise ValueError(
            f"{layout.label}: cannot read or fetch it ({type(exc).__name__}: {why}). Offline: on "
            "a machine with network run "
            f"`python -m img2vec.models.clip open_clip:{layout.label}` (or multi2vec-clip's "
            "download.py), copy the directory it prints here and set "
            "IMG2VEC_WEIGHTS to it"
        ) from None


def load(layout: Layout, device: Any) -> Any:
    """The model, as the container builds it (`create_model`, open_clip's cache in the model
    directory), in eval mode on `device`."""
    import open_clip

    local = layout.model_name.startswith(("local-dir:", "hf-hub:"))
    model = open_clip.create_model(
        layout.model_name,
        pretrained=None if local else layout.pretrained,
        cache_dir=str(layout.root),
        device=device,
    )
    return model.eval()


def preprocess_of(cfg: dict[str, Any], name: str) -> Preprocess:
    """open_clip's inference transform (image_transform, is_train False) as a Preprocess:
    'shortest' scales the shorter side and crops the centre (torchvision's Resize and
    CenterCrop: the longer side truncated, the offset rounded), 'squash' stretches."""
    size = cfg["size"]
    height, width = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    bilinear = cfg["interpolation"] == "bilinear"
    resample = Image.Resampling.BILINEAR if bilinear else Image.Resampling.BICUBIC
    common: dict[str, Any] = {
        "name": name,
        "resample": resample,
        "mean": tuple(float(v) for v in cfg["mean"]),
        "std": tuple(float(v) for v in cfg["std"]),
    }
    if cfg["resize_mode"] == "squash":
        return Preprocess(resize=(height, width), **common)
    if cfg["resize_mode"] != "shortest" or height != width:
        raise ValueError(
            f"{name}: open_clip's resize_mode {cfg['resize_mode']!r} at {height}x{width} is not "
            "served (shortest at a square size, or squash)"
        )
    return Preprocess(resize=height, crop=(height, width), crop_offset="round", **common)


def openai_bpe() -> tuple[list[str], list[str]]:
    """(vocabulary, merges) of OpenAI CLIP's BPE, built as its simple_tokenizer.py builds them,
    from the merges file open_clip ships (found without importing open_clip, torch)."""
    import gzip
    import importlib.util

    found = importlib.util.find_spec("open_clip")
    if found is None or not found.submodule_search_locations:
        raise RuntimeError("open_clip_torch is not installed (a dependency of img2vec)")
    bpe = Path(found.submodule_search_locations[0]) / "bpe_simple_vocab_16e6.txt.gz"
    lines = gzip.decompress(bpe.read_bytes()).decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    chars = bytes_to_unicode()
    vocab = [*chars, *(c + "</w>" for c in chars), *("".join(m.split()) for m in merges)]
    return [*vocab, "<|startoftext|>", "<|endoftext|>"], merges


def simple_tokenizer() -> str:
    """open_clip's SimpleTokenizer as a `tokenizers` JSON: OpenAI CLIP's BPE, start and end
    tokens, CLIP's split. open_clip's text cleaning before it (ftfy, HTML entities, lower
    case) is `clean_text`, applied by the ingress."""
    from transformers import CLIPTokenizer

    vocab, merges = openai_bpe()
    pairs = [tuple(m.split()) for m in merges]
    tokenizer = CLIPTokenizer(vocab={v: i for i, v in enumerate(vocab)}, merges=pairs)  # type: ignore[arg-type]
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    # The start and end tokens only where the template puts them: open_clip reads a text's
    # "<|endoftext|>" as plain characters, and so does this tokenizer without added tokens.
    spec["added_tokens"] = []
    return json.dumps(spec)


def bytes_to_unicode() -> list[str]:
    """GPT-2's byte -> printable character table, in byte order: the base of CLIP's BPE
    vocabulary."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    chars, extra = {b: b for b in printable}, 0
    for b in range(256):
        if b not in chars:
            chars[b] = 256 + extra
            extra += 1
    return [chr(chars[b]) for b in [*printable, *(b for b in range(256) if b not in printable)]]


def clean_text(text: str, clean: str = "lower") -> str:
    """open_clip's cleaning of a text before its tokenizer (`get_clean_fn(clean)`): ftfy's
    fixes and HTML entities unescaped twice, then whitespace runs as one space; "lower" also
    lower-cases (Python's: a final sigma is "ς"; the tokenizer's own lower-casing is then a
    no-op); "canonicalize" also drops punctuation, "_" read as a space. The ingress runs it
    (pure Python: no torch)."""
    import html

    import ftfy

    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    if clean == "canonicalize":
        return " ".join(text.replace("_", " ").translate(_NO_PUNCTUATION).lower().split())
    text = " ".join(text.split())
    return text.lower() if clean == "lower" else text


_NO_PUNCTUATION = str.maketrans("", "", string.punctuation)


def _checkpoint_in(directory: Path) -> Path | None:
    """The file open_clip itself loads from a `local-dir:` directory, chosen by open_clip
    (safetensors first, then its preferred names), so that /meta's hash names that file."""
    from open_clip.factory import _find_checkpoint_in_dir

    found = _find_checkpoint_in_dir(directory)
    return Path(found) if found else None
