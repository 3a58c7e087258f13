"""The layout shows the processes (docs/architecture.md), and each folder's rule holds:
- `deployments/edge/` runs in the ingress replicas, which scale with request rate: never torch;
- `deployments/model/` runs in the model replicas: never the HTTP edge (FastAPI is Serve's);
- `deployments/ops/` is the launcher and its helpers: imported by no replica;
- `img2vec/` is the library: never Ray, never HTTP; its folders follow the processes too:
  `img2vec/inputs/` (the ingress's decoding, preprocessing and tokenizing) and
  `img2vec/serving/` (batching, backlog, invariance, CPUs) never load torch;
  `img2vec/models/` (torch) is loaded by the model replicas, never by an ingress.
Checked in fresh interpreters (what a replica process really loads) and in the source."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def modules_of(folder: str) -> list[str]:
    return sorted(
        ".".join(path.relative_to(ROOT).with_suffix("").parts)
        for path in (ROOT / folder).glob("*.py")
        if path.name != "__init__.py"
    )


def loaded_after(modules: list[str], prefixes: tuple[str, ...]) -> list[str]:
    """The modules starting with one of `prefixes` that a fresh interpreter has loaded once
    it has imported `modules`."""
    code = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.startswith({prefixes!r}))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return list(json.loads(out.stdout.strip().splitlines()[-1]))


def imported_by(folder: str) -> dict[str, set[str]]:
    """Each source file of `folder` (recursively) -> the modules it imports."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / folder).rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module)
                names.update(f"{node.module}.{alias.name}" for alias in node.names)
        found[str(path.relative_to(ROOT))] = names
    return found


def offenders(folder: str, forbidden: tuple[str, ...], skip: str | None = None) -> list[str]:
    return [
        f"{path}: {name}"
        for path, names in imported_by(folder).items()
        if skip is None or not path.startswith(skip)
        for name in sorted(names)
        if any(name == f or name.startswith(f + ".") for f in forbidden)
    ]


def test_an_ingress_replica_never_loads_torch():
    edge = modules_of("deployments/edge")
    assert "deployments.edge.neural" in edge and "deployments.edge.clip" in edge
    assert loaded_after(edge, ("torch", "torchvision", "transformers")) == []


def test_a_model_replica_never_loads_the_http_edge():
    model = modules_of("deployments/model")
    assert "deployments.model.models" in model
    assert loaded_after(model, ("deployments.edge",)) == []
    # Ray Serve itself loads FastAPI in every process; none of ours in a model replica may.
    assert offenders("deployments/model", ("fastapi", "starlette")) == []


def test_no_replica_imports_the_launcher():
    # What Serve's processes import: the application builder, and through it every
    # deployment; the proxy's middleware.
    replicas = [
        "deployments.app",
        *modules_of("deployments/edge"),
        *modules_of("deployments/model"),
    ]
    assert loaded_after(replicas, ("deployments.ops",)) == []
    assert offenders("deployments", ("deployments.ops",), skip="deployments/ops") == []


def test_the_library_never_imports_ray_http_or_the_service():
    assert offenders("img2vec", ("ray", "fastapi", "starlette", "deployments")) == []


TORCH = ("torch", "torchvision", "transformers", "openvino", "open_clip")


def test_the_library_is_folders_by_process_and_two_shared_word_lists():
    top = sorted(p.name for p in (ROOT / "img2vec").iterdir() if not p.name.startswith("__py"))
    assert top == ["__init__.py", "errors.py", "inputs", "models", "options.py", "serving"]
    for folder in ("inputs", "serving", "models"):
        assert (ROOT / "img2vec" / folder / "__init__.py").is_file()
        assert modules_of(f"img2vec/{folder}")


def test_inputs_and_serving_never_load_torch():
    light = modules_of("img2vec/inputs") + modules_of("img2vec/serving")
    assert "img2vec.inputs.decoding" in light and "img2vec.serving.batching" in light
    assert loaded_after(light, TORCH) == []
    # ...nor lean on the torch side or on each other's neighbours above them.
    assert offenders("img2vec/inputs", ("img2vec.serving", "img2vec.models")) == []
    assert offenders("img2vec/serving", ("img2vec.inputs", "img2vec.models")) == []


def test_an_ingress_replica_never_loads_the_models():
    edge = modules_of("deployments/edge")
    assert loaded_after(["img2vec", *edge], ("img2vec.models",)) == []
    assert offenders("deployments/edge", ("img2vec.models",)) == []
