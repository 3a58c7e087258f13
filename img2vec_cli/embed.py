"""`img2vec embed`: files -> vectors, in this process or through a running service, written as
Parquet, JSON lines or a NumPy array."""

from __future__ import annotations

import base64
import json
import sys
import time
import uuid
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import click
import numpy as np

from img2vec.errors import Img2VecError
from img2vec.inputs.decoding import open_image

Row = tuple[str, np.ndarray]  # path, vector


def find_files(paths: Iterable[Path]) -> list[Path]:
    """Files as given, and every file under folders (recursively, hidden ones skipped), in a
    stable order."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found += sorted(
                p
                for p in path.rglob("*")
                if p.is_file()
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
        else:
            found.append(path)
    return found


def embed_files(
    files: Sequence[Path],
    *,
    model: str,
    weights: str,
    device: str,
    batch_size: int,
    url: str | None,
    concurrency: int,
    retries: int,
    timeout: float,
) -> tuple[list[Row], list[tuple[str, str]]]:
    """(rows in the files' order, skipped files with why)."""
    progress: Any = click.progressbar(length=len(files), label="vectorizing", file=sys.stderr)
    with progress as bar:
        if url:
            return _remote(files, url.rstrip("/"), concurrency, retries, timeout, bar)
        return _local(files, model, weights, device, batch_size, bar)


def _local(
    files: Sequence[Path], model: str, weights: str, device: str, batch_size: int, bar: object
) -> tuple[list[Row], list[tuple[str, str]]]:
    from img2vec.models.image import build_embedder

    embedder = build_embedder(model=model, weights=weights, device=device)
    preset = embedder.preprocess

    def prepare(path: Path) -> np.ndarray | str:
        try:
            return preset.to_array(open_image(path.read_bytes()))
        except Img2VecError as exc:
            return exc.message
        except OSError as exc:
            return f"cannot read: {exc.strerror or exc}"

    rows: list[Row] = []
    skipped: list[tuple[str, str]] = []
    with ThreadPoolExecutor() as pool:
        for start in range(0, len(files), batch_size):
            chunk = files[start : start + batch_size]
            prepared = list(pool.map(prepare, chunk))
            ok = [
                (str(p), a) for p, a in zip(chunk, prepared, strict=True) if not isinstance(a, str)
            ]
            skipped += [
                (str(p), a) for p, a in zip(chunk, prepared, strict=True) if isinstance(a, str)
            ]
            if ok:
                vectors = embedder.embed([a for _, a in ok])
                rows += [(path, vec) for (path, _), vec in zip(ok, vectors, strict=True)]
            bar.update(len(chunk))  # type: ignore[attr-defined]
    return rows, skipped


def _remote(
    files: Sequence[Path], url: str, concurrency: int, retries: int, timeout: float, bar: object
) -> tuple[list[Row], list[tuple[str, str]]]:
    import httpx

    def one(client: httpx.Client, path: Path) -> np.ndarray | str:
        try:
            image = base64.b64encode(path.read_bytes()).decode("ascii")
        except OSError as exc:
            return f"cannot read: {exc.strerror or exc}"
        body = json.dumps({"id": f"{uuid.uuid4()}_0", "image": image})
        for attempt in range(retries + 1):
            try:
                r = client.post(
                    url + "/vectors", content=body, headers={"Content-Type": "application/json"}
                )
            except httpx.TransportError as exc:
                reason, wait = f"no answer: {exc!r}", min(2.0**attempt, 30)
            else:
                if r.status_code == 200:
                    return np.asarray(r.json()["vector"], dtype=np.float32)
                reason = _error_of(r)
                if r.status_code != 503:
                    return reason  # the service says this file is the problem
                wait = _retry_after(r, default=min(2.0**attempt, 30))
            if attempt < retries:
                time.sleep(wait)
        return f"gave up after {retries + 1} attempts: {reason}"

    rows: list[Row] = []
    skipped: list[tuple[str, str]] = []
    limits = httpx.Limits(max_connections=concurrency)
    with (
        httpx.Client(timeout=timeout, limits=limits) as client,
        ThreadPoolExecutor(concurrency) as pool,
    ):
        for path, result in zip(files, pool.map(lambda p: one(client, p), files), strict=True):
            if isinstance(result, str):
                skipped.append((str(path), result))
            else:
                rows.append((str(path), result))
            bar.update(1)  # type: ignore[attr-defined]
    return rows, skipped


def _error_of(r: object) -> str:
    status = getattr(r, "status_code", "?")
    try:
        return f"{status}: {r.json()['error']}"  # type: ignore[attr-defined]
    except Exception:
        return f"{status}: {getattr(r, 'text', '')[:200]}"


def _retry_after(r: object, default: float) -> float:
    value = getattr(r, "headers", {}).get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else default
    except ValueError:
        return default


def write_vectors(rows: Sequence[Row], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    suffix = out.suffix.lower()
    if suffix == ".jsonl":
        with out.open("w") as f:
            for path, vec in rows:
                f.write(json.dumps({"path": path, "vector": vec.tolist(), "dim": len(vec)}) + "\n")
    elif suffix == ".npy":
        np.save(out, np.stack([vec for _, vec in rows]).astype(np.float32))
        Path(str(out) + ".paths.txt").write_text("".join(path + "\n" for path, _ in rows))
    elif suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.table(
            {
                "path": pa.array([path for path, _ in rows], pa.string()),
                "vector": pa.array([vec.tolist() for _, vec in rows], pa.list_(pa.float32())),
                "dim": pa.array([len(vec) for _, vec in rows], pa.int32()),
            }
        )
        pq.write_table(table, out)
    else:
        raise click.UsageError(f"--out must end in .parquet, .jsonl or .npy, not {out.name!r}")
