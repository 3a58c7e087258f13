"""The one-image-at-a-time baseline: a faithful stand-in for the `img2vec-pytorch` container
we replace, to be measured by the same load generator as our service.

What it does, as that container does: FastAPI with a sync endpoint (Starlette's thread pool),
the base64 image written to a file (here under a private temp dir, named by a counter instead
of the client's id), `Image.open(path).convert("RGB")`, one image at a time behind a global
lock, a forward hook registered per call, and no `torch.inference_mode()` / `no_grad()`.

Run: `python -m bench.baseline --port 8001 --weights random|PATH`
"""

from __future__ import annotations

import argparse
import atexit
import base64
import itertools
import os
import shutil
import tempfile
import threading

import torch
import torchvision
import uvicorn
from fastapi import FastAPI, Response, status
from PIL import Image
from pydantic import BaseModel
from torchvision import transforms


class VectorImagePayload(BaseModel):
    id: str
    image: str


class Img2VecBaseline:
    def __init__(self, weights: str) -> None:
        self.model = torchvision.models.resnet50(weights=None)
        if weights != "random":
            self.model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        self.model.eval()
        self.layer = self.model.avgpool
        self.scaler = transforms.Resize((224, 224))
        self.normalize = transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
        self.to_tensor = transforms.ToTensor()
        self.lock = threading.Lock()

    def get_vec(self, path: str):
        img = Image.open(path).convert("RGB")
        with self.lock:
            image = self.normalize(self.to_tensor(self.scaler(img))).unsqueeze(0)
            embedding = torch.zeros(1, 2048, 1, 1)

            def copy_data(m, i, o):
                embedding.copy_(o.data)

            hook = self.layer.register_forward_hook(copy_data)
            self.model(image)
            hook.remove()
            return embedding.numpy()[0, :, 0, 0]


def create_app(weights: str) -> FastAPI:
    # The container's FastAPI release reads a body without a Content-Type as JSON, which is
    # how Weaviate sends it; FastAPI 0.13x and later refuse that (422) unless told not to.
    try:
        app = FastAPI(strict_content_type=False)
    except TypeError:  # an older FastAPI: that was its only behaviour
        app = FastAPI()
    vec = Img2VecBaseline(weights)
    workdir = tempfile.mkdtemp(prefix="img2vec-baseline-")
    # The container writes each image to a file and deletes it; its folder goes at exit.
    atexit.register(shutil.rmtree, workdir, True)
    counter = itertools.count()

    @app.get("/.well-known/live", response_class=Response)
    @app.get("/.well-known/ready", response_class=Response)
    def live_and_ready(response: Response):
        response.status_code = status.HTTP_204_NO_CONTENT

    @app.post("/vectors")
    def vectors(item: VectorImagePayload, response: Response):
        path = os.path.join(workdir, str(next(counter)))
        try:
            with open(path, "wb") as f:
                f.write(base64.b64decode(item.image))
            vector = vec.get_vec(path)
            return {"id": item.id, "vector": vector.tolist(), "dim": len(vector)}
        except Exception as e:
            response.status_code = status.HTTP_500_INTERNAL_SERVER_ERROR
            return {"error": str(e)}
        finally:
            if os.path.exists(path):
                os.remove(path)

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--weights", default="random")
    args = parser.parse_args()
    uvicorn.run(create_app(args.weights), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
