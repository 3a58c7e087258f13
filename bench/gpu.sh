#!/usr/bin/env bash
# The GPU half of the performance work, for a CUDA machine (one H100 or H200):
#   bash bench/gpu.sh [OUT_DIR]
# 1. bare model img/s at batch 64/128/256 in float32, float16 and bfloat16 (both graphs);
# 2. cosine drift of float16/bfloat16 and of JPEG draft decoding against the float32 reference;
# 3. the whole service (serve_config.gpu.yaml, serve.env) at high concurrency, side by side
#    with the bare model, and the one-at-a-time baseline.
# Status: written for that machine, not yet run there (no GPU was lent to the session that wrote
# it); docs/benchmarks.md says so until its numbers are recorded.
set -euo pipefail
out=${1:-bench/results/gpu}
mkdir -p "$out"
py=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
for graph in torchscript eager; do
  "$py" -m bench.model --device cuda --graph "$graph" --dtypes float32,tf32,float16,bfloat16 \
    --batches 64,128,256 --min-time 5 | tee "$out/model-$graph.jsonl"
done
"$py" -m bench.drift --device cuda --dtypes float32,tf32,float16,bfloat16 | tee "$out/drift.jsonl"
"$py" -m bench.run --config serve_config.gpu.yaml --model-device cuda --model-batches 64,128,256 \
  --concurrency 64,256,512 --images 640x480,1920x1080,1x1 --max-requests 50000 \
  --out "$out" --no-docs | tee "$out/run.log"
