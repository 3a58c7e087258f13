#!/bin/sh
# The image's weights step: fetch each model's weights into $TORCH_HOME, verify them, and
# convert them for the CPU engine (OpenVINO, cached under $TORCH_HOME/img2vec-engines) so that
# the container's first start does not.
#   docker/bake-weights.sh resnet50[,convnext_tiny...]
#   docker/bake-weights.sh sentence-transformers/clip-ViT-B-32-multilingual-v1   # multi2vec-clip
# A name with a "/" (or open_clip:NAME:TAG, an OpenCLIP model) is a model for multi2vec-clip, fetched into $HF_HOME
# (each file checked against the hub's SHA-256) and loaded once to check it.
# IMG2VEC_WEIGHTS_FROM (a mirror URL or a local file, one model) replaces the download.
# tests/unit/test_container.py runs this very script against a local file.
set -eu
models=$(echo "${1:-resnet50}" | tr ',' ' ')
for model in $models; do
    case "$model" in
    */* | open_clip:*)
        python -m img2vec.models.clip "$model"
        continue
        ;;
    esac
    if [ -n "${IMG2VEC_WEIGHTS_FROM:-}" ]; then
        img2vec weights fetch "$model" --from "$IMG2VEC_WEIGHTS_FROM"
    else
        img2vec weights fetch "$model"
    fi
    img2vec weights verify "$model"
    img2vec weights convert "$model"
done
