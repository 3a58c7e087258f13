"""The docs held to the code: every relative link and anchor in every Markdown file resolves
inside the repository, every `make` target a doc names exists and `make help` lists it, and
every `python -m` module and `img2vec` subcommand a doc tells a user to type exists."""

from __future__ import annotations

import importlib.util
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SKIP = {".git", ".venv", "node_modules", ".pytest_cache", ".ruff_cache", ".mypy_cache"}


def markdown_files() -> list[Path]:
    return sorted(p for p in ROOT.rglob("*.md") if not SKIP & set(p.relative_to(ROOT).parts))


def _without_code(text: str) -> str:
    """The text outside fenced code blocks (a link inside one is an example, not a link)."""
    return re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)


LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, markup and punctuation dropped, spaces to -."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = path.read_text()
    found: set[str] = set()
    seen: dict[str, int] = {}
    for line in _without_code(text).splitlines():
        m = re.match(r"#{1,6}\s+(.*)", line)
        if m:
            s = slug(m.group(1))
            n = seen.get(s, 0)
            found.add(s if n == 0 else f"{s}-{n}")
            seen[s] = n + 1
    found |= set(re.findall(r"<a\s+(?:id|name)=\"([^\"]+)\"", text))
    return found


def links() -> list[tuple[Path, str]]:
    out = []
    for path in markdown_files():
        for target in LINK.findall(_without_code(path.read_text())):
            if not re.match(r"[a-z]+:", target):  # http:, https:, mailto:
                out.append((path, target))
    return out


@pytest.mark.parametrize(
    "path,target", links(), ids=lambda v: str(v.relative_to(ROOT)) if isinstance(v, Path) else v
)
def test_every_relative_link_and_anchor_resolves_inside_the_repository(path, target):
    file_part, _, anchor = target.partition("#")
    dest = (path.parent / file_part).resolve() if file_part else path
    assert dest.is_relative_to(ROOT), f"{path.name}: {target} leaves the repository"
    assert dest.exists(), f"{path.name}: {target}: no such file"
    if anchor:
        assert dest.suffix == ".md", f"{path.name}: {target}: an anchor in a non-Markdown file"
        assert anchor in anchors(dest), f"{path.name}: {target}: no such anchor in {dest.name}"


def makefile_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([a-z0-9-]+):(?!=)", text, flags=re.M))


def test_make_help_lists_every_target():
    listed = subprocess.run(
        ["make", "-s", "help"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    shown = set(re.findall(r"^\s+make ([a-z0-9-]+)\s", listed, flags=re.M))
    assert shown == makefile_targets()


def _doc_texts() -> list[tuple[Path, str]]:
    return [(p, p.read_text()) for p in markdown_files()]


def test_every_make_target_a_doc_names_exists():
    targets = makefile_targets()
    missing = [
        (str(p.relative_to(ROOT)), t)
        for p, text in _doc_texts()
        for t in re.findall(r"`make ([a-z0-9-]+)", text)
        if t not in targets
    ]
    assert not missing


def test_every_python_module_a_doc_runs_exists():
    missing = []
    for p, text in _doc_texts():
        for module in re.findall(r"python3? -m ([A-Za-z_][\w.]*)", text):
            if importlib.util.find_spec(module) is None:
                missing.append((str(p.relative_to(ROOT)), module))
    assert not missing


def test_every_img2vec_subcommand_a_doc_names_exists():
    from img2vec_cli.main import cli

    commands = set(cli.commands)
    named = {
        (str(p.relative_to(ROOT)), c)
        for p, text in _doc_texts()
        # `img2vec sub` in prose, or a line of a code block that starts with it
        for c in re.findall(r"`img2vec ([a-z][a-z-]*)", text)
        + [
            c
            for block in re.findall(r"^```.*?^```", text, flags=re.M | re.S)
            for c in re.findall(r"^img2vec ([a-z][a-z-]*)", block, flags=re.M)
        ]
    }
    assert {c for _, c in named} - commands == set(), sorted(named)


REFERENCE = re.compile(r"((?:[\w.-]+/)*[\w-]+\.md)#([\w-]+)")
TEXT_FILES = (".md", ".py", ".yaml", ".yml", ".toml", ".env", ".service", ".sh", ".cfg")


def tracked_files() -> list[Path]:
    names = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    return [
        ROOT / n
        for n in names
        if n.endswith(TEXT_FILES) or Path(n).name in {"Makefile", "Dockerfile"}
    ]


def references() -> list[tuple[str, str, str]]:
    """(file, doc, anchor) for every `<doc>.md#<anchor>` written in a tracked text file:
    docstrings, comments and configs point readers into the docs too."""
    out = []
    for path in tracked_files():
        if not path.is_file():
            continue
        for doc, anchor in REFERENCE.findall(path.read_text(errors="replace")):
            out.append((str(path.relative_to(ROOT)), doc, anchor))
    return out


@pytest.mark.parametrize("where,doc,anchor", references())
def test_every_doc_anchor_named_in_code_config_or_docs_exists(where, doc, anchor):
    """Relative to the file that names it, else to the repository's root (how comments
    name them)."""
    candidates = [(ROOT / where).parent / doc, ROOT / doc]
    found = next((c for c in candidates if c.is_file()), None)
    assert found is not None, f"{where}: {doc} does not exist"
    assert anchor in anchors(found), f"{where}: {doc}#{anchor}: no such anchor"


def test_no_doc_sends_a_reader_outside_the_repository():
    outside = [
        (str(p.relative_to(ROOT)), line.strip()[:80])
        for p, text in _doc_texts()
        for line in text.splitlines()
        if "../shared/" in line
    ]
    assert not outside


def test_the_license_file_is_the_one_pyproject_declares():
    import tomllib

    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["license"]["text"]
    text = (ROOT / "LICENSE").read_text()
    assert declared == "Apache-2.0"
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text


def test_the_settings_reference_is_generated_from_the_declarations():
    """docs/configuration.md's tables are what `python -m deployments.settings` writes from
    the settings' fields: a renamed, added or re-described setting fails here until the
    reference is rewritten."""
    from deployments.settings import REFERENCE_BEGIN, REFERENCE_END, reference

    text = (ROOT / "docs" / "configuration.md").read_text()
    start = text.index(REFERENCE_BEGIN) + len(REFERENCE_BEGIN)
    assert text[start : text.index(REFERENCE_END)].strip() == reference().strip(), (
        "stale: run `python -m deployments.settings`"
    )


def settings_named_in_docs() -> set[str]:
    names: set[str] = set()
    for _, text in _doc_texts():
        names |= set(re.findall(r"\bIMG2VEC_[A-Z0-9_]*[A-Z0-9]\b", text))
    return names


def test_every_img2vec_environment_variable_a_doc_names_is_read_by_the_code():
    """A documented IMG2VEC_* variable is either a setting's (IMG2VEC_<FIELD>) or read by
    name somewhere in the code."""
    from deployments.app import RENAMED
    from deployments.settings import ClipModelSettings, ImageModelSettings, IngressSettings

    fields = {
        f"IMG2VEC_{name.upper()}"
        for cls in (ImageModelSettings, ClipModelSettings, IngressSettings)
        for name in cls.model_fields
    } | {f"IMG2VEC_{old.upper()}" for old in RENAMED}
    code = "\n".join(
        p.read_text(errors="replace")
        for p in tracked_files()
        if p.suffix in {".py", ".sh", ".env"} or p.name in {"Dockerfile", "Makefile"}
        if "tests" not in p.relative_to(ROOT).parts and p.is_file()
    )
    spellings = ('"{}"', "'{}'", "{}=", "${{{}")
    unread = {
        n
        for n in settings_named_in_docs() - fields
        if not any(form.format(n) in code for form in spellings)
    }
    assert not unread
