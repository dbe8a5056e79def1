"""TrainConfig / PredictConfig: derived geometry, validation and the JSON round trip."""

import json

import pytest

from carvana.config import PredictConfig, TrainConfig, parse_size, parse_stages


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


def test_a_config_saved_before_a_setting_existed_loads_with_what_it_meant(tmp_path):
    config = TrainConfig(model="mobilenet", image_size=(32, 48), decoder_width=64, val_images=9)
    data = config.to_dict()
    for name in ("decoder_width", "refine", "val_images", "loss", "encoder_scale"):
        del data[name]  # a run folder written before these settings existed
    (tmp_path / "config.json").write_text(json.dumps(data))
    old = TrainConfig.load(tmp_path)
    assert (old.decoder_width, old.refine, old.val_images) == (512, False, 0)
    assert (old.loss, old.encoder_scale) == ("bce_dice", 1)
    config.save(tmp_path)
    assert TrainConfig.load(tmp_path) == config


@pytest.mark.parametrize(
    "image_size, scale, padded",
    [((128, 192), 1, (128, 192)), ((256, 384), 2, (256, 384)), ((160, 240), 2, (192, 256))],
)
def test_padding_makes_room_for_the_encoders_stride_at_its_scale(image_size, scale, padded):
    assert TrainConfig(image_size=image_size, encoder_scale=scale).padded_size == padded


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


# -- one settings path: parse_value, CLI flags, CARVANA_<FIELD> -------------------------------
@pytest.mark.parametrize(
    "name, text, value",
    [
        ("image_size", "160x240", (160, 240)),
        ("augment", "off", False),
        ("augment", "Yes", True),
        ("epochs", " 3 ", 3),
        ("learning_rate", "3e-4", 3e-4),
        ("model", "cnn", "cnn"),
        ("val_cars", "a, b", ("a", "b")),
    ],
)
def test_parse_value_by_field_type(name, text, value):
    from carvana.config import parse_value

    assert parse_value(TrainConfig, name, text) == value


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("epochs", "three", "expected an integer"),
        ("augment", "maybe", "on/off"),
        ("learning_rate", "nan", "finite"),
        ("colour", "red", "unknown setting 'colour'"),
    ],
)
def test_parse_value_rejects_with_the_reason(name, text, message):
    from carvana.config import parse_value

    with pytest.raises(ValueError, match=message):
        parse_value(TrainConfig, name, text)


@pytest.mark.parametrize(
    "cls, kwargs, setting",
    [
        (TrainConfig, {"batch_size": 0}, "batch_size"),
        (TrainConfig, {"epochs": 0}, "epochs"),
        (TrainConfig, {"image_size": (0, 48)}, "image_size"),
        (TrainConfig, {"image_size": (32,)}, "image_size"),
        (TrainConfig, {"val_fraction": 1.0}, "val_fraction"),
        (TrainConfig, {"learning_rate": -1.0}, "learning_rate"),
        (TrainConfig, {"max_cars": -2}, "max_cars"),
        (TrainConfig, {"decoder_width": 4}, "decoder_width"),
        (TrainConfig, {"model": "resnet"}, "model"),
        (TrainConfig, {"loss": "focal"}, "loss"),
        (TrainConfig, {"encoder_scale": 3}, "encoder_scale"),
        (TrainConfig, {"warmup": 1.0}, "warmup"),
        (TrainConfig, {"warmup": -0.1}, "warmup"),
        (TrainConfig, {"encoder_scale": 2, "model": "cnn"}, "encoder_scale"),
        (TrainConfig, {"encoder_scale": 2, "refine": False}, "encoder_scale"),
        (PredictConfig, {"batch_size": 0}, "batch_size"),
        (PredictConfig, {"workers": 0}, "workers"),
        (PredictConfig, {"limit": -1}, "limit"),
        (PredictConfig, {"shard": (4, 4)}, "shard"),
    ],
)
def test_out_of_range_settings_name_the_setting(cls, kwargs, setting):
    with pytest.raises(ValueError, match=rf"^setting {setting} must be"):
        cls(**kwargs)


def test_from_env_parses_with_the_same_parser_and_reports_what_it_set():
    from carvana.flags import from_env

    environ = {"CARVANA_EPOCHS": "2", "CARVANA_IMAGE_SIZE": "32x48", "CARVANA_AUGMENT": "off"}
    config, asked = from_env(TrainConfig(model="cnn"), environ)
    assert (config.model, config.epochs, config.image_size, config.augment) == (
        "cnn",
        2,
        (32, 48),
        False,
    )
    assert asked == {"epochs", "image_size", "augment"}
    predict, asked = from_env(PredictConfig(), {"CARVANA_SHARD": "1/4", "CARVANA_TTA": "on"})
    assert (predict.shard, predict.tta, asked) == ((1, 4), True, {"shard", "tta"})


@pytest.mark.parametrize(
    "environ, message",
    [
        ({"CARVANA_BATCH_SIZE": "0"}, "batch_size must be at least 1"),
        ({"CARVANA_EPOCHS": "x"}, "CARVANA_EPOCHS: expected an integer"),
    ],
)
def test_from_env_rejects_in_one_line(environ, message):
    from carvana.flags import from_env

    with pytest.raises(ValueError, match=message):
        from_env(TrainConfig(), environ)


def test_cli_flags_come_from_the_fields_and_know_what_was_given():
    import argparse

    from carvana.flags import add_arguments, given_settings

    parser = argparse.ArgumentParser()
    add_arguments(parser, TrainConfig)
    args = parser.parse_args(["--lr", "0.01", "--epochs", "20", "--augment", "off"])
    # --epochs 20 is the default value, asked for explicitly: it still counts as given.
    assert given_settings(args, TrainConfig) == {
        "learning_rate": 0.01,
        "epochs": 20,
        "augment": False,
    }
    assert given_settings(parser.parse_args([]), TrainConfig) == {}
    help_text = " ".join(parser.format_help().split())  # argparse wraps lines
    assert "(default: 192x288)" in help_text and "(default: mobilenet)" in help_text
    assert "--val-cars" not in help_text  # train fills the split in itself


def test_bare_boolean_flag_means_on():
    import argparse

    from carvana.flags import add_arguments, given_settings

    parser = argparse.ArgumentParser()
    add_arguments(parser, PredictConfig)
    assert given_settings(parser.parse_args(["--tta"]), PredictConfig) == {"tta": True}
    assert given_settings(parser.parse_args(["--tta", "off"]), PredictConfig) == {"tta": False}


def test_config_json_records_the_library_versions(tmp_path):
    from carvana.config import saved_versions

    TrainConfig(model="cnn").save(tmp_path)
    versions = saved_versions(tmp_path)
    assert set(versions) >= {"python", "tensorflow", "keras", "numpy"}
    assert TrainConfig.load(tmp_path) == TrainConfig(model="cnn")


@pytest.mark.parametrize(
    "text, stages",
    [
        ("", ()),
        ("off", ()),
        ("0.5@0.3", ((0.5, 0.3),)),
        (" 0.5@0.3, 0.67@0.7 ", ((0.5, 0.3), (0.67, 0.7))),
    ],
)
def test_parse_stages(text, stages):
    assert parse_stages(text) == stages


@pytest.mark.parametrize(
    "text, message",
    [
        ("0.5", "must look like SCALE@UNTIL"),
        ("half@0.3", "must look like SCALE@UNTIL"),
        ("1@0.5", "must rise, each within"),  # a stage at image_size itself is not progressive
        ("0.5@1", "must rise, each within"),
        ("0.7@0.3,0.5@0.6", "'0.5@0.6': scales and fractions must rise"),
        ("0.5@0.6,0.7@0.3", "'0.7@0.3': scales and fractions must rise"),
    ],
)
def test_parse_stages_rejects_with_the_stage(text, message):
    with pytest.raises(ValueError, match=message):
        parse_stages(text)
    with pytest.raises(ValueError, match="setting progressive"):
        TrainConfig(progressive=text)


def test_progressive_text_is_checked_and_kept_in_one_spelling():
    config = TrainConfig().with_texts({"progressive": " 0.50@0.3 , 0.667@.7"})
    assert config.progressive == "0.5@0.3,0.667@0.7"
    assert TrainConfig().with_texts({"progressive": "off"}).progressive == ""


def test_stages_scale_image_size_and_end_at_it():
    config = TrainConfig(image_size=(192, 288), progressive="0.5@0.3,0.667@0.7", augment_until=1)
    assert config.stages == (
        ((96, 144), 0.3, True),
        ((128, 192), 0.7, True),
        ((192, 288), 1.0, True),
    )
    assert TrainConfig(progressive="", augment_until=1).stages == (((192, 288), 1.0, True),)


@pytest.mark.parametrize(
    "progressive, augment, until, stages",
    [
        # Augmentation stops where the full size starts.
        ("0.667@0.7", True, 0.7, (((128, 192), 0.7, True), ((192, 288), 1.0, False))),
        # The defaults: it stops within the smaller size.
        (
            "0.667@0.7",
            True,
            0.5,
            (((128, 192), 0.5, True), ((128, 192), 0.7, False), ((192, 288), 1.0, False)),
        ),
        # One size: it stops within it, in a fit of its own.
        ("", True, 0.8, (((192, 288), 0.8, True), ((192, 288), 1.0, False))),
        # Within a smaller size: that size is split, every later stage unaugmented.
        (
            "0.5@0.6",
            True,
            0.4,
            (((96, 144), 0.4, True), ((96, 144), 0.6, False), ((192, 288), 1.0, False)),
        ),
        # Augmentation off: nothing to stop, no extra stage.
        ("0.5@0.6", False, 0.4, (((96, 144), 0.6, False), ((192, 288), 1.0, False))),
    ],
)
def test_augmentation_stops_at_augment_until(progressive, augment, until, stages):
    config = TrainConfig(progressive=progressive, augment=augment, augment_until=until)
    assert config.stages == stages


def test_default_recipe_augments_half_the_schedule_at_two_thirds_size():
    assert TrainConfig().stages == (
        ((128, 192), 0.5, True),
        ((128, 192), 0.7, False),
        ((192, 288), 1.0, False),
    )


@pytest.mark.parametrize("until", [0, -0.1, 1.5, float("nan")])
def test_augment_until_outside_0_1_is_refused(until):
    with pytest.raises(ValueError, match=r"setting augment_until must be in \(0, 1\]"):
        TrainConfig(augment_until=until)


@pytest.mark.parametrize("strength", [-0.5, float("nan"), float("inf")])
def test_augment_strength_below_0_or_not_finite_is_refused(strength):
    with pytest.raises(ValueError, match="setting augment_strength must be 0 or more"):
        TrainConfig(augment_strength=strength)


@pytest.mark.parametrize("momentum", [-0.1, 1.0, 1.5, float("nan")])
def test_ema_outside_0_1_is_refused(momentum):
    with pytest.raises(ValueError, match=r"setting ema must be in \[0, 1\)"):
        TrainConfig(ema=momentum)
