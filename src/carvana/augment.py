"""KerasCV augmentation of {"images", "segmentation_masks"} batches for training.

Two KerasCV layers (subclasses of keras_cv's vectorized augmentation base, so they take the
same dictionaries as its stock layers) do the work in one pass each:

- `RandomGeometry`: horizontal flip, shift, zoom and rotation composed into one affine
  transform per image, applied to the image (bilinear) and to its mask (nearest, so a 0/1
  mask stays binary; bilinear for a mask of car shares), so the two stay aligned; the uncovered border is filled with 0 (black image,
  background mask), like the padding. The resampling is OpenCV's `warpAffine` (SIMD, releases
  the GIL): on 2 CPU cores it is ~3x cheaper than TensorFlow's ImageProjectiveTransformV3 on
  the same transforms, and the input shares those cores with the model (with a GPU, it is the
  CPU that feeds it).
- `RandomColor`: brightness, contrast and hue of the image only, as one 3x3 colour matrix plus
  offset per image (hue is a rotation about the grey axis, which keeps greys grey), applied
  with OpenCV's `transform`.

Why not chain keras_cv's RandomFlip, RandomTranslation, RandomZoom, RandomRotation,
RandomBrightness, RandomContrast and RandomHue: on 2 CPU cores that chain delivers ~30-60
images/s at 160x256 (each geometric layer resamples the image and mask separately, and
RandomHue goes through HSV), far below what keeps a GPU busy; `stock_augmenter` builds it
anyway for comparison (benchmarks/input_pipeline.py prints both).
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import tensorflow as tf


def _keras_cv_failed(err: Exception) -> ImportError:
    from carvana.runtime import tested_range, versions

    found = versions()
    return ImportError(
        f"keras-cv could not be imported ({type(err).__name__}: {err}); installed: Keras "
        f"{found['Keras'] or 'none'}, keras-cv {found['keras-cv'] or 'none'}; augmentation is "
        f"tested with {tested_range('keras')} and {tested_range('keras-cv')}; install those or "
        "train with augmentation off"
    )


# keras-cv 0.9 imports private Keras modules, so a newer Keras breaks it inside its own import.
try:
    import keras_cv
    from keras_cv.layers import VectorizedBaseImageAugmentationLayer
except (ImportError, AttributeError) as err:
    raise _keras_cv_failed(err) from err

# The augmentation's ranges at strength 1 (config.augment_strength scales them; flips stay).
GEOMETRY_RANGES = {"shift": 0.05, "zoom": 0.1, "degrees": 5.0}
COLOUR_RANGES = {"brightness": 0.1, "contrast": 0.15, "hue": 0.05}
GREY_AXIS_CROSS = tf.constant([[0.0, -1.0, 1.0], [1.0, 0.0, -1.0], [-1.0, 1.0, 0.0]]) / math.sqrt(3)


def warp_affine(images: np.ndarray, transforms: np.ndarray, interpolation) -> np.ndarray:
    """Resample each (h, w, c) image of a batch by its transform (output pixel -> input pixel,
    TensorFlow's 8-number projective form with a zero last row), filling outside with 0."""
    out = np.empty_like(images)
    h, w = images.shape[1:3]
    flags = int(interpolation) | cv2.WARP_INVERSE_MAP
    for i, (image, transform) in enumerate(zip(images, transforms, strict=True)):
        matrix = np.asarray(transform[:6], np.float64).reshape(2, 3)
        warped = cv2.warpAffine(image, matrix, (w, h), flags=flags, borderValue=0)
        out[i] = warped.reshape(out.shape[1:])  # OpenCV drops a channel axis of 1
    return out


def color_affine(images: np.ndarray, affines: np.ndarray) -> np.ndarray:
    """Map every pixel's colour of each image by its (3, 4) matrix (last column the offset),
    clipped to 0..255 (OpenCV's transform: ~5x cheaper on CPU than a TensorFlow einsum)."""
    out = np.empty_like(images)
    for i, (image, affine) in enumerate(zip(images, affines, strict=True)):
        cv2.transform(image, affine.astype(images.dtype), dst=out[i])
    return np.clip(out, 0, 255, out=out)


class RandomGeometry(VectorizedBaseImageAugmentationLayer):
    """Random horizontal flip, shift, zoom and rotation of images and masks, in one transform.

    shift: largest shift as a fraction of height/width; zoom: scale drawn in [1-zoom, 1+zoom];
    degrees: largest rotation either way; flip: probability of a horizontal flip; soft_masks:
    masks hold car shares 0..1 (resampled bilinear) rather than 0/1 (nearest)."""

    def __init__(
        self, flip=0.5, shift=0.05, zoom=0.1, degrees=5.0, soft_masks=False, seed=None, **kwargs
    ):
        super().__init__(seed=seed, **kwargs)
        self.flip, self.shift, self.zoom, self.degrees, self.seed = flip, shift, zoom, degrees, seed
        self.soft_masks = soft_masks

    def get_random_transformation_batch(self, batch_size, images=None, **kwargs):
        """Per-image affine transforms (output pixel -> input pixel) in TensorFlow's
        projective form, shape (b, 8)."""
        uniform = self._random_generator.uniform
        shape = tf.shape(images)
        h, w = tf.cast(shape[1], tf.float32), tf.cast(shape[2], tf.float32)
        f = tf.where(uniform((batch_size,)) < self.flip, -1.0, 1.0)
        s = uniform((batch_size,), 1.0 - self.zoom, 1.0 + self.zoom)
        theta = uniform((batch_size,), -self.degrees, self.degrees) * (math.pi / 180)
        tx = uniform((batch_size,), -self.shift, self.shift) * w
        ty = uniform((batch_size,), -self.shift, self.shift) * h
        cx, cy = (w - 1) / 2, (h - 1) / 2
        cos, sin = tf.cos(theta) / s, tf.sin(theta) / s
        # input = C + flip . rotate(-theta) / s . (output - C - t)
        a0, a1, b0, b1 = f * cos, f * sin, -sin, cos
        a2 = cx - a0 * (cx + tx) - a1 * (cy + ty)
        b2 = cy - b0 * (cx + tx) - b1 * (cy + ty)
        zeros = tf.zeros_like(a0)
        return tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)

    def _transform(self, images, transforms, interpolation):
        out = tf.numpy_function(
            warp_affine, [images, transforms, interpolation], images.dtype, stateful=False
        )
        out.set_shape(images.shape)
        return out

    def augment_images(self, images, transformations, **kwargs):
        return self._transform(images, transformations, cv2.INTER_LINEAR)

    def augment_segmentation_masks(self, segmentation_masks, transformations, **kwargs):
        interpolation = cv2.INTER_LINEAR if self.soft_masks else cv2.INTER_NEAREST
        return self._transform(segmentation_masks, transformations, interpolation)

    def augment_labels(self, labels, transformations, **kwargs):
        return labels

    def get_config(self):
        return {
            **super().get_config(),
            "flip": self.flip,
            "shift": self.shift,
            "zoom": self.zoom,
            "degrees": self.degrees,
            "soft_masks": self.soft_masks,
            "seed": self.seed,
        }


class RandomColor(VectorizedBaseImageAugmentationLayer):
    """Random brightness, contrast and hue of images with values 0..255; masks pass unchanged.

    brightness: largest offset as a fraction of 255; contrast: factor drawn in
    [1-contrast, 1+contrast] about the image's mean; hue: largest rotation of the colour
    wheel as a fraction of a full turn."""

    def __init__(self, brightness=0.1, contrast=0.15, hue=0.05, seed=None, **kwargs):
        super().__init__(seed=seed, **kwargs)
        self.brightness, self.contrast, self.hue, self.seed = brightness, contrast, hue, seed

    def get_random_transformation_batch(self, batch_size, **kwargs):
        uniform = self._random_generator.uniform
        return {
            "brightness": uniform((batch_size,), -self.brightness, self.brightness) * 255.0,
            "contrast": uniform((batch_size,), 1.0 - self.contrast, 1.0 + self.contrast),
            "hue": uniform((batch_size,), -self.hue, self.hue) * (2 * math.pi),
        }

    def augment_images(self, images, transformations, **kwargs):
        phi = transformations["hue"][:, None, None]
        c = transformations["contrast"]
        # Rodrigues: rotation by phi about the grey axis (1, 1, 1)/sqrt(3).
        rotation = (
            tf.cos(phi) * tf.eye(3)
            + (1 - tf.cos(phi)) / 3 * tf.ones((3, 3))
            + tf.sin(phi) * GREY_AXIS_CROSS
        )
        matrix = c[:, None, None] * rotation  # acts on a pixel's column vector of (r, g, b)
        mean = tf.reduce_mean(images, axis=(1, 2, 3))
        offset = (1 - c) * mean + transformations["brightness"]
        affine = tf.concat([matrix, tf.tile(offset[:, None, None], (1, 3, 1))], axis=2)
        out = tf.numpy_function(color_affine, [images, affine], images.dtype, stateful=False)
        out.set_shape(images.shape)
        return out

    def augment_segmentation_masks(self, segmentation_masks, transformations, **kwargs):
        return segmentation_masks

    def augment_labels(self, labels, transformations, **kwargs):
        return labels

    def get_config(self):
        return {
            **super().get_config(),
            "brightness": self.brightness,
            "contrast": self.contrast,
            "hue": self.hue,
            "seed": self.seed,
        }


def fused_augmenter(
    seed: int | None = None, soft_masks: bool = False, strength: float = 1.0
) -> list:
    """The training augmentation: RandomGeometry then RandomColor, their ranges (not the flips)
    scaled by strength."""
    return [
        RandomGeometry(
            **{k: v * strength for k, v in GEOMETRY_RANGES.items()},
            soft_masks=soft_masks,
            seed=seed,
        ),
        RandomColor(
            **{k: v * strength for k, v in COLOUR_RANGES.items()},
            seed=None if seed is None else seed + 1,
        ),
    ]


def stock_augmenter(seed: int | None = None) -> list:
    """The same augmentation from keras_cv's stock layers (several times slower on CPU)."""
    g, colour = GEOMETRY_RANGES, COLOUR_RANGES
    geometry = dict(fill_mode="constant", fill_value=0.0, seed=seed)
    return [
        keras_cv.layers.RandomFlip("horizontal", seed=seed),
        keras_cv.layers.RandomTranslation(g["shift"], g["shift"], **geometry),
        keras_cv.layers.RandomZoom((-g["zoom"], g["zoom"]), **geometry),
        # keras_cv 0.9: masks need segmentation_classes (one-hot rotate, argmax back).
        keras_cv.layers.RandomRotation(g["degrees"] / 360, segmentation_classes=2, **geometry),
        keras_cv.layers.RandomBrightness(colour["brightness"], value_range=(0, 255), seed=seed),
        keras_cv.layers.RandomContrast(value_range=(0, 255), factor=colour["contrast"], seed=seed),
        keras_cv.layers.RandomHue(colour["hue"], value_range=(0, 255), seed=seed),
    ]


def augment_batch(images, masks, augmenter, soft_masks: bool = False) -> tuple:
    """Apply augmentation layers to a float32 batch; masks come back float32 0/1 (car shares
    in 0..1 with `soft_masks`)."""
    batch = {"images": images, "segmentation_masks": masks}
    for layer in augmenter:
        batch = layer(batch)
    masks = tf.cast(batch["segmentation_masks"], tf.float32)
    masks = tf.clip_by_value(masks, 0.0, 1.0) if soft_masks else tf.cast(masks >= 0.5, tf.float32)
    return tf.cast(batch["images"], tf.float32), masks
