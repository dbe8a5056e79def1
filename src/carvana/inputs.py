"""tf.data input: DCT-scaled JPEG decode, aspect-keeping resize, padding, cache, augmentation.

`decode_image` and `crop_to_image` define the geometry shared by training, evaluation and
prediction: an image is decoded at 1/k scale, resized to `config.image_size`, and padded at
the bottom/right to `config.padded_size`; predictions are cropped back before upscaling.

`get_dataset` builds the training/validation input: a Python generator reads each image and
mask through the data layer (zips or folders) a few ahead in threads (carvana.readahead),
checks the pair (sizes agree, mask values 0/1), decodes the JPEG with TensorFlow and shrinks
the mask in numpy so it stays binary; a bad file stops the input with a DataError naming it.
The decoded uint8 examples are cached (memory or file) before any augmentation, so only the
first epoch decodes JPEGs.
The padding of a mask is background (0) and is kept in the loss: the model learns it as easily
as the studio floor, and excluding it would need a weight map in every batch.
"""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import cv2
import numpy as np
import tensorflow as tf

from carvana.config import TrainConfig
from carvana.files import DataError, jpeg_size
from carvana.readahead import ReadAhead

READ_THREADS = 4  # JPEG and GIF decoding and mask resizing release the GIL
MASK_LEVELS = 255  # a soft training mask stores each pixel's car share as uint8 0..255


def decode_image(jpeg: tf.Tensor, config: TrainConfig) -> tf.Tensor:
    """JPEG bytes -> uint8 (padded_h, padded_w, 3) image at the model's input geometry."""
    return _decode_at(jpeg, config.image_size, config.padded_size, config.jpeg_ratio)


def _decode_at(jpeg: tf.Tensor, size: tuple, padded: tuple, ratio: int) -> tf.Tensor:
    h, w = size
    image = tf.io.decode_jpeg(jpeg, channels=3, ratio=ratio)
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
    return tf.image.pad_to_bounding_box(image, 0, 0, *padded)


def crop_to_image(padded: tf.Tensor, config: TrainConfig) -> tf.Tensor:
    """Drop the padding of a (batch, padded_h, padded_w, ...) tensor or array."""
    h, w = config.image_size
    return padded[:, :h, :w]


def shrink_mask(mask: np.ndarray, config: TrainConfig) -> np.ndarray:
    """Full-size 0/1 mask -> uint8 (h, w, 1) at image_size: each pixel's car share (the full-size
    pixels it covers) as 0..255 with config.soft_targets, else 0/1 (share >= 0.5)."""
    h, w = config.image_size
    share = mask.astype(np.float32)
    if mask.shape[:2] != (h, w):
        share = cv2.resize(share, (w, h), interpolation=cv2.INTER_AREA)
    if config.soft_targets:
        return np.rint(share * MASK_LEVELS).astype(np.uint8)[..., None]
    return (share >= 0.5).astype(np.uint8)[..., None]


def mask_scale(config: TrainConfig) -> int:
    """What a stored training mask value of full car share is (shrink_mask)."""
    return MASK_LEVELS if config.soft_targets else 1


class Example(NamedTuple):
    """One training pair at the model geometry, as the reader hands it to TensorFlow."""

    image: np.ndarray  # uint8 (padded_h, padded_w, 3)
    mask: np.ndarray  # uint8 (padded_h, padded_w, 1), see shrink_mask; the padding is 0


def tf_message(err: Exception) -> str:
    """The first line of a TensorFlow error, without its {{node ...}} decorations."""
    text = getattr(err, "message", str(err))
    lines = re.sub(r"\{\{[^}]*\}\}", "", text).strip().splitlines()
    return lines[0].strip() if lines else type(err).__name__


def _where(store, name: str) -> str:
    return store.where(name) if store is not None else name


@functools.lru_cache(maxsize=8)
def _decoder(size: tuple[int, int], padded: tuple[int, int], ratio: int):
    """One compiled JPEG decoder per geometry (the key is all decode_image depends on): a run
    builds several datasets (training, validation, calibration, previews), and a new
    tf.function each time would trace again."""
    return tf.function(
        lambda jpeg: _decode_at(jpeg, size, padded, ratio),
        input_signature=[tf.TensorSpec([], tf.string)],
    )


class PairReader:
    """Reads a training pair checked like CarvanaData.read_pair (mask size = image size, mask
    values 0/1) and decodes it at the model geometry; a bad file is a DataError naming it."""

    def __init__(self, data, config: TrainConfig):
        self.data, self.config = data, config
        # Decoded here, in the reader's threads, not in a tf.data map: a JPEG that TensorFlow
        # cannot decode is then an error naming its file, not a TF error naming no file.
        self.decode = _decoder(
            tuple(config.image_size), tuple(config.padded_size), config.jpeg_ratio
        )

    def __call__(self, image_id: str) -> Example:
        """The checked, decoded pair of one image id."""
        data, config = self.data, self.config
        where = _where(getattr(data, "train", None), f"{image_id}.jpg")
        jpeg = data.read_train_bytes(image_id)
        size = jpeg_size(jpeg, where)
        mask = data.read_mask(image_id)
        if mask.shape != size:
            masks = getattr(data, "masks", None)
            raise DataError(
                f"{_where(masks, f'{image_id}_mask.gif')}: mask is {mask.shape[1]}x"
                f"{mask.shape[0]} but its image is {size[1]}x{size[0]}"
            )
        try:
            image = self.decode(tf.constant(jpeg)).numpy()
        except tf.errors.OpError as err:
            raise DataError(f"{where}: not a readable JPEG image: {tf_message(err)}") from None
        h, w = config.image_size
        padded = np.zeros((*config.padded_size, 1), np.uint8)
        padded[:h, :w] = shrink_mask(mask, config)
        return Example(image, padded)


def read_examples(data, ids: Sequence[str], config: TrainConfig) -> Iterator[Example]:
    """Yield the checked, decoded Example of each id, in order, read a few ids ahead in
    threads; a bad file raises its DataError when its turn comes."""
    with ReadAhead(ids, PairReader(data, config), READ_THREADS, 2 * READ_THREADS) as ahead:
        for done in ahead:
            yield done.result()


def decoded_dataset(data, ids: Sequence[str], config: TrainConfig) -> tf.data.Dataset:
    """Dataset of (uint8 image (ph, pw, 3), uint8 mask (ph, pw, 1), see shrink_mask) at the
    model geometry."""
    ph, pw = config.padded_size
    ids = list(ids)
    dataset = tf.data.Dataset.from_generator(
        lambda: read_examples(data, ids, config),
        output_signature=(
            tf.TensorSpec([ph, pw, 3], tf.uint8),
            tf.TensorSpec([ph, pw, 1], tf.uint8),
        ),
    )
    # A known length lets Keras count steps (and not warn that the input "ran out").
    return dataset.apply(tf.data.experimental.assert_cardinality(len(ids)))


@contextlib.contextmanager
def named_data_errors() -> Iterator[None]:
    """Around a loop over the input: a DataError raised by the reader inside tf.data comes out
    as that DataError's one line (TensorFlow wraps it in an error with a traceback)."""
    try:
        yield
    except tf.errors.OpError as err:
        found = re.search(r"DataError: (.*)", getattr(err, "message", str(err)))
        if found is None:
            raise
        raise DataError(found.group(1).strip()) from None


def _to_float(images, masks, scale: int = 1):
    masks = tf.cast(masks, tf.float32)
    return tf.cast(images, tf.float32), masks if scale == 1 else masks / scale


def get_dataset(
    data,
    ids: Sequence[str],
    config: TrainConfig,
    training: bool,
    cache: str | None = "",
    augmenter: str = "fused",
) -> tf.data.Dataset:
    """Batches of (float32 images 0..255 (b, ph, pw, 3), float32 0/1 masks (b, ph, pw, 1); car
    shares in 0..1 with config.soft_targets).

    `cache`: "" caches decoded examples in memory, a path caches them in that file, None does
    not cache. Training shuffles every epoch and augments when config.augment is on, with
    carvana.augment's "fused" KerasCV layers or keras_cv's "stock" ones."""
    ids = list(ids)
    if not ids:
        raise ValueError("no images to build a dataset from")
    if training:
        # One fixed mix of cars for the first (cache-filling) epoch; shuffle() mixes later ones.
        ids = [ids[i] for i in np.random.default_rng(config.seed).permutation(len(ids))]
    dataset = decoded_dataset(data, ids, config)
    if cache is not None:
        dataset = dataset.cache(cache)
    if training:
        dataset = dataset.shuffle(min(len(ids), 4096), seed=config.seed)
    to_float = functools.partial(_to_float, scale=mask_scale(config))
    dataset = dataset.batch(config.batch_size).map(to_float, num_parallel_calls=tf.data.AUTOTUNE)
    if training and config.augment:
        # Imported here: prediction and evaluation must not need keras_cv.
        from carvana import augment

        soft = config.soft_targets
        if augmenter == "fused":
            layers = augment.fused_augmenter(
                config.seed, soft_masks=soft, strength=config.augment_strength
            )
        elif augmenter == "stock" and config.augment_strength != 1.0:
            raise ValueError("the stock augmenter has the ranges of augment_strength 1 only")
        elif augmenter == "stock" and not soft:
            layers = augment.stock_augmenter(config.seed)
        elif augmenter == "stock":
            raise ValueError("the stock augmenter rotates masks as classes: use soft_targets off")
        else:
            raise ValueError(f"unknown augmenter {augmenter!r}; choose one of fused, stock")
        dataset = dataset.map(
            lambda x, y: augment.augment_batch(x, y, layers, soft),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    return dataset.prefetch(tf.data.AUTOTUNE)
