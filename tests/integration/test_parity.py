"""Same vectors as img2vec-pytorch: the service against an independent reference pipeline,
from the same weights file, on real photos of several sizes, judged by the parity measure
of tests/support/parity.py (an error far below the distance between different photos)."""

from __future__ import annotations

import httpx
import pytest

from tests.support.parity import check_parity
from tests.support.reference import ReferenceImg2Vec


@pytest.fixture(scope="module")
def resnet_reference(resnet50_file):
    return ReferenceImg2Vec("resnet50", resnet50_file)


@pytest.fixture(scope="module")
def mobilenet_reference(mobilenet_v2_file):
    return ReferenceImg2Vec("mobilenet_v2", mobilenet_v2_file)


def test_resnet50_matches_the_reference(resnet_url, resnet_reference, photos):
    check_parity(resnet_url, resnet_reference, photos, 2048)


def test_mobilenet_with_real_weights_matches_the_reference(
    mobilenet_url, mobilenet_reference, photos
):
    check_parity(mobilenet_url, mobilenet_reference, photos, 1280)


def test_models_are_served_side_by_side(resnet_url, mobilenet_url):
    assert httpx.get(resnet_url + "/meta").json()["dim"] == 2048
    assert httpx.get(mobilenet_url + "/meta").json()["dim"] == 1280
