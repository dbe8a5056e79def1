"""Model inference: JPEG bytes -> model(s) -> full-resolution masks (or their RLE), streamed.

`predict_masks` (one model) and `predict_ensemble` (several runs, each with its own geometry)
are the engine that the test-set run (carvana.predict) and the evaluation use; `predict_levels`
gives the full-size probability maps instead (threshold tuning, evaluation). Three stages, each
handing typed items to the next through carvana.readahead:
1. read: the caller's (name, JPEG bytes) items are walked in a thread of ours and each JPEG's
   header is read (the full size to upscale to) -> `Probe`;
2. model: a tf.data pipeline decodes the readable ones at each model's geometry in parallel,
   every model runs on each batch -> `Scored` (a uint8 probability map per model, or why there
   is none);
3. finish: a few threads upsample each map to its image's size with cv2, average the models'
   maps (moving their edge onto the photo's with carvana.edges unless `guided` is off),
   threshold and RLE-encode -> `Prediction`.
Results come back in input order, at most a few batches in flight, so memory does not depend
on the number of images (nor on the number of models beyond one map per model and image).
"""

from __future__ import annotations

import contextlib
import gc
import queue
import weakref
from collections.abc import Iterable, Iterator
from typing import NamedTuple

import cv2
import numpy as np
import tensorflow as tf

from carvana import edges, rle
from carvana.config import PredictConfig, TrainConfig
from carvana.edges import scratch
from carvana.files import DataError, jpeg_size
from carvana.inputs import crop_to_image, decode_image, tf_message
from carvana.readahead import ReadAhead
from carvana.thresholds import DEFAULT_THRESHOLD, level


class Probe(NamedTuple):
    """A test item as read: its place in the input, name, bytes, and header size or the
    reason it has none."""

    index: int
    name: str
    data: bytes
    size: tuple[int, int] | None
    error: str | None


class Scored(NamedTuple):
    """The models' outputs: one uint8 probability map*255 (h, w) per model at its image size,
    the full size to upscale them to and the JPEG (the edge filter's guide); or, for an
    unreadable image, None and the reason."""

    name: str
    probs: tuple[np.ndarray, ...] | None
    size: tuple[int, int] | None
    error: str | None
    jpeg: bytes | None = None


class Prediction(NamedTuple):
    """One image's result: its full-size uint8 0/1 mask (or its RLE, or its level map from
    `predict_levels`), None when unreadable."""

    name: str
    mask: np.ndarray | str | None


# -- the model ----------------------------------------------------------------------------------
def make_forward(model, config: TrainConfig, tta: bool = False):
    """A compiled batch function: uint8 padded images -> uint8 probabilities*255 (b, h, w),
    cropped to the image; with `tta` the mean with the un-flipped prediction of the flipped
    image (only the image is flipped: the padding stays at the right, as in training)."""
    ph, pw = config.padded_size
    w = config.image_size[1]

    def probabilities(x):
        logits = tf.cast(model(x, training=False), tf.float32)
        return crop_to_image(tf.sigmoid(logits), config)[..., 0]

    @tf.function(input_signature=[tf.TensorSpec([None, ph, pw, 3], tf.uint8)])
    def forward(images):
        x = tf.cast(images, tf.float32)
        p = probabilities(x)
        if tta:
            flipped = tf.concat([tf.reverse(x[:, :, :w], axis=[2]), x[:, :, w:]], axis=2)
            p = (p + tf.reverse(probabilities(flipped), axis=[2])) / 2
        return tf.cast(tf.round(p * 255), tf.uint8)

    return forward


_FORWARDS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _cached_forward(model, config: TrainConfig, tta: bool):
    # Tracing a MobileNet U-Net takes seconds: reuse it when a model is run again (evaluate).
    # The function sees the model through a weak proxy, so the cache does not keep it alive.
    per_model = _FORWARDS.setdefault(model, {})
    if (config, tta) not in per_model:
        per_model[(config, tta)] = make_forward(weakref.proxy(model), config, tta)
    return per_model[(config, tta)]


# -- post-processing ----------------------------------------------------------------------------
def upscale_mask(prob: np.ndarray, size: tuple[int, int], threshold: float) -> np.ndarray:
    """uint8 probabilities*255 (h, w) -> full-size uint8 0/1 mask: cv2 bilinear, then > t*255."""
    up = cv2.resize(prob, (int(size[1]), int(size[0])), interpolation=cv2.INTER_LINEAR)
    # Integers: up > t*255 is up > floor(t*255); cv2.threshold floors its threshold the same way.
    return cv2.threshold(up, level(threshold), 1, cv2.THRESH_BINARY, dst=up)[1]


def postprocess(prob: np.ndarray, size: tuple[int, int], threshold: float, encode: bool):
    """uint8 probabilities*255 -> the full-size 0/1 mask (a fresh array), or its RLE."""
    if not encode:
        return upscale_mask(prob, size, threshold)
    h, w = int(size[0]), int(size[1])
    up = scratch("up", (h, w), np.uint8)
    cv2.resize(prob, (w, h), dst=up, interpolation=cv2.INTER_LINEAR)
    cv2.threshold(up, level(threshold), 1, cv2.THRESH_BINARY, dst=up)
    return rle.encode(up)


def upscale_levels(probs: tuple[np.ndarray, ...], size: tuple[int, int], out=None) -> np.ndarray:
    """The models' uint8 maps, each upscaled to `size` (cv2 bilinear), summed: a fresh full-size
    uint8 map for one model, a uint16 sum for several (their mean is sum / len(probs))."""
    h, w = int(size[0]), int(size[1])
    if len(probs) == 1 and out is None:
        return cv2.resize(probs[0], (w, h), interpolation=cv2.INTER_LINEAR)
    total = np.empty((h, w), np.uint16) if out is None else out
    up = scratch("up", (h, w), np.uint8)
    for i, prob in enumerate(probs):
        cv2.resize(prob, (w, h), dst=up, interpolation=cv2.INTER_LINEAR)
        if i == 0:
            np.copyto(total, up)
        else:
            np.add(total, up, out=total)
    return total


def postprocess_ensemble(probs, size: tuple[int, int], threshold: float, encode: bool):
    """Several models' uint8 maps -> the full-size 0/1 mask (a fresh array) of their mean > t, or
    its RLE. Summed upscaled uint8 maps against k * floor(t*255): a run with itself gives
    exactly the run's own mask."""
    h, w = int(size[0]), int(size[1])
    total = upscale_levels(probs, size, out=scratch("sum", (h, w), np.uint16))
    car = np.greater(total, len(probs) * level(threshold), out=scratch("car", (h, w), bool))
    return rle.encode(car.view(np.uint8)) if encode else car.astype(np.uint8)


class _Finish:
    """Stage 3 as a function of a Scored item (run in the read-ahead's pool threads); with no
    threshold, the level map of `upscale_levels` (or of edges.refined_levels when `guided`)."""

    def __init__(self, threshold: float | None, encode: bool, guided: bool):
        self.threshold, self.encode, self.guided = threshold, encode, guided

    def __call__(self, scored: Scored):
        if scored.probs is None:
            return None
        levels = (
            edges.refined_levels(scored.probs, scored.size, scored.jpeg) if self.guided else None
        )
        if levels is not None:  # None: not guided, or OpenCV cannot read what TensorFlow could
            if self.threshold is None:
                return levels
            car = levels > len(scored.probs) * level(self.threshold)
            return rle.encode(car.view(np.uint8)) if self.encode else car.astype(np.uint8)
        if self.threshold is None:
            return upscale_levels(scored.probs, scored.size)
        if len(scored.probs) == 1:
            return postprocess(scored.probs[0], scored.size, self.threshold, self.encode)
        return postprocess_ensemble(scored.probs, scored.size, self.threshold, self.encode)


# -- reading and decoding -----------------------------------------------------------------------
def _probe(item: tuple[int, tuple[str, bytes]]) -> Probe:
    index, (name, data) = item
    try:
        return Probe(index, name, data, jpeg_size(data, name), None)
    except DataError as err:
        return Probe(index, name, data, None, str(err).removeprefix(f"{name}: "))


class _End(NamedTuple):
    error: BaseException | None  # the caller's iterable failed: raised where it happened


class _Feed:
    """Stage 1 feeding tf.data: the generator TensorFlow runs (on its own threads) yields
    batches of (index, bytes) of the readable images; every probe (readable or not) goes into
    `handed`, in order, before TensorFlow sees it, so the model stage can tell which indices
    did not come out of the model (unreadable) and name them."""

    def __init__(self, items: Iterable[tuple[str, bytes]], batch_size: int):
        self.ahead = ReadAhead(enumerate(items), _probe, threads=0, depth=2 * batch_size)
        self.batch_size = batch_size
        self.handed: queue.SimpleQueue = queue.SimpleQueue()

    def batches(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(int64 indices, object array of JPEG bytes) per batch of readable images."""
        fed: list[Probe] = []
        failed = None
        try:
            for done in self.ahead:
                probe = done.result()
                self.handed.put(probe)
                if probe.size is not None:
                    fed.append(probe)
                if len(fed) >= self.batch_size:
                    yield _columns(fed)
                    fed = []
        except GeneratorExit:
            raise
        except BaseException as err:  # tf.data would swallow it: handed on in its place
            failed = err
        if fed:
            yield _columns(fed)
        self.handed.put(_End(failed))

    def until(self, index: int | None) -> Iterator[Probe]:
        """The probes handed up to and including `index` (all that are left when None), in
        order; at the end of the input, the caller's own exception is raised in its place."""
        while True:
            probe = self.handed.get()
            if isinstance(probe, _End):
                if probe.error is not None:
                    raise probe.error
                return
            if index is not None and probe.index >= index:
                assert probe.index == index, f"stream out of order: {probe.index} != {index}"
                yield probe
                return
            yield probe


def _columns(fed: list[Probe]) -> tuple[np.ndarray, np.ndarray]:
    return np.array([p.index for p in fed], np.int64), np.array([p.data for p in fed], object)


def _model_input(feed: _Feed, batch_size: int, decoders: list) -> tf.data.Dataset:
    dataset = tf.data.Dataset.from_generator(
        feed.batches,
        output_signature=(tf.TensorSpec([None], tf.int64), tf.TensorSpec([None], tf.string)),
    )
    # A corrupt JPEG fails only its own element: ignore_errors drops it, and the index tells
    # which element is missing, so its row is still produced (as None) in its place.
    return (
        dataset.unbatch()
        .map(
            lambda i, data: (i, tuple(decode(data) for decode in decoders)),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
        .ignore_errors()
        .batch(batch_size)
        .prefetch(2)
    )


def _unreadable(probe: Probe, decode) -> Scored:
    if probe.error is not None:
        return Scored(probe.name, None, None, probe.error)
    try:  # it did not come out of tf.data: decode it again for TensorFlow's reason
        decode(tf.constant(probe.data))
        return Scored(probe.name, None, None, "could not be decoded")
    except tf.errors.OpError as err:
        return Scored(probe.name, None, None, f"not a readable JPEG: {tf_message(err)}")


def _scored(feed: _Feed, dataset: tf.data.Dataset, forwards, decode) -> Iterator[Scored]:
    """Stage 2: every model over the decoded batches (`forwards`: (forward, index of its
    geometry's images)), every input item in order."""
    with feed.ahead:
        for indices, images in dataset:
            outputs = [forward(images[g]).numpy() for forward, g in forwards]
            for j, index in enumerate(indices.numpy().tolist()):
                for probe in feed.until(index):
                    if probe.index < index:
                        yield _unreadable(probe, decode)
                    else:
                        probs = tuple(o[j] for o in outputs)
                        yield Scored(probe.name, probs, probe.size, None, probe.data)
        for probe in feed.until(None):
            yield _unreadable(probe, decode)


@contextlib.contextmanager
def _tuned_for_streaming() -> Iterator[None]:
    # The pool already runs one image per thread: OpenCV's own threads would only add
    # hand-offs and spinning (measured: ~30% more CPU per image with 2 OpenCV threads).
    cv2_threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    # The loop allocates many short-lived objects; full collections would walk the millions
    # that TensorFlow and Keras hold (profiled: ~6% of the CPU time). Thawed at the end.
    gc.freeze()
    try:
        yield
    finally:
        cv2.setNumThreads(cv2_threads)
        gc.unfreeze()


# -- the engine ---------------------------------------------------------------------------------
def _geometry(config: TrainConfig) -> tuple:
    """What decode_image depends on: runs that share it share the decoded images."""
    return (tuple(config.image_size), tuple(config.padded_size), config.jpeg_ratio)


def _stream(members, items, pconfig: PredictConfig, finish: _Finish, errors) -> Iterator:
    """The three stages for `members` ((model, TrainConfig) pairs): Prediction per item."""
    if not members:
        raise ValueError("no model to predict with")
    errors = {} if errors is None else errors
    geometries = list(dict.fromkeys(_geometry(c) for _, c in members))
    firsts = {g: next(c for _, c in members if _geometry(c) == g) for g in geometries}
    decoders = [
        tf.function(
            lambda data, c=firsts[g]: decode_image(data, c),
            input_signature=[tf.TensorSpec([], tf.string)],
        )
        for g in geometries
    ]
    forwards = [
        (_cached_forward(m, c, pconfig.tta), geometries.index(_geometry(c))) for m, c in members
    ]
    feed = _Feed(items, pconfig.batch_size)
    dataset = _model_input(feed, pconfig.batch_size, decoders)
    scored = _scored(feed, dataset, forwards, decoders[0])
    depth = max(pconfig.batch_size, 2 * pconfig.workers)
    with _tuned_for_streaming(), ReadAhead(scored, finish, pconfig.workers, depth) as finished:
        for done in finished:
            name = done.item.name
            if done.item.error is not None:
                errors.setdefault(name, done.item.error)
            yield Prediction(name, done.result())


def predict_masks(
    model,
    config: TrainConfig,
    items: Iterable[tuple[str, bytes]],
    pconfig: PredictConfig,
    encode: bool = False,
    errors: dict[str, str] | None = None,
) -> Iterator[Prediction]:
    """Yield Prediction(name, full-size uint8 0/1 mask, or its RLE when `encode`) for each
    (name, JPEG bytes) item, in input order; an unreadable image yields (name, None) and its
    reason goes into `errors`. The size to upscale to is read from each JPEG's header."""
    return predict_ensemble([(model, config)], items, pconfig, encode, errors)


def predict_ensemble(
    members: list[tuple],
    items: Iterable[tuple[str, bytes]],
    pconfig: PredictConfig,
    encode: bool = False,
    errors: dict[str, str] | None = None,
) -> Iterator[Prediction]:
    """predict_masks for several (model, TrainConfig) members: each image goes through every
    model at its own geometry; the mean of their full-size maps is thresholded at
    pconfig.threshold (0.5 when None)."""
    threshold = DEFAULT_THRESHOLD if pconfig.threshold is None else pconfig.threshold
    return _stream(members, items, pconfig, _Finish(threshold, encode, pconfig.guided), errors)


def predict_levels(
    members: list[tuple],
    items: Iterable[tuple[str, bytes]],
    pconfig: PredictConfig,
    errors: dict[str, str] | None = None,
) -> Iterator[Prediction]:
    """Prediction(name, full-size level map) per item: the sum of the members' upscaled uint8
    probability maps (upscale_levels); a pixel is car at threshold t when its level is above
    len(members) * floor(t*255)."""
    return _stream(members, items, pconfig, _Finish(None, False, pconfig.guided), errors)
