"""Every benchmark section of docs/benchmarks.md is what its benchmark's `markdown()` writes
from one of the result files in bench/results: a number edited by hand, or a section left from
a run whose result file is gone, fails here. Each section names the command that produced it."""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "benchmarks.md"
# section -> (the module whose markdown() writes it, the glob of its result files)
SECTIONS = {
    "bench": ("bench.report", "2026-*.json"),
    "peers": ("bench.peers", "peers-*.json"),
    "weaviate": ("bench.weaviate", "weaviate-*.json"),
    "clip": ("bench.clip", "clip-*.json"),
    "invariance": ("bench.invariance", "invariance-*.json"),
    "overload": ("bench.overload", "overload-*.json"),
    "soak": ("bench.soak", "soak-*.json"),
}


def section(name: str) -> str:
    text = DOC.read_text()
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    assert begin in text and end in text, f"docs/benchmarks.md lacks the {name} section"
    return text.split(begin, 1)[1].split(end, 1)[0].strip()


def rendered(module: str, path: Path) -> str:
    results = json.loads(path.read_text())
    m = importlib.import_module(module)
    if module == "bench.report":
        results["ratios"] = m.ratios(results)
    return str(m.markdown(results)).strip()


def test_every_marked_section_has_a_generator():
    text = DOC.read_text()
    assert set(re.findall(r"<!-- ([a-z]+):begin -->", text)) == set(SECTIONS)


@pytest.mark.parametrize("name", sorted(SECTIONS))
def test_a_benchmark_section_is_its_result_file_as_its_benchmark_writes_it(name):
    module, pattern = SECTIONS[name]
    text = section(name)
    files = sorted((ROOT / "bench" / "results").glob(pattern))
    matches = [f for f in files if rendered(module, f) == text]
    assert matches, f"{name}: no file in bench/results/{pattern} renders to the section"
    command = json.loads(matches[-1].read_text())["command"]
    assert f"`{command}`" in text, f"{name}: the section does not name its command"


def test_every_ratio_the_readme_states_is_in_the_result_file_it_cites():
    """A measured ratio in README.md ("2.7x") sits in a paragraph that links the result file
    it came from, and that file's section, as its benchmark writes it, has that ratio (to the
    digits the README gives)."""
    readme = (ROOT / "README.md").read_text()
    claims = 0
    for paragraph in readme.split("\n\n"):
        ratios = re.findall(r"\b(\d+\.\d+)x\b", paragraph)
        if not ratios:
            continue
        cited = re.findall(r"\]\((bench/results/[\w.-]+\.json)\)", paragraph)
        assert cited, f"no result file cited for {ratios} in: {paragraph[:120]}"
        measured: set[float] = set()
        for path in cited:
            kind = Path(path).name.split("-")[0]
            kind = "bench" if kind.isdigit() else kind  # bench/run.py's files: <date>-<host>
            text = rendered(SECTIONS[kind][0], ROOT / path)
            measured |= {float(x) for x in re.findall(r"(\d+\.\d+)x", text)}
        for ratio in ratios:
            digits = len(ratio.split(".")[1])
            assert any(round(m, digits) == float(ratio) for m in measured), (ratio, cited)
            claims += 1
    assert claims >= 1
