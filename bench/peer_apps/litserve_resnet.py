"""img2vec-neural's API on LitServe, written the way LitServe's docs write a batched app: a
LitAPI with setup / decode_request / batch / predict / unbatch / encode_response, batching on
(max_batch_size, batch_timeout). ResNet50 float32, eager PyTorch, the container's
preprocessing (Resize((224, 224)), ToTensor, ImageNet Normalize), avgpool's 2048 features.

Runs in the peer's own virtual environment (bench/peers.py installs it): it imports nothing
of img2vec.

    python litserve_resnet.py --weights resnet50.pth --port 8003 [--max-batch-size 32]
"""

from __future__ import annotations

import argparse
import base64
import io

import litserve as ls
import torch
import torchvision
from PIL import Image
from torchvision import transforms as T

TRANSFORM = T.Compose(
    [
        T.Resize((224, 224)),
        T.ToTensor(),
        T.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
    ]
)


class ResNet50Vectors(ls.LitAPI):
    def __init__(self, weights: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.weights = weights

    def setup(self, device: str) -> None:
        model = torchvision.models.resnet50(weights=None)
        model.load_state_dict(torch.load(self.weights, map_location="cpu"))
        model.fc = torch.nn.Identity()  # avgpool's 2048 features
        self.model = model.eval().to(device)
        self.device = device

    def decode_request(self, request: dict) -> tuple[str, torch.Tensor]:
        image = Image.open(io.BytesIO(base64.b64decode(request["image"]))).convert("RGB")
        return request["id"], TRANSFORM(image)

    def batch(self, inputs: list[tuple[str, torch.Tensor]]) -> tuple[list[str], torch.Tensor]:
        return [i for i, _ in inputs], torch.stack([x for _, x in inputs])

    def predict(self, batch: tuple[list[str], torch.Tensor]) -> list[tuple[str, list[float]]]:
        ids, pixels = batch
        with torch.inference_mode():
            vectors = self.model(pixels.to(self.device)).cpu()
        return list(zip(ids, vectors.tolist(), strict=True))

    def unbatch(self, output: list) -> list:
        return output

    def encode_response(self, output: tuple[str, list[float]]) -> dict:
        return {"id": output[0], "vector": output[1], "dim": len(output[1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--max-batch-size", type=int, default=32)
    parser.add_argument("--batch-timeout", type=float, default=0.01)
    parser.add_argument("--accelerator", default="cpu", help="cpu or cuda")
    args = parser.parse_args()
    api = ResNet50Vectors(
        args.weights,
        max_batch_size=args.max_batch_size,
        batch_timeout=args.batch_timeout,
        api_path="/vectors",
    )
    server = ls.LitServer(api, accelerator=args.accelerator, devices=1, timeout=60)
    server.run(host="127.0.0.1", port=args.port, generate_client_file=False)


if __name__ == "__main__":
    main()
