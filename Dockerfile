# The image Weaviate's IMAGE_INFERENCE_API points at: a drop-in for img2vec-pytorch:resnet50,
# listening on 8080 like it (metrics on 8081).
#   docker build -t img2vec .                                        # ResNet50 weights baked in
#   docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cpu -t img2vec:cpu .
#   docker build --build-arg BAKE_WEIGHTS= -t img2vec .              # no weights: fetched at start
#   docker run -p 8080:8080 --shm-size=1g img2vec                    # CPU
#   docker run --gpus all -p 8080:8080 --shm-size=4g -e ENABLE_CUDA=1 img2vec
# multi2vec-clip (Weaviate's CLIP_INFERENCE_API), its default model baked in:
#   docker build --build-arg BAKE_WEIGHTS=sentence-transformers/clip-ViT-B-32-multilingual-v1 \
#     -t img2vec:clip .
#   docker run -p 8080:8080 --shm-size=1g -e IMG2VEC_MODULE=multi2vec-clip img2vec:clip
# What it runs is Python the tests run: deployments/ops/container.py (entrypoint and HEALTHCHECK),
# docker/bake-weights.sh (the weights step), deployments/ops/launch.py (the launcher).
FROM python:3.11-slim

ARG TORCH_INDEX=
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TORCH_HOME=/opt/img2vec/torch \
    HF_HOME=/opt/img2vec/hf \
    IMG2VEC_PORT=8080 \
    IMG2VEC_METRICS_PORT=8081

WORKDIR /opt/img2vec
# Dependencies first, so that a code change does not reinstall torch.
COPY pyproject.toml README.md ./
RUN mkdir img2vec img2vec_cli deployments \
    && touch img2vec/__init__.py img2vec_cli/__init__.py deployments/__init__.py \
    && pip install ${TORCH_INDEX:+--extra-index-url "$TORCH_INDEX"} . \
    && pip uninstall -y img2vec
COPY img2vec img2vec
COPY img2vec_cli img2vec_cli
COPY deployments deployments
COPY docker docker
COPY serve_config.yaml serve_config.gpu.yaml serve_config.models.yaml serve_config.clip.yaml \
     serve_config.clip.gpu.yaml serve.env ./
RUN pip install --no-deps .

# Weights in the image, SHA-256 verified at build: the container starts offline.
ARG BAKE_WEIGHTS=resnet50
RUN if [ -n "$BAKE_WEIGHTS" ]; then docker/bake-weights.sh "$BAKE_WEIGHTS"; fi

RUN useradd --system --uid 10001 --home-dir /opt/img2vec img2vec \
    && chown -R img2vec /opt/img2vec
USER 10001
EXPOSE 8080 8081
HEALTHCHECK --interval=10s --timeout=3s --start-period=120s \
    CMD ["python", "-m", "deployments.ops.container", "health"]
# Exec form: the entrypoint replaces itself with the launcher, which drains on SIGTERM.
ENTRYPOINT ["python", "-m", "deployments.ops.container"]
