"""Run as `python -m tests.support.invariance_probe DIR` in a process of its own (where
ONEDNN_MAX_CPU_ISA, read when OpenVINO loads, can be set): a random CLIP with a wide image
tower, warmed up with batch_invariance on and off; prints as JSON what /meta would say and
whether 8 photo-like images get the same bits alone as in one pass."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

from img2vec.models.clip.registry import read_model_dir
from img2vec.models.clip.towers import Towers
from img2vec.serving.invariance import probe_images
from tests.support.clip_models import WIDE_VISION, write_clip


def same_bits(towers: Towers, images: np.ndarray) -> bool:
    crowd = towers.embed_images(images)
    return all(
        np.array_equal(towers.embed_images(images[i : i + 1])[0], crowd[i])
        for i in range(len(images))
    )


def main(root: Path) -> None:
    os.environ["IMG2VEC_ENGINE_CACHE"] = str(root / "engines")
    spec = read_model_dir(write_clip(root, vision=WIDE_VISION))
    images = np.stack(probe_images((224, 224), 8, seed=7))
    out = {}
    for invariance in (True, False):
        towers = Towers(spec, "cpu", 2, engine="openvino", batch_invariance=invariance)
        towers.warm_up(8)
        info = towers.info()
        out[str(invariance).lower()] = {
            "batch_invariant": info["batch_invariant"],
            "fixed_pass": info["fixed_pass"],
            "streams": info["streams"],
            "same_bits": same_bits(towers, images),
        }
    print(json.dumps(out))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
