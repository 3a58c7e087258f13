# The image Weaviate's IMAGE_INFERENCE_API points at: `serve run serve_config.yaml` on :8000.
#   docker build -t img2vec .                      # bakes the ResNet50 weights in (needs internet)
#   docker build --build-arg BAKE_WEIGHTS= -t img2vec .   # no weights baked; downloaded at start
#   docker run -p 8000:8000 img2vec                # CPU
#   docker run --gpus all -p 8000:8000 -e IMG2VEC_SERVE_CONFIG=serve_config.gpu.yaml img2vec
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TORCH_HOME=/opt/img2vec/torch \
    IMG2VEC_SERVE_CONFIG=serve_config.yaml

WORKDIR /opt/img2vec
# Dependencies first, so that a code change does not reinstall torch.
COPY pyproject.toml README.md ./
RUN mkdir img2vec deployments && touch img2vec/__init__.py deployments/__init__.py \
    && pip install . && pip uninstall -y img2vec
COPY img2vec img2vec
COPY deployments deployments
COPY serve_config*.yaml serve.env ./
RUN pip install --no-deps .

# Weights in the image: the container starts offline, and the SHA-256 is checked at build.
ARG BAKE_WEIGHTS=resnet50
RUN if [ -n "$BAKE_WEIGHTS" ]; then python -c "import sys; from img2vec.weights import get_spec, resolve_weights; [resolve_weights(get_spec(m), 'download') for m in sys.argv[1:]]" $(echo "$BAKE_WEIGHTS" | tr ',' ' '); fi

RUN useradd --system --uid 10001 --home-dir /opt/img2vec img2vec && chown -R img2vec /opt/img2vec
USER img2vec
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=2s --start-period=120s \
    CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/.well-known/ready', timeout=1).status != 204)"
# serve.env: Ray Serve's process settings (throughput mode, HAProxy), as `make serve` applies them.
CMD ["sh", "-c", "set -a && . ./serve.env && set +a && exec serve run \"$IMG2VEC_SERVE_CONFIG\""]
