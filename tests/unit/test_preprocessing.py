"""The preprocessing numerics, pinned against torchvision's own transforms: the resize (PIL,
in the ingress) and the normalization (torch, on the model's device)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from img2vec.inputs.preprocessing import CROP_224, PRESETS, STRETCH_224, get_preset
from img2vec.models.engines import normalize

REFERENCE = T.Compose(
    [
        T.Resize((224, 224)),
        T.ToTensor(),
        T.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
    ]
)


def test_the_weaviate_compatible_preset_comes_first():
    assert next(iter(PRESETS)) == "stretch224"
    assert STRETCH_224.output_size == (224, 224)


def test_stretch_resize_matches_torchvision_resize_exactly(photos):
    for img in photos.values():
        ours = STRETCH_224.to_array(img)
        ref = np.asarray(T.Resize((224, 224))(img))
        assert ours.shape == (224, 224, 3) and ours.dtype == np.uint8
        assert np.array_equal(ours, ref)


def test_stretch_does_not_crop():
    # A left half black, right half white image keeps both halves after the stretch.
    img = Image.new("RGB", (1000, 100), (0, 0, 0))
    img.paste((255, 255, 255), (500, 0, 1000, 100))
    arr = STRETCH_224.to_array(img)
    assert arr[:, :100].max() == 0 and arr[:, -100:].min() == 255


def test_normalize_is_bit_identical_to_totensor_plus_normalize(photos):
    batch = np.stack([STRETCH_224.to_array(img) for img in photos.values()])
    mean = torch.tensor(STRETCH_224.mean).view(1, 3, 1, 1)
    std = torch.tensor(STRETCH_224.std).view(1, 3, 1, 1)
    ours = normalize(torch.from_numpy(batch), mean, std)
    ref = torch.stack([REFERENCE(img) for img in photos.values()])
    assert ours.shape == ref.shape == (len(photos), 3, 224, 224)
    assert torch.equal(ours, ref)
    assert ours.is_contiguous(memory_format=torch.channels_last)


def test_native_presets_match_the_torchvision_weights_transforms(photos):
    """Each spec's `:native` preset is pixel-identical to its torchvision weights' own
    transform (resize, interpolation, centre crop)."""
    import torchvision

    from img2vec.models.weights import SPECS

    for spec in SPECS.values():
        preset = get_preset(spec.native_preprocess)
        tv = torchvision.models.get_weight(spec.weights_tag).transforms()
        ref_tf = T.Compose(
            [T.Resize(tv.resize_size, interpolation=tv.interpolation), T.CenterCrop(tv.crop_size)]
        )
        for img in photos.values():
            assert np.array_equal(preset.to_array(img), np.asarray(ref_tf(img))), spec.name
        assert list(tv.mean) == list(preset.mean) and list(tv.std) == list(preset.std)
    assert CROP_224.name == "resize256-crop224"


def test_non_rgb_input_is_converted():
    gray = Image.new("L", (50, 40), 128)
    assert STRETCH_224.to_array(gray).shape == (224, 224, 3)


def test_normalize_refuses_wrong_input():
    mean = std = torch.ones(1, 3, 1, 1)
    with pytest.raises(ValueError, match="uint8"):
        normalize(torch.zeros(1, 224, 224, 3, dtype=torch.float32), mean, std)
    with pytest.raises(ValueError, match="uint8"):
        normalize(torch.zeros(224, 224, 3, dtype=torch.uint8), mean, std)


def test_unknown_preset_is_a_clear_error():
    assert get_preset("stretch224") is STRETCH_224
    with pytest.raises(ValueError, match="known: stretch224"):
        get_preset("nope")
