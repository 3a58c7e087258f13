"""What the Docker image runs, as a module the tests run too:

    python -m deployments.ops.container            the entrypoint: settings -> the launcher (exec)
    python -m deployments.ops.container health     the HEALTHCHECK: readiness on the local port

`IMG2VEC_MODULE` picks the API: `img2vec-neural` (the default, POST /vectors) or
`multi2vec-clip` (POST /vectorize, the model from IMG2VEC_WEIGHTS). The entrypoint honours the
replaced containers' `ENABLE_CUDA` (`1`/`true` -> the GPU config
and CUDA, `0`/`false` -> CPU), under our own settings: an `IMG2VEC_DEVICE` or
`IMG2VEC_SERVE_CONFIG` set explicitly wins. It listens on 8080 (`IMG2VEC_PORT`), like the
image it replaces, on every interface of the container (`IMG2VEC_HOST`, default 0.0.0.0:
Weaviate reaches it over Docker's network, where the launcher's own default, loopback, would
shut it out), and replaces itself with the launcher, so that SIGTERM reaches it.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping

DEFAULT_PORT = "8080"
ALL_INTERFACES = "0.0.0.0"
CPU_CONFIG = "serve_config.yaml"
GPU_CONFIG = "serve_config.gpu.yaml"
# IMG2VEC_MODULE: which of Weaviate's modules the container answers, (CPU config, GPU config).
MODULES = {
    "img2vec-neural": (CPU_CONFIG, GPU_CONFIG),
    "multi2vec-clip": ("serve_config.clip.yaml", "serve_config.clip.gpu.yaml"),
}
TRUE = {"1", "true", "yes", "on"}
FALSE = {"0", "false", "no", "off", ""}


def settings(env: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """(environment additions, launcher command) for this environment."""
    add: dict[str, str] = {}
    cuda = env.get("ENABLE_CUDA")
    config = env.get("IMG2VEC_SERVE_CONFIG")
    module = (env.get("IMG2VEC_MODULE") or "img2vec-neural").strip()
    if module not in MODULES:
        raise ValueError(f"IMG2VEC_MODULE={module!r}: use {' or '.join(MODULES)}")
    cpu_config, gpu_config = MODULES[module]
    if cuda is not None:
        value = cuda.strip().lower()
        if value not in TRUE | FALSE:
            raise ValueError(f"ENABLE_CUDA={cuda!r}: use 1/true (GPU) or 0/false (CPU)")
        use_gpu = value in TRUE
        add.setdefault("IMG2VEC_DEVICE", "cuda" if use_gpu else "cpu")
        config = config or (gpu_config if use_gpu else cpu_config)
        if env.get("CUDA_CORE"):
            # The old container's CUDA_CORE=cuda:N picks a GPU; Ray picks by visibility.
            index = env["CUDA_CORE"].removeprefix("cuda:")
            if index.isdigit():
                add.setdefault("CUDA_VISIBLE_DEVICES", index)
    add["IMG2VEC_HOST"] = ALL_INTERFACES
    for key in list(add):
        if key in env:  # our own explicit settings win
            del add[key]
    port = env.get("IMG2VEC_PORT") or DEFAULT_PORT
    command = [
        sys.executable,
        "-m",
        "deployments.ops.launch",
        config or cpu_config,
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
        print("usage: python -m deployments.ops.container [health]", file=sys.stderr)
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
