"""multi2vec-clip's families behind one registry (img2vec/models/clip/registry.py): a new family
is a module and a registry line, and the shared code (the towers, the spec, the service) asks
the family for its towers instead of branching on its name."""

from __future__ import annotations

import ast
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from img2vec.models.clip import registry
from img2vec.models.clip.towers import Towers

ROOT = Path(__file__).resolve().parents[2]

# A family that is not in the library: CLIP's architecture under a model_type of its own, its
# vectors left unnormalized, /meta's name its own. Written as a user would add one.
TINY_FAMILY = """
from transformers import CLIPModel

from img2vec.inputs.multimodal import read_transformers_dir
from img2vec.models.clip import clip
from img2vec.models.clip.registry import Loaded


def read(root):
    return read_transformers_dir(root, ("tiny_clip",), context=77, pad=0, fixed_length=False)


def load(spec, device):
    model = CLIPModel.from_pretrained(str(spec.path)).eval().to(device)
    return Loaded(
        model=model,
        vision=clip.VisionTower(model),
        text=clip.TextTower(model),
        masked=True,
        normalized=False,
        vocabulary=model.config.text_config.vocab_size,
        name="tiny",
    )
"""


@pytest.fixture
def tiny_family(tmp_path, monkeypatch, clip_dir):
    """The family's module importable, its registry line added, and a directory of its own
    (the random CLIP with config.json's model_type renamed)."""
    (tmp_path / "tiny_family.py").write_text(TINY_FAMILY)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(registry.FAMILIES, "tiny_clip", "tiny_family")
    root = tmp_path / "tiny"
    shutil.copytree(clip_dir, root)
    config = json.loads((root / "config.json").read_text())
    (root / "config.json").write_text(json.dumps({**config, "model_type": "tiny_clip"}))
    yield root
    sys.modules.pop("tiny_family", None)


def test_a_family_added_as_a_module_and_a_registry_line_is_read_and_run(tiny_family, clip_dir):
    spec = registry.read_model_dir(tiny_family)
    assert spec.family == "tiny_clip"
    tiny = Towers(spec, "cpu", 2, engine="eager")
    base = Towers(registry.read_model_dir(clip_dir), "cpu", 2, engine="eager")
    assert tiny.info()["model"] == "tiny" and tiny.info()["normalized"] is False
    ids = [np.asarray([49406, 320, 1929, 49407], np.int32)]
    pixels = np.random.default_rng(0).integers(0, 256, (1, 224, 224, 3), np.uint8)
    for embed in ("embed_texts", "embed_images"):
        arg = ids if embed == "embed_texts" else pixels
        raw, unit = getattr(tiny, embed)(arg)[0], getattr(base, embed)(arg)[0]
        # The same towers: CLIP's vector, but as the family answers it (not normalized).
        assert abs(float(np.linalg.norm(raw)) - 1.0) > 1e-3
        np.testing.assert_allclose(raw / np.linalg.norm(raw), unit, rtol=0, atol=1e-6)


def test_a_directory_no_family_reads_is_refused_naming_the_registered_ones(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "resnet"}))
    with pytest.raises(ValueError, match=r"'resnet' is not a CLIP-style model") as refused:
        registry.read_model_dir(tmp_path)
    for family in ("clip", "metaclip_2", "siglip", "OpenCLIP", "sentence-transformers"):
        assert family in str(refused.value)
    with pytest.raises(ValueError, match="no CLIP-style family 'nope'"):
        registry.family_module("nope")


def test_every_family_module_is_registered_and_reads_and_loads():
    folder = ROOT / "img2vec" / "models" / "clip"
    shared = {"__init__", "__main__", "registry", "towers"}
    modules = {f"img2vec.models.clip.{p.stem}" for p in folder.glob("*.py")} - {
        f"img2vec.models.clip.{name}" for name in shared
    }
    assert modules == set(registry.FAMILIES.values())
    for family in registry.FAMILIES:
        module = registry.family_module(family)
        assert callable(module.read) and callable(module.load), family


def test_shared_code_never_branches_on_a_family():
    """No comparison with a spec's `family` and no family's name in the code every family
    goes through: the towers, the spec and tokenizer, the service."""
    shared = [
        ROOT / "img2vec" / "models" / "clip" / "towers.py",
        ROOT / "img2vec" / "inputs" / "multimodal.py",
        *sorted((ROOT / "deployments").rglob("*.py")),
    ]
    found = []
    for path in shared:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Compare):
                operands = [node.left, *node.comparators]
                if any(isinstance(x, ast.Attribute) and x.attr == "family" for x in operands):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}: compares a family")
            names = set(registry.FAMILIES) | {"sentence_transformers", "metaclip"}
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and node.value in names
            ):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}")
    assert found == []


def test_the_fetch_and_check_command_names_the_directory_and_its_family(clip_dir, tmp_path, capsys):
    """`python -m img2vec.models.clip NAME|DIR` (the image's weights step for multi2vec-clip,
    docker/bake-weights.sh): the directory and its family, or why not."""
    from img2vec.models.clip.__main__ import main

    assert main(["clip", str(clip_dir)]) == 0
    assert capsys.readouterr().out == f"{clip_dir} (clip, texts truncated to 77 tokens)\n"
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "resnet"}))
    assert main(["clip", str(tmp_path)]) == 1
    assert "'resnet' is not a CLIP-style model" in capsys.readouterr().out
    assert main(["clip"]) == 2
