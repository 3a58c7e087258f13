"""multi2vec-clip's default layout, sentence-transformers' pair (what its download.py saves):
`clip/`, a sentence-transformers CLIP for images, and `text/`, a sentence-transformers text
model (e.g. the multilingual DistilBERT student: mean pooling, a dense layer). The image tower
is CLIP's; the text tower is the text model and its head, the modules after it (pooling,
dense layers, normalization), read from their own config files (old and new layouts) and
applied to its hidden states. Neither tower's vectors are normalized, as the container's."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from img2vec.inputs.multimodal import (
    ClipSpec,
    image_preprocess,
    image_processor,
    load_tokenizer,
    pad_id,
    read_json,
)
from img2vec.models.clip import clip
from img2vec.models.clip.registry import Loaded, Tower

FAMILY = "sentence-transformers"


def read(root: Path) -> ClipSpec | None:
    if not ((root / "clip" / "modules.json").is_file() and (root / "text").is_dir()):
        return None
    image = st_modules(root / "clip")
    if [kind for kind, _ in image] != ["CLIPModel"]:
        raise ValueError(f"{root / 'clip'}: expected one CLIPModel module, got {image}")
    text_modules = st_modules(root / "text")
    if not text_modules or text_modules[0][0] != "Transformer":
        raise ValueError(f"{root / 'text'}: expected a Transformer module first")
    image_path, text_path = image[0][1], text_modules[0][1]
    tokenizer = load_tokenizer(text_path)
    config = read_json(text_path / "config.json")
    limit = int(config.get("max_position_embeddings", 512))
    st_config = read_json(root / "text" / "sentence_bert_config.json", missing_ok=True)
    tokenizer_config = read_json(text_path / "tokenizer_config.json", missing_ok=True)
    context = int(
        st_config.get("max_seq_length") or tokenizer_config.get("model_max_length") or limit
    )
    return ClipSpec(
        path=root,
        family=FAMILY,
        context=min(context, limit),
        pad_id=pad_id(text_path, tokenizer, 0),
        fixed_length=False,
        preprocess=image_preprocess(image_processor(image_path), name=f"st-{root.name}"),
        tokenizer=tokenizer.to_str(),
        image_path=image_path,
        text_path=text_path,
    )


def st_modules(root: Path) -> list[tuple[str, Path]]:
    """A sentence-transformers directory's modules, in order: (class name, directory), from
    modules.json (old and new type paths alike: only the class name is read)."""
    entries = json.loads((root / "modules.json").read_text())
    return [(e["type"].rsplit(".", 1)[-1], root / e.get("path", "")) for e in entries]


class TextTower(Tower):
    """The text model's hidden states through its head (`model` is the text model)."""

    def __init__(self, model: Any, head: list[tuple[str, Any]]) -> None:
        super().__init__(model)
        self.head = head
        # The head's dense layers as submodules, so that conversion sees their weights.
        self.layers = torch.nn.ModuleList(arg[0] for step, arg in head if step == "dense")

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        return apply_head(self.head, hidden, mask)


def load(spec: ClipSpec, device: torch.device) -> Loaded:
    from transformers import AutoModel

    assert spec.image_path is not None and spec.text_path is not None
    model = AutoModel.from_pretrained(str(spec.image_path), dtype=torch.float32)
    model = model.eval().to(device)
    text = AutoModel.from_pretrained(str(spec.text_path), dtype=torch.float32).eval().to(device)
    config = getattr(text.config, "text_config", text.config)
    return Loaded(
        model=model,
        vision=clip.VisionTower(model),
        text=TextTower(text, read_head(spec.path / "text", device)),
        masked=True,
        normalized=False,
        vocabulary=int(getattr(config, "vocab_size", 0) or 1),
        name=spec.path.name,
    )


def read_head(root: Path, device: torch.device) -> list[tuple[str, Any]]:
    """The sentence-transformers modules after the text model: pooling, dense layers,
    normalization, read from their own config files (old and new layouts)."""
    head: list[tuple[str, Any]] = []
    for kind, path in st_modules(root)[1:]:
        if kind == "Pooling":
            config = json.loads((path / "config.json").read_text())
            mode = config.get("pooling_mode") or next(
                (m for m in ("mean", "cls", "max") if config.get(f"pooling_mode_{m}_tokens")),
                "cls" if config.get("pooling_mode_cls_token") else None,
            )
            if mode not in ("mean", "cls", "max"):
                raise ValueError(f"{path}: pooling {config} is not supported (mean, cls, max)")
            head.append(("pool", mode))
        elif kind == "Dense":
            config = json.loads((path / "config.json").read_text())
            activation = config.get("activation_function", "torch.nn.modules.linear.Identity")
            if activation.rsplit(".", 1)[-1] not in ("Identity", "Tanh"):
                raise ValueError(f"{path}: activation {activation} is not supported")
            linear = torch.nn.Linear(
                config["in_features"], config["out_features"], bias=config.get("bias", True)
            )
            linear.load_state_dict(_read_state(path, "linear."))
            head.append(("dense", (linear.eval().to(device), activation.endswith("Tanh"))))
        elif kind == "Normalize":
            head.append(("normalize", None))
        else:
            raise ValueError(f"{root}: module {kind} is not supported after the text model")
    return head


def apply_head(
    head: list[tuple[str, Any]], hidden: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    x = hidden
    for step, arg in head:
        if step == "pool":
            m = mask.unsqueeze(-1).to(hidden.dtype)
            if arg == "mean":
                x = (hidden * m).sum(1) / m.sum(1).clamp_min(1e-9)
            elif arg == "cls":
                x = hidden[:, 0]
            else:
                x = hidden.masked_fill(m == 0, -1e9).max(1).values
        elif step == "dense":
            linear, tanh = arg
            x = linear(x)
            x = torch.tanh(x) if tanh else x
        else:
            x = torch.nn.functional.normalize(x, dim=-1)
    return x


def _read_state(path: Path, prefix: str) -> dict[str, torch.Tensor]:
    """A module's weights: model.safetensors, else pytorch_model.bin (tensors only)."""
    if (path / "model.safetensors").is_file():
        from safetensors.torch import load_file

        state = load_file(str(path / "model.safetensors"))
    else:
        state = torch.load(path / "pytorch_model.bin", map_location="cpu", weights_only=True)
    return {k.removeprefix(prefix): v for k, v in state.items()}
