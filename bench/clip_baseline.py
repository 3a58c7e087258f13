"""The one-request-at-a-time baseline for multi2vec-clip: a stand-in for Weaviate's
`multi2vec-clip-inference` container (app.py + clip.py), measured by the same load generator
as our service. Its OpenAI path (`ClipBaseline`), its transformers path for the other families
(`TransformersBaseline`: SigLIP 2, MetaCLIP 2) and its OpenCLIP path (`OpenClipBaseline`).

What it does, as that container does: FastAPI, the work in a thread pool, one lock around the
model, each request's texts as one batch (`CLIPProcessor(text=..., padding=True)`, the text
tower, the projection, L2 norm) and then its images as one batch (base64 -> PIL -> RGB ->
`CLIPProcessor(images=...)`, the vision tower, the projection, L2 norm), without
`torch.no_grad()` (it has none).

Run: `python -m bench.clip_baseline --port 8002 --weights DIR [--family clip|transformers|openclip]`
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import threading
from concurrent.futures import ThreadPoolExecutor

import torch
import uvicorn
from fastapi import FastAPI, Response
from PIL import Image
from pydantic import BaseModel


class ClipInput(BaseModel):
    texts: list = []
    images: list = []


class ClipBaseline:
    def __init__(self, weights: str, device: str = "cpu") -> None:
        from transformers import CLIPModel, CLIPProcessor

        self.device = device  # the container's ENABLE_CUDA / CUDA_CORE
        self.model = CLIPModel.from_pretrained(weights).eval().to(device)
        self.processor = CLIPProcessor.from_pretrained(weights)
        self.lock = threading.Lock()

    def vectorize(self, payload: ClipInput) -> dict:
        text_vectors: list = []
        if payload.texts:
            with self.lock:
                inputs = self.processor(text=payload.texts, return_tensors="pt", padding=True)
                inputs = inputs.to(self.device)
                embeds = self.model.text_model(**inputs)[1]
                embeds = self.model.text_projection(embeds)
                text_vectors = (embeds / embeds.norm(dim=-1, keepdim=True)).tolist()
        image_vectors: list = []
        if payload.images:
            with self.lock:
                files = [_parse_image(image) for image in payload.images]
                inputs = self.processor(images=files, return_tensors="pt").to(self.device)
                embeds = self.model.vision_model(**inputs)[1]
                embeds = self.model.visual_projection(embeds)
                image_vectors = (embeds / embeds.norm(dim=-1, keepdim=True)).tolist()
        return {"textVectors": text_vectors, "imageVectors": image_vectors}


class _Locked:
    """The container's request shape under no_grad: a request's texts, then its images, each
    step holding the one lock (`texts` and `images` say what each family runs)."""

    lock: threading.Lock

    def vectorize(self, payload: ClipInput) -> dict:
        out: dict = {"textVectors": [], "imageVectors": []}
        with torch.no_grad():
            if payload.texts:
                with self.lock:
                    out["textVectors"] = self.texts(payload.texts)
            if payload.images:
                out["imageVectors"] = self.images(payload.images)
        return out

    def texts(self, texts: list) -> list:
        raise NotImplementedError

    def images(self, images: list) -> list:
        raise NotImplementedError


class TransformersBaseline(_Locked):
    """The container's shape for the families it loads with AutoModel + AutoProcessor: a
    request's texts as one batch (padding=True, truncation=True), then its images as one,
    `get_text_features` / `get_image_features`."""

    def __init__(self, weights: str, device: str = "cpu") -> None:
        from transformers import AutoModel, AutoProcessor

        self.device = device
        self.model = AutoModel.from_pretrained(weights).eval().to(device)
        self.processor = AutoProcessor.from_pretrained(weights)
        self.lock = threading.Lock()

    def texts(self, texts: list) -> list:
        inputs = self.processor(text=texts, return_tensors="pt", padding=True, truncation=True)
        return _unit(self.model.get_text_features(**inputs.to(self.device)))

    def images(self, images: list) -> list:
        with self.lock:
            files = [_parse_image(image) for image in images]
            inputs = self.processor(images=files, return_tensors="pt").to(self.device)
            return _unit(self.model.get_image_features(**inputs))


class OpenClipBaseline(_Locked):
    """The container's OpenCLIP path: open_clip's tokenizer and `encode_text` for a request's
    texts, then each image alone (its transform, `encode_image`), one lock per image."""

    def __init__(self, weights: str, device: str = "cpu") -> None:
        from pathlib import Path

        import open_clip

        from img2vec.inputs.openclip import Layout

        layout = Layout.read(Path(weights))  # config.json, a relative local-dir: resolved
        self.model, _, self.preprocess = open_clip.create_model_and_transforms(
            layout.model_name, pretrained=layout.pretrained, cache_dir=weights, device=device
        )
        self.model.eval()
        self.tokenizer = open_clip.get_tokenizer(layout.model_name)
        self.device = device
        self.lock = threading.Lock()

    def texts(self, texts: list) -> list:
        return _unit(self.model.encode_text(self.tokenizer(texts).to(self.device)))

    def images(self, images: list) -> list:
        vectors = []
        for image in images:
            with self.lock:
                img = Image.open(io.BytesIO(base64.b64decode(image)))
                pixels = self.preprocess(img).unsqueeze(0).to(self.device)
                vectors += _unit(self.model.encode_image(pixels))
        return vectors


BASELINES = {
    "clip": ClipBaseline,
    "transformers": TransformersBaseline,
    "openclip": OpenClipBaseline,
}


def _unit(features: object) -> list:
    x = getattr(features, "pooler_output", features)
    assert isinstance(x, torch.Tensor)
    return (x / x.norm(dim=-1, keepdim=True)).tolist()


def _parse_image(text: str) -> Image.Image:
    img = Image.open(io.BytesIO(base64.b64decode(text)))
    return img if img.mode == "RGB" else img.convert("RGB")


def make_app(weights: str, device: str = "cpu", family: str = "clip") -> FastAPI:
    app = FastAPI()
    clip = BASELINES[family](weights, device)
    executor = ThreadPoolExecutor()

    @app.get("/.well-known/ready")
    def ready() -> Response:
        return Response(status_code=204)

    @app.post("/vectorize")
    async def vectorize(payload: ClipInput) -> dict:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(executor, clip.vectorize, payload)

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8002)
    parser.add_argument("--weights", required=True)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--family", default="clip", choices=sorted(BASELINES))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    uvicorn.run(
        make_app(args.weights, args.device, args.family),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
    )


if __name__ == "__main__":
    main()
