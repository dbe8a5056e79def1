"""Metrics on logits: the competition's Dice of thresholded masks, mean over images.

Registered as `carvana>DiceMetric`, the name a compiled Keras file would reference.
"""

from __future__ import annotations

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="carvana")
class DiceMetric(keras.metrics.Metric):
    """Mean per-image Dice of thresholded predictions (logit > 0, i.e. probability > 0.5),
    the competition's measure at the model's resolution; 1 when both masks are empty."""

    def __init__(self, name="dice", **kwargs):
        super().__init__(name=name, **kwargs)
        self.total = self.add_variable(shape=(), initializer="zeros", name="total")
        self.count = self.add_variable(shape=(), initializer="zeros", name="count")

    def update_state(self, y_true, y_pred, sample_weight=None):
        pred = tf.cast(tf.cast(y_pred, tf.float32) > 0, tf.float32)
        # Soft targets (car shares) are scored as the masks they stand for: share >= 0.5.
        y_true = tf.cast(tf.cast(y_true, tf.float32) >= 0.5, tf.float32)
        inter = tf.reduce_sum(pred * y_true, axis=(1, 2, 3))
        total = tf.reduce_sum(pred, axis=(1, 2, 3)) + tf.reduce_sum(y_true, axis=(1, 2, 3))
        dice = tf.where(total > 0, 2 * inter / tf.maximum(total, 1.0), 1.0)
        self.total.assign_add(tf.reduce_sum(dice))
        self.count.assign_add(tf.cast(tf.shape(dice)[0], tf.float32))

    def result(self):
        return self.total / tf.maximum(self.count, 1.0)

    def reset_state(self):
        self.total.assign(0.0)
        self.count.assign(0.0)


@keras.saving.register_keras_serializable(package="carvana")
class PixelAccuracy(keras.metrics.BinaryAccuracy):
    """Share of pixels whose prediction (logit > 0) agrees with the mask; soft targets (car
    shares) count as the masks they stand for (share >= 0.5)."""

    def __init__(self, name="accuracy", threshold=0.0, **kwargs):
        super().__init__(name=name, threshold=threshold, **kwargs)

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true = tf.cast(tf.cast(y_true, tf.float32) >= 0.5, tf.float32)
        return super().update_state(y_true, y_pred, sample_weight)
