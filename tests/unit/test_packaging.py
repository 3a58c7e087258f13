"""What `pip install` gives a user: the declared Python version is the one the image runs and
CI runs, and every command the package declares can be loaded."""

from __future__ import annotations

import re
import sys
from importlib.metadata import distribution
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_declared_command_loads():
    scripts = [ep for ep in distribution("img2vec").entry_points if ep.group == "console_scripts"]
    assert [ep.name for ep in scripts] == ["img2vec"]
    for ep in scripts:
        assert callable(ep.load()), ep


def test_the_declared_python_is_the_one_the_image_and_ci_run():
    """binascii.a2b_base64(strict_mode=...), asyncio's builtin TimeoutError and tomllib need
    3.11: pyproject declares it, the image's base is it, and this interpreter satisfies it.
    (Read without tomllib, so that the check itself runs on an older Python.)"""
    pyproject = (ROOT / "pyproject.toml").read_text()
    declared = re.search(r'^requires-python = ">=(\d+)\.(\d+)"$', pyproject, flags=re.M)
    assert declared, "requires-python is not a plain lower bound"
    minimum = (int(declared[1]), int(declared[2]))
    assert minimum == (3, 11)
    image = re.search(r"^FROM python:(\d+)\.(\d+)", (ROOT / "Dockerfile").read_text(), re.M)
    assert image and (int(image[1]), int(image[2])) == minimum
    assert sys.version_info[:2] >= minimum
