"""TrainConfig / PredictConfig: derived geometry, validation and the JSON round trip."""

import json

import pytest

from carvana.config import PredictConfig, TrainConfig, parse_size


@pytest.mark.parametrize(
    "image_size, padded",
    [((160, 240), (160, 256)), ((32, 48), (32, 64)), ((320, 480), (320, 480)), ((1, 33), (32, 64))],
)
def test_padded_size_rounds_up_to_multiples_of_32(image_size, padded):
    assert TrainConfig(image_size=image_size).padded_size == padded


@pytest.mark.parametrize(
    "original, image_size, ratio",
    [
        ((1280, 1918), (160, 240), 8),  # libjpeg gives ceil(1918 / 8) = 240 columns
        ((1280, 1918), (320, 480), 4),
        ((1280, 1918), (161, 240), 4),
        ((1280, 1918), (1280, 1918), 1),
        ((128, 192), (32, 48), 4),
    ],
)
def test_jpeg_ratio_is_the_largest_scale_still_at_least_the_target(original, image_size, ratio):
    assert TrainConfig(image_size=image_size, original_size=original).jpeg_ratio == ratio


def test_unknown_model_lists_the_choices():
    with pytest.raises(ValueError, match="cnn, mobilenet"):
        TrainConfig(model="resnet")


def test_round_trip_through_a_run_folder(tmp_path):
    config = TrainConfig(model="cnn", image_size=(32, 48), val_cars=("abc", "def"), epochs=3)
    config.save(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["val_cars"] == ["abc", "def"]
    assert TrainConfig.load(tmp_path) == config


def test_load_names_the_file_and_the_bad_key(tmp_path):
    (tmp_path / "config.json").write_text('{"model": "cnn", "colour": 3}')
    with pytest.raises(ValueError, match=r"config.json.*colour"):
        TrainConfig.load(tmp_path)
    with pytest.raises(FileNotFoundError, match="run folder"):
        TrainConfig.load(tmp_path / "missing")


@pytest.mark.parametrize("text, size", [("160x240", (160, 240)), ("32X48", (32, 48))])
def test_parse_size(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["160", "ax3", "0x5", "1x2x3"])
def test_parse_size_rejects(text):
    with pytest.raises(ValueError):
        parse_size(text)


@pytest.mark.parametrize("kwargs", [{"shard": (2, 2)}, {"shard": (0, 0)}, {"threshold": 1.0}])
def test_predict_config_rejects(kwargs):
    with pytest.raises(ValueError):
        PredictConfig(**kwargs)
