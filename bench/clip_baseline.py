"""The one-request-at-a-time baseline for multi2vec-clip: a stand-in for Weaviate's
`multi2vec-clip-inference` container (its OpenAI path, app.py + clip.py), measured by the same
load generator as our service.

What it does, as that container does: FastAPI, the work in a thread pool, one lock around the
model, each request's texts as one batch (`CLIPProcessor(text=..., padding=True)`, the text
tower, the projection, L2 norm) and then its images as one batch (base64 -> PIL -> RGB ->
`CLIPProcessor(images=...)`, the vision tower, the projection, L2 norm), without
`torch.no_grad()` (it has none).

Run: `python -m bench.clip_baseline --port 8002 --weights DIR`
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


def _parse_image(text: str) -> Image.Image:
    img = Image.open(io.BytesIO(base64.b64decode(text)))
    return img if img.mode == "RGB" else img.convert("RGB")


def make_app(weights: str, device: str = "cpu") -> FastAPI:
    app = FastAPI()
    clip = ClipBaseline(weights, device)
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
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    uvicorn.run(
        make_app(args.weights, args.device), host="127.0.0.1", port=args.port, log_level="warning"
    )


if __name__ == "__main__":
    main()
