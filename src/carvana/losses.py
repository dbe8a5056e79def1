"""Losses on logits: binary cross-entropy plus soft Dice, per image.

Registered as `carvana>bce_dice_loss`, the name a compiled Keras file would reference.
"""

from __future__ import annotations

import keras
import tensorflow as tf


def soft_dice(y_true, logits, smooth: float = 1.0):
    """Per-image soft Dice of sigmoid(logits) against 0/1 masks, shape (batch,)."""
    prob = tf.sigmoid(tf.cast(logits, tf.float32))
    y_true = tf.cast(y_true, tf.float32)
    inter = tf.reduce_sum(prob * y_true, axis=(1, 2, 3))
    total = tf.reduce_sum(prob, axis=(1, 2, 3)) + tf.reduce_sum(y_true, axis=(1, 2, 3))
    return (2 * inter + smooth) / (total + smooth)


@keras.saving.register_keras_serializable(package="carvana")
def bce_dice_loss(y_true, logits):
    """Binary cross-entropy on logits plus (1 - soft Dice), per image."""
    y_true = tf.cast(y_true, tf.float32)
    logits = tf.cast(logits, tf.float32)
    bce = tf.reduce_mean(
        tf.nn.sigmoid_cross_entropy_with_logits(labels=y_true, logits=logits), axis=(1, 2, 3)
    )
    return bce + 1.0 - soft_dice(y_true, logits)
