"""`img2vec check` and `img2vec embed --url` against the real service."""

from __future__ import annotations

import json

import httpx
import numpy as np

from tests.support.helpers import run_cli as run
from tests.support.images import b64, encode


def test_check_passes_against_our_service_with_its_vectors_matching_a_local_reference(
    resnet_url, resnet50_file, tmp_path, photos
):
    photo = tmp_path / "rocket.jpg"
    photo.write_bytes(encode(photos["rocket"], "JPEG"))
    result = run(
        "check", resnet_url, "--reference-weights", str(resnet50_file), "--image", str(photo)
    )
    assert result.returncode == 0, result.stdout
    assert "FAIL" not in result.stdout and "WARN" not in result.stdout
    assert result.stdout.count("PASS  reference vector") == 2


def test_embed_through_the_service_gives_the_services_vectors(resnet_url, tmp_path, photos):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ("chelsea", "coffee"):
        (folder / f"{name}.png").write_bytes(encode(photos[name], "PNG"))
    (folder / "broken.jpg").write_bytes(encode(photos["coffee"], "JPEG")[:3000])
    out = tmp_path / "v.jsonl"
    result = run("embed", str(folder), "--out", str(out), "--url", resnet_url)
    assert result.returncode == 0, result.stderr
    assert "skipped" in result.stderr and "broken.jpg: 400" in result.stderr
    rows = {
        json.loads(line)["path"]: json.loads(line)["vector"]
        for line in out.read_text().splitlines()
    }
    assert len(rows) == 2
    for name in ("chelsea", "coffee"):
        body = json.dumps({"id": "x", "image": b64((folder / f"{name}.png").read_bytes())})
        direct = httpx.post(resnet_url + "/vectors", content=body, timeout=60).json()["vector"]
        np.testing.assert_allclose(rows[str(folder / f"{name}.png")], direct, rtol=1e-5, atol=1e-6)
