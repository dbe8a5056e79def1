"""Models: output geometry, normalization inside, BN momentum, names, save/load."""

import dataclasses

import keras
import numpy as np
import pytest

from carvana.config import TrainConfig
from carvana.models import build_model, count_params, iter_layers, load_model


@pytest.mark.parametrize(
    "model, image_size",
    [
        ("cnn", (32, 48)),
        ("cnn", (64, 64)),
        ("cnn", (100, 150)),
        ("mobilenet", (32, 48)),
        ("mobilenet", (96, 130)),
    ],
)
def test_logits_have_the_input_size(model, image_size):
    config = TrainConfig(model=model, image_size=image_size)
    ph, pw = config.padded_size
    net = build_model(config)
    out = net(np.zeros((2, ph, pw, 3), np.float32), training=False)
    assert tuple(out.shape) == (2, ph, pw, 1)
    assert keras.backend.standardize_dtype(out.dtype) == "float32"
    assert net.name == model


def test_unknown_model_lists_the_choices():
    with pytest.raises(ValueError, match="cnn, mobilenet"):
        TrainConfig(model="resnet")
    config = TrainConfig(model="cnn")
    object.__setattr__(config, "model", "resnet")  # bypass the config's own check
    with pytest.raises(ValueError, match="unknown model 'resnet'; choose one of cnn, mobilenet"):
        build_model(config)


def test_missing_weights_file_is_named():
    config = TrainConfig(model="mobilenet", image_size=(32, 48), weights="/nonexistent/w.h5")
    with pytest.raises(FileNotFoundError, match="/nonexistent/w.h5"):
        build_model(config)


def test_bn_momentum_applied_everywhere_from_scratch():
    config = TrainConfig(model="mobilenet", image_size=(32, 48), bn_momentum=0.8)
    bns = [
        layer
        for layer in iter_layers(build_model(config))
        if isinstance(layer, keras.layers.BatchNormalization)
    ]
    assert len(bns) > 50  # MobileNetV2's 52 plus the decoder's 4
    assert {bn.momentum for bn in bns} == {0.8}
    cnn = build_model(dataclasses.replace(config, model="cnn"))
    bns = [
        layer for layer in iter_layers(cnn) if isinstance(layer, keras.layers.BatchNormalization)
    ]
    assert len(bns) == 3 and {bn.momentum for bn in bns} == {0.8}


def test_models_normalize_inside_with_named_layers():
    mob = build_model(TrainConfig(model="mobilenet", image_size=(32, 48)))
    cnn = build_model(TrainConfig(model="cnn", image_size=(32, 48)))
    x = np.array([[0.0, 127.5, 255.0]], np.float32)
    np.testing.assert_allclose(mob.get_layer("rescale")(x), [[-1.0, 0.0, 1.0]], atol=1e-6)
    np.testing.assert_allclose(cnn.get_layer("rescale")(x), [[0.0, 0.5, 1.0]], atol=1e-6)
    names = {layer.name for layer in mob.layers}
    assert {"image", "rescale", "encoder", "up_1_deconv", "skip_4", "logits"} <= names
    # The tutorial's skips: block_1/3/6/13_expand_relu and block_16_project, strides 2..32.
    shapes = [tuple(t.shape[1:]) for t in mob.get_layer("encoder").outputs]
    assert shapes == [(16, 32, 96), (8, 16, 144), (4, 8, 192), (2, 4, 576), (1, 2, 320)]
    assert {"conv_1", "pool_4", "up_3_bn", "logits"} <= {layer.name for layer in cnn.layers}


@pytest.mark.parametrize("width, widths", [(512, [512, 256, 128, 64]), (64, [64, 32, 16, 8])])
def test_decoder_width_halves_at_each_finer_step(width, widths):
    config = TrainConfig(model="mobilenet", image_size=(32, 48), decoder_width=width)
    net = build_model(config)
    assert [net.get_layer(f"up_{i}_deconv").filters for i in range(1, 5)] == widths
    assert tuple(net.output_shape) == (None, 32, 64, 1)


@pytest.mark.parametrize("refine, head", [(True, "refine_conv"), (False, "logits_deconv")])
def test_refine_puts_a_full_resolution_head_on_the_u_net(refine, head):
    config = TrainConfig(model="mobilenet", image_size=(32, 48), decoder_width=256, refine=refine)
    net = build_model(config)
    names = {layer.name for layer in net.layers}
    assert head in names and ("refine_skip" in names) == refine
    if refine:
        # The image itself (3 channels) joins 16 upsampled features at the input's size.
        assert tuple(net.get_layer("refine_skip").output.shape) == (None, 32, 64, 19)
    out = net(np.zeros((1, 32, 64, 3), np.float32), training=False)
    assert tuple(out.shape) == (1, 32, 64, 1)


def test_encoder_scale_refines_through_each_scale_to_the_input_size():
    config = TrainConfig(image_size=(64, 96), decoder_width=256, encoder_scale=4)
    net = build_model(config)
    # Padded to multiples of 32 * 4: 128x128. The encoder sees the image pooled by 4; the head
    # doubles three times (16, 8, 8 filters), joining the image at 1/4, 1/2 and full size.
    assert config.padded_size == (128, 128)
    assert tuple(net.get_layer("encoder").input.shape) == (None, 32, 32, 3)
    skips = [net.get_layer(n).output.shape for n in ("refine_1_skip", "refine_2_skip")]
    assert [tuple(s) for s in skips] == [(None, 32, 32, 19), (None, 64, 64, 11)]
    assert tuple(net.get_layer("refine_skip").output.shape) == (None, 128, 128, 11)
    out = net(np.zeros((1, 128, 128, 3), np.float32), training=False)
    assert tuple(out.shape) == (1, 128, 128, 1)


@pytest.mark.parametrize("model", ["cnn", "mobilenet"])
def test_load_model_round_trip(tmp_path, model):
    config = TrainConfig(model=model, image_size=(32, 48))
    net = build_model(config)
    x = np.random.default_rng(0).uniform(0, 255, (1, 32, 64, 3)).astype(np.float32)
    net.save(tmp_path / "model.keras")
    again = load_model(tmp_path)
    np.testing.assert_allclose(again(x, training=False), net(x, training=False), atol=1e-5)
    assert count_params(again) == count_params(net) == net.count_params()
    with pytest.raises(FileNotFoundError, match="no trained model"):
        load_model(tmp_path / "elsewhere")
