"""The `img2vec` command: vectorize files, check a service is a faithful drop-in, manage
weights, run the service and its benchmark. `img2vec --help`, `img2vec COMMAND --help`."""

from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path
from typing import Any

import click

from img2vec import __version__
from img2vec.models.weights import SPECS, get_spec
from img2vec.options import DEFAULT_MODEL


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="img2vec")
def cli() -> None:
    """Images to vectors, compatible with Weaviate's img2vec-neural module.

    \b
    embed    vectorize image files and folders, in-process or with a running service
    check    check that a running service is a drop-in for Weaviate (ours or the old container)
    models   list the backbones and their preprocessing presets
    weights  download and verify weights files, for offline use and image builds
    serve    run the service on this machine (what `make serve` and the Docker image run)
    bench    bench/run.py, the side-by-side benchmark (from a checkout; make bench runs all)
    """


@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option(
    "--out",
    "-o",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="vectors.parquet, vectors.jsonl or vectors.npy (with vectors.npy.paths.txt beside it)",
)
@click.option("--model", default=DEFAULT_MODEL, show_default=True, help="see `img2vec models`")
@click.option(
    "--weights",
    default="download",
    show_default=True,
    help="'download', a state-dict file, or 'random' (tests only)",
)
@click.option(
    "--device", default="auto", show_default=True, type=click.Choice(["auto", "cpu", "cuda"])
)
@click.option("--batch-size", default=16, show_default=True, type=click.IntRange(1, 1024))
@click.option(
    "--url",
    default=None,
    help="vectorize with a running service instead, e.g. http://localhost:8000",
)
@click.option(
    "--concurrency",
    default=8,
    show_default=True,
    type=click.IntRange(1, 256),
    help="with --url: requests in flight",
)
@click.option(
    "--retries",
    default=5,
    show_default=True,
    type=click.IntRange(0, 100),
    help="with --url: retries of a 503 or a lost connection",
)
@click.option("--timeout", default=60.0, show_default=True, help="with --url: seconds per request")
def embed(paths: tuple[Path, ...], out: Path, **options: Any) -> None:
    """Vectorize image files and folders (recursively) into OUT.

    Every row keeps the file's path. A file that is not a readable image is reported and
    skipped; the run goes on. In-process by default (--model, --weights); with --url, against
    a running service (ours or the container it replaces), retrying 503s after their
    Retry-After. Exit status 0 when at least one file was vectorized.
    """
    from img2vec_cli.embed import embed_files, find_files, write_vectors

    files = find_files(paths)
    if not files:
        raise click.ClickException("no files found")
    rows, skipped = embed_files(files, **options)  # the options above, by name
    for path, reason in skipped:
        click.echo(f"skipped {path}: {reason}", err=True)
    if not rows:
        raise click.ClickException(f"no image could be vectorized ({len(skipped)} skipped)")
    write_vectors(rows, out)
    click.echo(f"{len(rows)} vectorized, {len(skipped)} skipped -> {out}", err=True)


@cli.command()
@click.argument("url")
@click.option("--dim", default=None, type=int, help="expected vector length (default: the model's)")
@click.option(
    "--model", default=DEFAULT_MODEL, show_default=True, help="what the service should serve"
)
@click.option(
    "--reference-weights",
    default=None,
    help="also compare with vectors computed here from these weights ('download' or a file)",
)
@click.option(
    "--image",
    "images",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="an image for the reference comparison (repeatable)",
)
@click.option(
    "--timeout",
    default=30.0,
    show_default=True,
    help="seconds to wait for readiness and per request",
)
def check(
    url: str,
    dim: int | None,
    model: str,
    reference_weights: str | None,
    images: tuple[Path, ...],
    timeout: float,
) -> None:
    """Check that the service at URL is what Weaviate's img2vec-neural module expects.

    Readiness and liveness (204), POST /vectors with and without a Content-Type, the
    trailing-slash route without a redirect, the vector's length, JSON errors for bad input,
    and, with --reference-weights, the vectors themselves against a local computation.
    Prints PASS / WARN / FAIL per check; exit status 1 if any FAILed.
    """
    from img2vec_cli.check import run_checks

    results = run_checks(
        url.rstrip("/"),
        dim=dim if dim is not None else get_spec(model).dim,
        model=model,
        reference_weights=reference_weights,
        images=list(images),
        timeout=timeout,
    )
    for verdict, name, detail in results:
        click.echo(f"{verdict:<5} {name}: {detail}")
    failed = sum(v == "FAIL" for v, _, _ in results)
    click.echo(f"{len(results)} checks, {failed} failed")
    sys.exit(1 if failed else 0)


@cli.command()
def models() -> None:
    """List the backbones: name, vector length, weights, and the two presets."""
    for spec in SPECS.values():
        click.echo(
            f"{spec.name:<20} dim {spec.dim:<5} {spec.weights_tag:<42} "
            f"{spec.name}: {spec.preprocess}, {spec.name}:native: {spec.native_preprocess}"
        )


@cli.group()
def weights() -> None:
    """Download and verify weights files (into the torch hub cache, $TORCH_HOME)."""


@weights.command("fetch")
@click.argument("models", nargs=-1)
@click.option(
    "--from",
    "source",
    default=None,
    help="a mirror URL or a local file to take the weights from instead (still verified)",
)
@click.option(
    "--timeout",
    default=30.0,
    show_default=True,
    help="give up after this many seconds without data",
)
def weights_fetch(models: tuple[str, ...], source: str | None, timeout: float) -> None:
    """Put MODELS' weights (default: resnet50) in the cache, SHA-256 verified."""
    from img2vec_cli.weights import fetch

    for name in models or (DEFAULT_MODEL,):
        path = fetch(name, source, timeout)
        click.echo(f"{name}: {path} (verified)")


@weights.command("convert")
@click.argument("models", nargs=-1)
@click.option(
    "--weights",
    "source",
    default="download",
    show_default=True,
    help="the weights to convert: 'download' (the cache), 'random' or a file (one model)",
)
@click.option(
    "--dtype", default="float32", show_default=True, type=click.Choice(["float32", "bfloat16"])
)
def weights_convert(models: tuple[str, ...], source: str, dtype: str) -> None:
    """Convert MODELS' weights (default: resnet50) for the CPU engine (OpenVINO) and cache the
    result, so that a replica's first start finds it (the image's build does this)."""
    from img2vec_cli.weights import convert

    for name in models or (DEFAULT_MODEL,):
        click.echo(f"{name}: {convert(name, source, dtype)}")


@weights.command("verify")
@click.argument("models", nargs=-1)
@click.option(
    "--file",
    "file",
    default=None,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="verify this file instead of the cached one (one model)",
)
def weights_verify(models: tuple[str, ...], file: Path | None) -> None:
    """Check MODELS' cached weights (default: resnet50) against their published hash."""
    from img2vec_cli.weights import verify

    names = models or (DEFAULT_MODEL,)
    if file is not None and len(names) != 1:
        raise click.UsageError("--file verifies one model's file")
    failed = False
    for name in names:
        ok, detail = verify(name, file)
        click.echo(f"{'OK' if ok else 'BAD'}   {name}: {detail}")
        failed |= not ok
    sys.exit(1 if failed else 0)


@cli.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.pass_context
def serve(ctx: click.Context) -> None:
    """Run the service here: `img2vec serve [serve_config.yaml] [--port 8080] ...`.

    The launcher's options (see `img2vec serve --help-launcher`): serve.env applied, the
    port overridden, metrics on a fixed port, a drain on SIGTERM.
    """
    from deployments.ops.launch import main as launch

    args = ["--help" if a == "--help-launcher" else a for a in ctx.args]
    sys.exit(launch(args))


@cli.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.pass_context
def bench(ctx: click.Context) -> None:
    """The benchmark (`make bench`): bare model, service and the replaced container side by
    side. Runs from a checkout of the repository; `img2vec bench --help-bench` lists its
    options."""
    if not Path("bench/run.py").is_file():
        raise click.ClickException("run `img2vec bench` from a checkout of the img2vec repository")
    sys.path.insert(0, os.getcwd())
    args = ["--help" if a == "--help-bench" else a for a in ctx.args]
    sys.argv = ["python -m bench.run", *args]
    runpy.run_module("bench.run", run_name="__main__")


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
