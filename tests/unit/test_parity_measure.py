"""The parity measure (tests/support/parity.py) can fail: on the weights the parity tests use, each
plausible preprocessing mistake moves a vector much further than the measure allows, and
the vectors of different photos are far apart. If these fail, the parity tests prove
nothing."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from tests.support.parity import min_separation, relative_error, tolerance
from tests.support.reference import ReferenceImg2Vec

RESIZE = T.Resize((224, 224))
NORMALIZE = T.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])


def _shifted_one_pixel(img: Image.Image) -> torch.Tensor:
    """The resize taken one source pixel to the right."""
    return NORMALIZE(T.ToTensor()(RESIZE(img.crop((1, 0, img.width, img.height)))))


def _bgr(img: Image.Image) -> torch.Tensor:
    r, g, b = img.split()
    return NORMALIZE(T.ToTensor()(RESIZE(Image.merge("RGB", (b, g, r)))))


def _not_normalized(img: Image.Image) -> torch.Tensor:
    return T.ToTensor()(RESIZE(img))


def _crop_instead_of_stretch(img: Image.Image) -> torch.Tensor:
    return NORMALIZE(T.ToTensor()(T.CenterCrop(224)(T.Resize(224)(img))))


MISTAKES = {
    "one-pixel shift": _shifted_one_pixel,
    "BGR": _bgr,
    "no normalization": _not_normalized,
    "centre crop": _crop_instead_of_stretch,
}


@pytest.fixture(scope="module", params=["resnet50", "mobilenet_v2"])
def reference(request, resnet50_file, mobilenet_v2_file):
    weights = resnet50_file if request.param == "resnet50" else mobilenet_v2_file
    return ReferenceImg2Vec(request.param, weights)


def test_different_photos_are_far_apart(reference, photos):
    vectors = {name: reference.vector_of(img) for name, img in photos.items()}
    assert min_separation(vectors) > 0.1


@pytest.mark.parametrize("mistake", MISTAKES)
def test_each_preprocessing_mistake_fails_the_measure(reference, photos, mistake):
    vectors = {name: reference.vector_of(img) for name, img in photos.items()}
    limit = tolerance(min_separation(vectors))
    for name, img in photos.items():  # colour photos: a BGR swap changes them all
        if mistake == "centre crop" and img.width == img.height:
            continue  # a square photo is not stretched: cropping it changes nothing
        wrong = reference.vector_of(img, MISTAKES[mistake])
        error = relative_error(wrong, vectors[name])
        assert error > 5 * limit, (mistake, name, error, limit)
