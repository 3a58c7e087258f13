"""The builder's settings: YAML args, IMG2VEC_* overrides, validated once at build time."""

from __future__ import annotations

import logging

import pytest

from deployments.app import ClipArgs, _merge, resolve_args
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


def test_precision_and_engine_are_named_options():
    args = resolve_args(None, {"IMG2VEC_DTYPE": "tf32", "IMG2VEC_ENGINE": "eager"})
    assert (args.dtype, args.engine) == ("tf32", "eager")
    # The defaults: the vectors of the container replaced, on the device's default engine.
    assert (resolve_args(None, {}).dtype, resolve_args(None, {}).engine) == ("float32", "auto")
    fast = resolve_args(None, {"IMG2VEC_DTYPE": "bfloat16", "IMG2VEC_ENGINE": "openvino"})
    assert (fast.dtype, fast.engine) == ("bfloat16", "openvino")  # the CPU fast mode
    with pytest.raises(ConfigError, match="dtype"):
        resolve_args(None, {"IMG2VEC_DTYPE": "int8"})


def test_the_engines_old_name_graph_still_works_with_a_warning(caplog):
    """`graph` was the engine setting's name: a YAML or an environment written for it keeps
    its meaning, says so at build, and the environment still overrides the YAML."""
    with caplog.at_level(logging.WARNING, logger="img2vec.build"):
        assert resolve_args({"graph": "eager"}, {}).engine == "eager"
        assert resolve_args(None, {"IMG2VEC_GRAPH": "torchscript"}).engine == "torchscript"
    assert caplog.text.count("now called engine (IMG2VEC_ENGINE)") == 2
    assert resolve_args({"graph": "eager"}, {"IMG2VEC_ENGINE": "openvino"}).engine == "openvino"
    assert resolve_args({"engine": "eager"}, {"IMG2VEC_GRAPH": "openvino"}).engine == "openvino"
    assert _merge(ClipArgs, {"weights": "random", "graph": "eager"}, {}).engine == "eager"
    with pytest.raises(ConfigError, match="both engine and graph"):
        resolve_args({"engine": "eager", "graph": "openvino"}, {})
    with pytest.raises(ConfigError, match="both engine and graph"):
        resolve_args(None, {"IMG2VEC_ENGINE": "eager", "IMG2VEC_GRAPH": "openvino"})


def test_download_happens_once_at_build_and_fails_fast_offline(monkeypatch, tmp_path):
    """`weights: download` is fetched by the builder, before any replica exists; where
    nothing answers, the build stops at once with the offline instructions."""
    import dataclasses
    import socket

    from deployments.app import fetch_weights
    from img2vec.models import weights

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))  # bound, not listening: refused
        url = f"http://127.0.0.1:{s.getsockname()[1]}/mobilenet_v2-b0353104.pth"
        spec = dataclasses.replace(weights.SPECS["mobilenet_v2"], url=url)
        monkeypatch.setitem(weights.SPECS, "mobilenet_v2", spec)
        args = resolve_args(None, {"IMG2VEC_MODEL": "mobilenet_v2"})
        with pytest.raises(WeightsError, match="may be offline"):
            fetch_weights(args)
    fetch_weights(resolve_args(None, {"IMG2VEC_WEIGHTS": "random"}))  # nothing to fetch


def test_the_build_says_what_it_does_and_why_it_cannot_start_on_stderr(
    monkeypatch, capfd, tmp_path
):
    """`serve run` shows the build task's stderr, not Serve's log files: the settings, the
    download and the reason for a failed start must reach the console."""
    import dataclasses
    import socket

    from deployments.app import AppArgs, build_app
    from img2vec.models import weights

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/mobilenet_v2-b0353104.pth"
        spec = dataclasses.replace(weights.SPECS["mobilenet_v2"], url=url)
        monkeypatch.setitem(weights.SPECS, "mobilenet_v2", spec)
        monkeypatch.setenv("TORCH_HOME", str(tmp_path))
        monkeypatch.setenv("IMG2VEC_MODEL", "mobilenet_v2")
        with pytest.raises(WeightsError):
            build_app(AppArgs())
    err = capfd.readouterr().err
    assert "img2vec: building with model='mobilenet_v2'" in err
    assert "img2vec: downloading mobilenet_v2 weights" in err
    assert "img2vec: cannot start: Could not download" in err
