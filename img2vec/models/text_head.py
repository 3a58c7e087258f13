"""A sentence-transformers text model's head: the modules after the transformer (pooling,
dense layers, normalization), read from their own config files in the model directory's
`text/` (old and new layouts), and applied to its hidden states. Used by img2vec/models/towers.py
for multi2vec-clip's default, multilingual text tower."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from img2vec.inputs.multimodal import st_modules


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
