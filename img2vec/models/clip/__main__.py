"""`python -m img2vec.models.clip NAME|DIR`: fetch (once) and check a CLIP-style model, print
its directory: the image's weights step for multi2vec-clip (docker/bake-weights.sh)."""

from __future__ import annotations

import sys

from img2vec.models.clip.registry import read_model_dir


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m img2vec.models.clip <hub name or model directory>")
        return 2
    try:
        spec = read_model_dir(argv[1])
    except ValueError as exc:
        print(f"img2vec: {exc}")
        return 1
    print(f"{spec.path} ({spec.family}, texts truncated to {spec.context} tokens)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
