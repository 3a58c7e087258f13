"""The multi2vec-clip model deployment (`ClipModel`): a CLIP-style model's two towers
(img2vec/towers.py) behind the one batcher, so that the images and texts of concurrent
requests share passes.

Every call is one request's inputs, prepared by an ingress replica (deployments/edge/clip.py):
images decoded, resized and cropped (uint8 N x H x W x 3), texts tokenized and truncated
(int32 ids each). As on the image path (deployments/model/image.py), `@serve.batch` (`_gather`)
gathers the calls that arrive together and admits their inputs into the batcher against the
request's deadline; the batcher forms the passes. A request is admitted whole or refused
whole: Weaviate needs every vector of an object.
"""

from __future__ import annotations

import numpy as np
from ray import serve

from deployments.handoff import GroupAnswer
from deployments.model.host import (
    DEFAULTS,
    MODEL_DEPLOYMENT,
    Admitted,
    HostedModel,
    ModelHost,
    check_images,
    default_torch_threads,
)
from deployments.settings import ClipModelSettings
from img2vec.batching import Pending
from img2vec.multimodal import ClipSpec
from img2vec.towers import IMAGE, TEXT, Input, Towers


@serve.deployment(**MODEL_DEPLOYMENT)
class ClipModel(HostedModel):
    def __init__(self, settings: ClipModelSettings) -> None:
        spec = ClipSpec.from_dir(settings.weights)
        threads = settings.torch_threads or default_torch_threads(settings.device)
        self._towers = Towers(
            spec, settings.device, threads, settings.engine, settings.batch_invariance
        )
        self._host = ModelHost(
            run=self._towers.run,
            warm_up=self._towers.warm_up,
            identity=self._towers.info,
            gather=self._gather,
        )

    async def vectorize(
        self, images: np.ndarray, texts: list[np.ndarray], deadline: float | None
    ) -> GroupAnswer:
        """One request's images (uint8 N x H x W x 3) and texts (int32 token ids each) ->
        their vectors, images first then texts, in input order; or, for every input, the
        one error that refused the request (Overloaded: the model is too far behind)."""
        check_images(images, self._towers.input_size)
        self._check_texts(texts)
        inputs = [Input(IMAGE, image) for image in images] + [Input(TEXT, t) for t in texts]
        return await self._host.answer(await self._gather([Pending(inputs, deadline)]))

    @serve.batch(max_batch_size=DEFAULTS.max_batch_size, batch_wait_timeout_s=0.0)
    async def _gather(self, calls: list[list[Pending[Input]]]) -> list[list[list[Admitted]]]:
        """Admit every request gathered now, oldest first, whole."""
        return self._host.admit(calls)

    def _check_texts(self, texts: object) -> None:
        context = self._towers.spec.context
        for t in texts if isinstance(texts, list) else [None]:
            if (
                not isinstance(t, np.ndarray)
                or t.dtype != np.int32
                or t.ndim != 1
                or not 0 < len(t) <= context
            ):
                raise ValueError(f"expected int32 token ids of 1 to {context} tokens per text")

    def inputs(self) -> ClipSpec:
        """How inputs are prepared, tokenizer included: what an ingress replica needs."""
        return self._towers.spec
