"""Weaviate's real server (built by `make weaviate`) in front of the real services, both started
on loopback as users start them: `make serve` (the launcher on serve_config.yaml, the calibrated
random ResNet50) and `make serve-clip` (the launcher on serve_config.clip.yaml, a random
ViT-B/32 CLIP, 512-d like Weaviate's own tests expect). Weaviate is started while the services
are still loading, as `docker compose up` starts them together: it must wait for them itself.
One stack for the package; every collection a test makes is its own."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from bench.processes import launched, wait_ready
from bench.weaviate_server import ROOT, Weaviate, running


@dataclass(frozen=True)
class Stack:
    weaviate: Weaviate
    image_url: str  # IMAGE_INFERENCE_API
    clip_url: str  # CLIP_INFERENCE_API
    image_marker: str  # in the environment of every process of the img2vec-neural service
    services_ready_s: float  # from the start of all three to both services' readiness
    weaviate_ready_s: float  # from the same start to Weaviate's


def config(name: str) -> dict:
    return yaml.safe_load((ROOT / name).read_text())


@pytest.fixture(scope="package")
def stack(tmp_path_factory: pytest.TempPathFactory, resnet50_file: Path) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("weaviate-stack")
    (work / "image").mkdir()
    (work / "clip").mkdir()
    marker = uuid.uuid4().hex
    with ExitStack() as stack:
        started_at = time.monotonic()
        image_url, image_proc = stack.enter_context(
            launched(
                config("serve_config.yaml"),
                work / "image",
                ROOT,
                extra_env={"IMG2VEC_WEIGHTS": str(resnet50_file)},
                marker=marker,
                wait=False,
            )
        )
        clip_url, clip_proc = stack.enter_context(
            launched(config("serve_config.clip.yaml"), work / "clip", ROOT, wait=False)
        )
        weaviate = stack.enter_context(
            running(work, wait=False, IMAGE_INFERENCE_API=image_url, CLIP_INFERENCE_API=clip_url)
        )
        wait_ready(image_url, proc=image_proc, log=work / "image" / "service.log")
        wait_ready(clip_url, proc=clip_proc, log=work / "clip" / "service.log")
        services_ready = time.monotonic() - started_at
        weaviate.wait_ready()
        yield Stack(
            weaviate,
            image_url,
            clip_url,
            marker,
            services_ready,
            time.monotonic() - started_at,
        )


@pytest.fixture(scope="package")
def client(stack: Stack) -> Iterator[object]:
    """Weaviate's own Python client (v4), connected over REST and gRPC."""
    client = stack.weaviate.client()
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def fresh(client) -> Iterator[list[str]]:
    """Collections a test creates, deleted afterwards (a failed test leaves nothing behind)."""
    names: list[str] = []
    yield names
    for name in names:
        client.collections.delete(name)
