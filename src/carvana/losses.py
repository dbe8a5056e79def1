"""Losses on logits, per image: binary cross-entropy plus soft Dice, or plus the Lovasz hinge.

Registered as `carvana>bce_dice_loss` and `carvana>bce_lovasz_loss`, the names a compiled Keras
file would reference. `LOSSES` maps TrainConfig.loss to the function.
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


def _bce(y_true, logits):
    return tf.reduce_mean(
        tf.nn.sigmoid_cross_entropy_with_logits(labels=y_true, logits=logits), axis=(1, 2, 3)
    )


def lovasz_hinge(y_true, logits):
    """Per-image Lovasz hinge (Berman et al. 2018), a convex surrogate of 1 - IoU, shape (batch,).

    The hinge errors 1 - logit * sign are sorted, largest first; each error is weighted by how
    much it raises the Jaccard loss when the pixels before it are already wrong. The hinge needs
    a sign per pixel: soft targets (car shares) count as car from 0.5."""
    batch = tf.shape(logits)[0]
    y_true = tf.reshape(tf.cast(tf.cast(y_true, tf.float32) >= 0.5, tf.float32), (batch, -1))
    logits = tf.reshape(tf.cast(logits, tf.float32), (batch, -1))
    errors = 1.0 - logits * (2.0 * y_true - 1.0)
    errors, order = tf.math.top_k(errors, k=tf.shape(errors)[1], sorted=True)
    truth = tf.gather(y_true, order, batch_dims=1)
    # Jaccard loss of predicting the first k sorted pixels as wrong, for every k; its steps
    # are the weights. The union is at least 1 from the first pixel on, so no division by 0.
    cars = tf.reduce_sum(truth, axis=1, keepdims=True)
    intersection = cars - tf.cumsum(truth, axis=1)
    union = cars + tf.cumsum(1.0 - truth, axis=1)
    jaccard = 1.0 - intersection / union
    steps = tf.concat([jaccard[:, :1], jaccard[:, 1:] - jaccard[:, :-1]], axis=1)
    # The weights are constants of the sort, as in the paper: no gradient through the order.
    return tf.reduce_sum(tf.nn.relu(errors) * tf.stop_gradient(steps), axis=1)


@keras.saving.register_keras_serializable(package="carvana")
def bce_dice_loss(y_true, logits):
    """Binary cross-entropy on logits plus (1 - soft Dice), per image."""
    y_true = tf.cast(y_true, tf.float32)
    logits = tf.cast(logits, tf.float32)
    return _bce(y_true, logits) + 1.0 - soft_dice(y_true, logits)


@keras.saving.register_keras_serializable(package="carvana")
def bce_lovasz_loss(y_true, logits):
    """Binary cross-entropy on logits plus the Lovasz hinge, per image."""
    y_true = tf.cast(y_true, tf.float32)
    logits = tf.cast(logits, tf.float32)
    return _bce(y_true, logits) + lovasz_hinge(y_true, logits)


LOSSES = {"bce_dice": bce_dice_loss, "bce_lovasz": bce_lovasz_loss}
