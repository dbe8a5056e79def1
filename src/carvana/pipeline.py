"""tf.data input: DCT-scaled JPEG decode, aspect-keeping resize, padding to the model size.

`decode_image` and `crop_to_image` define the geometry shared by training, evaluation and
prediction: an image is decoded at 1/k scale, resized to `config.image_size`, and padded at
the bottom/right to `config.padded_size`; predictions are cropped back before upscaling.
"""

from __future__ import annotations

import tensorflow as tf

from carvana.config import TrainConfig


def decode_image(jpeg: tf.Tensor, config: TrainConfig) -> tf.Tensor:
    """JPEG bytes -> uint8 (padded_h, padded_w, 3) image at the model's input geometry."""
    h, w = config.image_size
    ph, pw = config.padded_size
    image = tf.io.decode_jpeg(jpeg, channels=3, ratio=config.jpeg_ratio)
    shape = tf.shape(image)
    image = tf.cond(
        tf.logical_and(tf.equal(shape[0], h), tf.equal(shape[1], w)),
        lambda: image,
        lambda: tf.cast(
            tf.round(tf.clip_by_value(tf.image.resize(image, (h, w), antialias=True), 0, 255)),
            tf.uint8,
        ),
    )
    image = tf.ensure_shape(image, (h, w, 3))
    return tf.image.pad_to_bounding_box(image, 0, 0, ph, pw)


def crop_to_image(padded: tf.Tensor, config: TrainConfig) -> tf.Tensor:
    """Drop the padding of a (batch, padded_h, padded_w, ...) tensor or array."""
    h, w = config.image_size
    return padded[:, :h, :w]
