"""What the Docker image runs, as a module the tests run too:

    python -m deployments.container            the entrypoint: settings -> the launcher (exec)
    python -m deployments.container health     the HEALTHCHECK: readiness on the local port

The entrypoint honours the replaced container's `ENABLE_CUDA` (`1`/`true` -> the GPU config
and CUDA, `0`/`false` -> CPU), under our own settings: an `IMG2VEC_DEVICE` or
`IMG2VEC_SERVE_CONFIG` set explicitly wins. It listens on 8080 (`IMG2VEC_PORT`), like the
image it replaces, and replaces itself with the launcher, so that SIGTERM reaches it.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping

DEFAULT_PORT = "8080"
CPU_CONFIG = "serve_config.yaml"
GPU_CONFIG = "serve_config.gpu.yaml"
TRUE = {"1", "true", "yes", "on"}
FALSE = {"0", "false", "no", "off", ""}


def settings(env: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """(environment additions, launcher command) for this environment."""
    add: dict[str, str] = {}
    cuda = env.get("ENABLE_CUDA")
    config = env.get("IMG2VEC_SERVE_CONFIG")
    if cuda is not None:
        value = cuda.strip().lower()
        if value not in TRUE | FALSE:
            raise ValueError(f"ENABLE_CUDA={cuda!r}: use 1/true (GPU) or 0/false (CPU)")
        use_gpu = value in TRUE
        add.setdefault("IMG2VEC_DEVICE", "cuda" if use_gpu else "cpu")
        config = config or (GPU_CONFIG if use_gpu else CPU_CONFIG)
        if env.get("CUDA_CORE"):
            # The old container's CUDA_CORE=cuda:N picks a GPU; Ray picks by visibility.
            index = env["CUDA_CORE"].removeprefix("cuda:")
            if index.isdigit():
                add.setdefault("CUDA_VISIBLE_DEVICES", index)
    for key in list(add):
        if key in env:  # our own explicit settings win
            del add[key]
    port = env.get("IMG2VEC_PORT") or DEFAULT_PORT
    command = [
        sys.executable,
        "-m",
        "deployments.launch",
        config or CPU_CONFIG,
        "--port",
        port,
    ]
    return add, command


def health(env: Mapping[str, str]) -> int:
    port = env.get("IMG2VEC_PORT") or DEFAULT_PORT
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/.well-known/ready", timeout=2) as r:
            return 0 if r.status == 204 else 1
    except (urllib.error.URLError, OSError):
        return 1


def main(argv: list[str]) -> int:
    if argv[1:] == ["health"]:
        return health(os.environ)
    if argv[1:]:
        print("usage: python -m deployments.container [health]", file=sys.stderr)
        return 2
    try:
        add, command = settings(os.environ)
    except ValueError as exc:
        print(f"img2vec: {exc}", file=sys.stderr)
        return 2
    os.environ.update(add)
    os.execv(command[0], command)  # the launcher takes this process: signals reach it


if __name__ == "__main__":
    sys.exit(main(sys.argv))
