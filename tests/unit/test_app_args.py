"""The builder's settings: YAML args, IMG2VEC_* overrides, validated once at build time."""

from __future__ import annotations

import pytest

from deployments.app import resolve_args
from img2vec.errors import ConfigError, WeightsError


def test_defaults_are_the_weaviate_compatible_model_downloaded():
    args = resolve_args(None, {})
    assert (args.model, args.weights, args.device) == ("resnet50", "download", "auto")
    assert args.exif_transpose is False


def test_environment_overrides_yaml_args(tmp_path):
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"x")
    env = {
        "IMG2VEC_MODEL": "mobilenet_v2",
        "IMG2VEC_WEIGHTS": str(weights),
        "IMG2VEC_DEVICE": "cpu",
        "IMG2VEC_MAX_IMAGE_PIXELS": "1000",
        "IMG2VEC_EXIF_TRANSPOSE": "true",
        "IMG2VEC_TORCH_THREADS": "  ",  # blank means unset
        "UNRELATED": "1",
    }
    args = resolve_args({"model": "resnet50", "max_body_bytes": 99}, env)
    assert args.model == "mobilenet_v2" and args.weights == str(weights)
    assert args.device == "cpu" and args.max_image_pixels == 1000
    assert args.exif_transpose is True
    assert args.max_body_bytes == 99  # from the YAML, not overridden
    assert args.torch_threads is None


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"IMG2VEC_DEVICE": "tpu"}, "device"),
        ({"IMG2VEC_MAX_BODY_BYTES": "lots"}, "max_body_bytes"),
        ({"IMG2VEC_TORCH_THREADS": "0"}, "torch_threads"),
        ({"IMG2VEC_MAX_INFLIGHT_BYTES": "1000"}, "must be at least max_body_bytes"),
    ],
)
def test_bad_values_are_refused_with_the_setting_named(env, fragment):
    with pytest.raises(ConfigError, match=fragment):
        resolve_args(None, env)


def test_unknown_yaml_args_are_refused():
    with pytest.raises(ConfigError, match="weigths"):
        resolve_args({"weigths": "random"}, {})


def test_unknown_model_and_missing_weights_fail_at_build(tmp_path):
    with pytest.raises(WeightsError, match="Unknown model 'vgg'"):
        resolve_args(None, {"IMG2VEC_MODEL": "vgg"})
    with pytest.raises(WeightsError, match="not a file"):
        resolve_args(None, {"IMG2VEC_WEIGHTS": str(tmp_path / "missing.pth")})
