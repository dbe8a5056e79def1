"""Segmentation models built from a TrainConfig: a small self-built CNN and a MobileNetV2 U-Net.

Both take float32 images with values 0..255 at `config.padded_size`, normalize inside (so
inference needs no preprocessing code) and return float32 logits, one channel, at the input
size. The logits stay float32 under mixed precision so the loss is computed at full precision.
"""

from __future__ import annotations

from pathlib import Path

import keras
from keras import layers

from carvana.config import MODEL_FILE, TrainConfig

# The TensorFlow segmentation tutorial's skip connections, finest first (strides 2..32).
MOBILENET_SKIPS = (
    "block_1_expand_relu",
    "block_3_expand_relu",
    "block_6_expand_relu",
    "block_13_expand_relu",
    "block_16_project",
)
CNN_ENCODER = (16, 32, 64, 128)
CNN_DECODER = (128, 64, 32)


def upsample(x, filters: int, name: str, momentum: float):
    """pix2pix upsample step: stride-2 Conv2DTranspose, BatchNormalization, ReLU."""
    x = layers.Conv2DTranspose(
        filters,
        3,
        strides=2,
        padding="same",
        use_bias=False,
        kernel_initializer=keras.initializers.RandomNormal(0.0, 0.02),
        name=f"{name}_deconv",
    )(x)
    x = layers.BatchNormalization(momentum=momentum, name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def _logits(x):
    x = layers.Conv2DTranspose(1, 3, strides=2, padding="same", name="logits_deconv")(x)
    # Mixed precision: the cast to float32 keeps the loss and the saved outputs exact.
    return layers.Activation("linear", dtype="float32", name="logits")(x)


def refine_step(x, image, filters: int, name: str, momentum: float):
    """Upsample 2x, join the (normalized) image at that scale, one 3x3 conv + BN + ReLU."""
    x = upsample(x, filters, f"{name}_up", momentum)
    x = layers.Concatenate(name=f"{name}_skip")([x, image])
    x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(momentum=momentum, name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def refined_logits(x, images: list, filters: int, momentum: float):
    """A full-resolution head: `refine_step`s up to the input's size, each joining the image
    at its scale (coarse to fine in `images`), then 1x1 logits. Without it the finest features
    are at stride 2."""
    # Most of a from-scratch U-Net's error at 128x192 lies within a pixel of the car's edge.
    for i, image in enumerate(images):
        name = "refine" if i == len(images) - 1 else f"refine_{i + 1}"
        x = refine_step(x, image, max(8, filters >> i), name, momentum)
    x = layers.Conv2D(1, 1, name="logits_conv")(x)
    return layers.Activation("linear", dtype="float32", name="logits")(x)


def input_size(config: TrainConfig, any_size: bool) -> tuple:
    """The model's input height and width: config.padded_size, or (None, None) for a model
    that takes any size (multiples of 32 times encoder_scale), as progressive resizing needs."""
    return (None, None) if any_size else config.padded_size


def build_cnn(config: TrainConfig, any_size: bool = False) -> keras.Model:
    """The seed's CNN: 4 conv (kernel 2) + max-pool steps, then pix2pix upsampling, no skips."""
    ph, pw = input_size(config, any_size)
    inputs = keras.Input((ph, pw, 3), name="image")
    x = layers.Rescaling(1.0 / 255, name="rescale")(inputs)
    for i, filters in enumerate(CNN_ENCODER, 1):
        x = layers.Conv2D(filters, 2, padding="same", activation="relu", name=f"conv_{i}")(x)
        x = layers.MaxPooling2D(2, name=f"pool_{i}")(x)
    for i, filters in enumerate(CNN_DECODER, 1):
        x = upsample(x, filters, f"up_{i}", config.bn_momentum)
    return keras.Model(inputs, _logits(x), name="cnn")


def _mobilenet_weights(weights: str):
    if weights == "none":
        return None
    if weights == "imagenet":
        return "imagenet"
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: MobileNetV2 weights file not found (weights must be none, imagenet or a "
            "path to a no-top weights file)"
        )
    return str(path)


def build_mobilenet(config: TrainConfig, any_size: bool = False) -> keras.Model:
    """The tutorial's U-Net: MobileNetV2 encoder, skips at 5 scales, pix2pix decoder.

    The decoder's widths are decoder_width, /2, /4, /8 from coarse to fine (the tutorial's
    512 .. 64 at 512). With config.refine, `refined_logits` (decoder_width / 16 filters, at
    least 8) replaces the tutorial's last stride-2 deconvolution. With encoder_scale s > 1 the
    encoder sees the image average-pooled by s and the head refines through each scale."""
    ph, pw = input_size(config, any_size)
    scale = config.encoder_scale
    weights = _mobilenet_weights(config.weights)
    base = keras.applications.MobileNetV2(
        input_shape=(ph and ph // scale, pw and pw // scale, 3), include_top=False, weights=weights
    )
    encoder = keras.Model(
        base.input, [base.get_layer(n).output for n in MOBILENET_SKIPS], name="encoder"
    )
    if weights is None:
        # From scratch, Keras's 0.999 lets the moving statistics lag the weights so far that
        # inference-mode outputs are useless after a few hundred steps.
        set_bn_momentum(encoder, config.bn_momentum)
    inputs = keras.Input((ph, pw, 3), name="image")
    image = layers.Rescaling(1.0 / 127.5, offset=-1.0, name="rescale")(inputs)
    # The image at every scale the head refines through, coarse to fine.
    images = [image]
    while len(images) < scale.bit_length():
        factor = 2 ** len(images)
        images.insert(0, layers.AveragePooling2D(factor, name=f"image_by_{factor}")(image))
    skips = encoder(images[0])
    x = skips[-1]
    for i, skip in enumerate(reversed(skips[:-1]), 1):
        filters = config.decoder_width >> (i - 1)
        x = upsample(x, filters, f"up_{i}", config.bn_momentum)
        x = layers.Concatenate(name=f"skip_{i}")([x, skip])
    if config.refine:
        width = max(8, config.decoder_width >> 4)
        return keras.Model(
            inputs, refined_logits(x, images, width, config.bn_momentum), name="mobilenet"
        )
    return keras.Model(inputs, _logits(x), name="mobilenet")


BUILDERS = {"cnn": build_cnn, "mobilenet": build_mobilenet}


def build_model(config: TrainConfig, any_size: bool = False) -> keras.Model:
    """The model named by config.model, with input (padded_h, padded_w, 3) (any size with
    `any_size`) and logits output."""
    if config.model not in BUILDERS:
        raise ValueError(f"unknown model {config.model!r}; choose one of {', '.join(BUILDERS)}")
    return BUILDERS[config.model](config, any_size)


def iter_layers(model: keras.Model):
    """Every layer of a model, descending into nested models."""
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from iter_layers(layer)


def set_bn_momentum(model: keras.Model, momentum: float) -> int:
    """Set the momentum of every BatchNormalization layer; returns how many were changed."""
    changed = 0
    for layer in iter_layers(model):
        if isinstance(layer, layers.BatchNormalization):
            layer.momentum = momentum
            changed += 1
    return changed


def count_params(model: keras.Model) -> int:
    """Number of weights (trainable and not) of a model."""
    return int(model.count_params())


def load_model(run_dir: str | Path) -> keras.Model:
    """The trained model of a run folder for inference: rebuilt from config.json, weights loaded.

    Rebuilding rather than deserializing model.keras's own config is what lets a run folder
    load across Keras versions: a newer Keras writes layer config keys an older one rejects
    (3.15's `input_axes`), while the weights' layout in the file stays the same. A .keras file
    with no config.json beside it is deserialized by Keras itself."""
    import warnings

    from carvana.config import CONFIG_FILE, saved_versions

    path = Path(run_dir)
    if path.is_dir():
        path = path / MODEL_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no trained model; is this a run folder made by train?")
    if not (path.parent / CONFIG_FILE).is_file():
        return keras.models.load_model(path, compile=False)
    # The weights come from the file; never download or read the initial ones again.
    model = build_model(TrainConfig.load(path.parent).replace(weights="none"))
    try:
        # Weights that do not fit raise after a warning per skipped object: keep the one line.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model.load_weights(path)
    except (ValueError, KeyError, OSError) as err:
        saved = saved_versions(path.parent).get("keras")
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        remedy = f"pip install keras=={saved} and the kit that trained it" if saved else "the kit"
        raise ValueError(
            f"{path}: the weights (saved with Keras {saved or 'unrecorded'}) do not fit the model "
            f"this kit builds from config.json with Keras {keras.__version__} ({reason}); load "
            f"it with {remedy}, or train the run again"
        ) from None
    for warning in caught:
        warnings.warn(warning.message, warning.category, stacklevel=2)
    return model
