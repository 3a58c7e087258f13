"""Every benchmark section of docs/benchmarks.md is what its benchmark's `markdown()` writes
from one of the result files in bench/results: a number edited by hand, or a section left from
a run whose result file is gone, fails here. Each section names the command that produced it.

Every other measured number in README.md, cluster/README.md and docs/ (a ratio, a rate, a
latency, a memory size, a share, a decimal in a table of such) sits beside the name of the
result file it came from, and that file shows it: a number whose run left no file is not
written down (the command to measure it is)."""

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
    "where": ("bench.where", "where-*.json"),
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


# --- every measured number in the docs, held to the result file its paragraph cites ---------

DOCS = [ROOT / "README.md", ROOT / "cluster" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# A measured quantity: a ratio (2.7x, or with the multiplication sign; 1.3-1.6x), a rate, a
# latency, a memory size or a share.
NUMBER = r"\d[\d,]*(?:\.\d+)?"
UNIT = (
    r"(?:\u00d7(?!\s?[\w\u00d7])|x\b(?!\s?\d)|%|ms\b|MB\b"
    r"|(?:img|images|texts|objects|req|requests)/s\b)"
)
MEASURED = re.compile(rf"(?<![\w.\u00d7])({NUMBER})(?:\s?[-\u2013]\s?({NUMBER}))?\s?{UNIT}")
# A result file named in a block, with or without its folder (bench/results/...).
CITED = re.compile(
    r"(?<![\w.-])((?:\d{4}-\d\d-\d\d|clip|peers|weaviate|invariance|overload|soak|scaling|where)"
    r"-[\w.-]*\.json)"
)


def blocks(text: str) -> list[str]:
    """The doc's paragraphs and tables, without its generated sections (held above) and its
    code blocks; a table carries the paragraph before it (where its source is named)."""
    text = re.sub(r"<!-- (\w+):begin -->.*?<!-- \1:end -->", "", text, flags=re.S)
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    out: list[str] = []
    for block in text.split("\n\n"):
        if block.lstrip().startswith("|") and out:
            out[-1] += "\n\n" + block
        else:
            out.append(block)
    return out


def measured(block: str) -> list[str]:
    """The measured numbers of a block: those with a unit, and every decimal in the rows of a
    table that shows a unit anywhere (the first column names the row)."""
    found = [n for pair in MEASURED.findall(block) for n in pair if n]
    table: list[str] = []
    for line in [*block.splitlines(), ""]:
        if line.startswith("|"):
            table.append(line)
            continue
        if table and (MEASURED.search("\n".join(table)) or re.search(HEADER_UNIT, table[0])):
            for row in table[1:]:
                if not set(row) <= set("|-: "):
                    cells = row.split("|")[2:]
                    found += [n for c in cells for n in re.findall(DECIMAL, c)]
        table = []
    return found


DECIMAL = r"(?<![\w.])\d+\.\d+(?![\w.])"
HEADER_UNIT = r"/s\b|\bms\b|\u00d7|%|\bMB\b"


def values(path: Path) -> list[float]:
    """Every number a result file shows: its section as its benchmark writes it (and, for a
    bench.run file, the ratios it derives); a file no benchmark renders, its JSON's leaves."""
    results = json.loads(path.read_text())
    kind = path.name.split("-")[0]
    kind = "bench" if kind.isdigit() else kind
    if kind not in SECTIONS:
        return list(leaves(results))
    text = rendered(SECTIONS[kind][0], path)
    out = [float(x.replace(",", "")) for x in re.findall(NUMBER, text)]
    if kind == "bench":
        out += leaves(importlib.import_module("bench.report").ratios(results))
    return out


def leaves(x: object) -> list[float]:
    if isinstance(x, bool):
        return []
    if isinstance(x, (int, float)):
        return [float(x)]
    if isinstance(x, dict):
        return [v for item in x.values() for v in leaves(item)]
    if isinstance(x, list):
        return [v for item in x for v in leaves(item)]
    return []


def held(number: str, candidates: list[float]) -> bool:
    """The number as the doc writes it is some value of the file at the doc's precision."""
    value = float(number.replace(",", ""))
    digits = len(number.split(".")[1]) if "." in number else 0
    return any(abs(c - value) < 0.5 * 10**-digits - 1e-9 for c in candidates)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_measured_number_in_the_docs_is_in_the_result_file_its_paragraph_cites(doc):
    """A measured number (a ratio, a rate, a latency, a size, a share, a decimal in a table)
    sits in a paragraph, or a table under one, that names the result file it came from; and
    that file holds the number to the digits the doc gives. A number whose run left no file is
    not written down: the command to measure it is."""
    problems = []
    for block in blocks(doc.read_text()):
        numbers = measured(block)
        if not numbers:
            continue
        files = [ROOT / "bench" / "results" / name for name in CITED.findall(block)]
        if not files:
            problems.append(f"no result file for {numbers[:4]} in: {block[:100]!r}")
            continue
        missing = [f.name for f in files if not f.exists()]
        assert not missing, f"{doc.name} cites result files that are gone: {missing}"
        candidates = [v for f in files for v in values(f)]
        wrong = [n for n in numbers if not held(n, candidates)]
        if wrong:
            problems.append(f"{wrong} not in {[f.name for f in files]}: {block[:100]!r}")
    assert not problems, f"{doc.relative_to(ROOT)}:\n" + "\n".join(problems)
