"""What `pip install` gives a user: the declared Python version is one CI runs, and every
command the package declares can be loaded."""

from __future__ import annotations

import sys
import tomllib
from importlib.metadata import distribution
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_declared_command_loads():
    entry_points = distribution("img2vec").entry_points
    for ep in entry_points:
        if ep.group == "console_scripts":
            assert callable(ep.load()), ep


def test_the_declared_python_is_the_one_the_code_needs():
    """binascii.a2b_base64(strict_mode=...) and asyncio's builtin TimeoutError need 3.11."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["requires-python"] == ">=3.11"
    assert sys.version_info >= (3, 11)
