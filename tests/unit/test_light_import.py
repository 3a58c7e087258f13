"""The package root and its light modules do not load torch: the ingress imports them, and
ingress replicas scale with request rate (torch costs each ~3 s and ~700 MB). Checked in
fresh interpreters; the ingress modules themselves: tests/unit/test_layout.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def heavy_modules_after(statement: str) -> list[str]:
    code = (
        f"{statement}\nimport sys\n"
        "print(sorted(m for m in ('torch', 'torchvision', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return eval(out.stdout.strip().splitlines()[-1])  # our own printed list


@pytest.mark.parametrize(
    "statement",
    [
        "import img2vec",
        "import img2vec.inputs.multimodal",
        "from img2vec import decode_image, get_preset, get_spec, SPECS",
        "import img2vec.serving.batching, img2vec.models.weights, img2vec.inputs.preprocessing",
        "import img2vec.serving.cpus",
    ],
)
def test_no_torch_is_loaded(statement):
    assert heavy_modules_after(statement) == []


def test_the_model_names_are_still_there_on_first_use():
    assert heavy_modules_after("import img2vec; img2vec.build_embedder") == ["torch", "torchvision"]
