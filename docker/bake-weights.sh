#!/bin/sh
# The image's weights step: fetch each model's weights into $TORCH_HOME and verify them.
#   docker/bake-weights.sh resnet50[,convnext_tiny...]
# IMG2VEC_WEIGHTS_FROM (a mirror URL or a local file, one model) replaces the download.
# tests/unit/test_container.py runs this very script against a local file.
set -eu
models=$(echo "${1:-resnet50}" | tr ',' ' ')
for model in $models; do
    if [ -n "${IMG2VEC_WEIGHTS_FROM:-}" ]; then
        img2vec weights fetch "$model" --from "$IMG2VEC_WEIGHTS_FROM"
    else
        img2vec weights fetch "$model"
    fi
    img2vec weights verify "$model"
done
