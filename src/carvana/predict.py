"""Streaming prediction: test JPEGs -> model -> full-resolution masks -> RLE rows in a csv.gz.

`predict_masks` is the engine (evaluation uses it too): a tf.data pipeline decodes the images
at the model's geometry in parallel while the model runs; a small thread pool upsamples each
probability map to its image's size with cv2, thresholds it and RLE-encodes it; results come
back in input order and at most a few batches are in flight, so memory does not depend on the
number of images. `predict` drives it over the test set: shards, resume, validation, summary.
"""

from __future__ import annotations

import collections
import gc
import json
import os
import queue
import re
import sys
import threading
import time
import weakref
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import tensorflow as tf

from carvana import rle
from carvana.config import CONFIG_FILE, MODEL_FILE, PredictConfig, TrainConfig
from carvana.files import DataError, jpeg_size
from carvana.inputs import crop_to_image, decode_image
from carvana.submission import SubmissionWriter, image_shape, validate


# -- the engine ---------------------------------------------------------------------------------
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


def upscale_mask(prob: np.ndarray, size: tuple[int, int], threshold: float) -> np.ndarray:
    """uint8 probabilities*255 (h, w) -> full-size uint8 0/1 mask: cv2 bilinear, then > t*255."""
    up = cv2.resize(prob, (int(size[1]), int(size[0])), interpolation=cv2.INTER_LINEAR)
    # Integers: up > t*255 is up > floor(t*255); cv2.threshold floors its threshold the same way.
    return cv2.threshold(up, int(np.floor(threshold * 255)), 1, cv2.THRESH_BINARY, dst=up)[1]


_scratch = threading.local()


def _buffer(name: str, shape: tuple[int, ...], dtype) -> np.ndarray:
    # Per thread, reused across images: a fresh 2.4 MB array per image and step costs
    # ~600 page faults each time (profiled: ~15% of the CPU time went to the kernel).
    buffers = _scratch.__dict__.setdefault("buffers", {})
    key = (name, shape)
    if key not in buffers:
        buffers[key] = np.empty(shape, dtype)
    return buffers[key]


def _postprocess(prob, size, threshold, encode):
    if not encode:
        return upscale_mask(prob, size, threshold)  # the caller keeps it: a fresh array
    h, w = int(size[0]), int(size[1])
    up = _buffer("up", (h, w), np.uint8)
    cv2.resize(prob, (w, h), dst=up, interpolation=cv2.INTER_LINEAR)
    cv2.threshold(up, int(np.floor(threshold * 255)), 1, cv2.THRESH_BINARY, dst=up)
    return rle.encode(up)


def _columns(fed: list[tuple[int, bytes]]) -> tuple[np.ndarray, np.ndarray]:
    indices, data = zip(*fed, strict=True)
    return np.array(indices, np.int64), np.array(data, dtype=object)


def _tf_message(err: Exception) -> str:
    text = getattr(err, "message", str(err))
    text = re.sub(r"\{\{[^}]*\}\}", "", text).strip().splitlines()
    return text[0].strip() if text else type(err).__name__


def predict_masks(
    model,
    config: TrainConfig,
    items: Iterable[tuple[str, bytes]],
    pconfig: PredictConfig,
    encode: bool = False,
    errors: dict[str, str] | None = None,
) -> Iterator[tuple[str, np.ndarray | str | None]]:
    """Yield (name, full-size uint8 0/1 mask, or its RLE when `encode`) for each (name, JPEG
    bytes) item, in input order; an unreadable image yields (name, None) and its reason goes
    into `errors`. The size to upscale to is read from each JPEG's header."""
    errors = {} if errors is None else errors
    pending: collections.deque = collections.deque()  # (index, name, size, bytes) as fed to TF
    failure: list[BaseException] = []

    # The caller's items are read in a thread of ours, a chunk (batch) ahead: from_generator
    # runs `produce` on TensorFlow's own threads, where Python thread-locals do not last from
    # one call to the next (a zip reader keyed on them reopened the archive every time).
    chunks: queue.Queue = queue.Queue(maxsize=2)
    stop = threading.Event()

    def put(chunk) -> bool:
        while not stop.is_set():
            try:
                chunks.put(chunk, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def read():
        chunk: list[tuple[int, str, tuple[int, int] | None, bytes | None]] = []
        try:
            for index, (name, data) in enumerate(items):
                try:
                    chunk.append((index, name, jpeg_size(data), data))
                except (OSError, ValueError, SyntaxError) as err:  # PIL: no image header
                    errors.setdefault(name, f"not a readable image: {err}")
                    chunk.append((index, name, None, None))
                if len(chunk) >= pconfig.batch_size:
                    if not put(chunk):
                        return
                    chunk = []
        except BaseException as err:  # the caller's iterable failed: re-raised below, unchanged
            failure.append(err)
        if not chunk or put(chunk):
            put(None)

    def produce():
        # An item enters `pending` only when its chunk goes to TF, in input order.
        while not stop.is_set():
            try:
                chunk = chunks.get(timeout=0.1)
            except queue.Empty:
                continue
            if chunk is None:
                return
            pending.extend(chunk)
            fed = [(index, data) for index, _, size, data in chunk if size is not None]
            if fed:
                yield _columns(fed)

    decode = tf.function(
        lambda data: decode_image(data, config), input_signature=[tf.TensorSpec([], tf.string)]
    )
    dataset = tf.data.Dataset.from_generator(
        produce,
        output_signature=(tf.TensorSpec([None], tf.int64), tf.TensorSpec([None], tf.string)),
    )
    # A corrupt JPEG fails only its own element: ignore_errors drops it, and the index tells
    # which element is missing, so its row is still produced (as None) in its place.
    dataset = (
        dataset.unbatch()
        .map(
            lambda i, data: (i, decode(data)),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
        .ignore_errors()
        .batch(pconfig.batch_size)
        .prefetch(2)
    )
    forward = _cached_forward(model, config, pconfig.tta)
    in_flight: collections.deque = collections.deque()  # (name, Future | None), input order
    limit = max(pconfig.batch_size, 2 * pconfig.workers)

    def skipped(upto: int | None):
        # Items fed to TF (or refused before) that did not come out: unreadable.
        while pending and (upto is None or pending[0][0] < upto):
            _, name, _, data = pending.popleft()
            if name not in errors:
                try:
                    decode(tf.constant(data))
                    errors[name] = "could not be decoded"
                except tf.errors.OpError as err:
                    errors[name] = f"not a readable JPEG: {_tf_message(err)}"
            in_flight.append((name, None))

    def drain(keep: int):
        while len(in_flight) > keep:
            name, future = in_flight.popleft()
            yield name, None if future is None else future.result()

    # The pool already runs one image per thread: OpenCV's own threads would only add
    # hand-offs and spinning (measured: ~30% more CPU per image with 2 OpenCV threads).
    cv2_threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    # The loop allocates many short-lived objects; full collections would walk the millions
    # that TensorFlow and Keras hold (profiled: ~6% of the CPU time). Thawed at the end.
    gc.freeze()
    with ThreadPoolExecutor(pconfig.workers, thread_name_prefix="postprocess") as pool:
        try:
            threading.Thread(target=read, name="predict-reader", daemon=True).start()
            for indices, images in dataset:
                probs = forward(images).numpy()
                for index, prob in zip(indices.numpy().tolist(), probs, strict=True):
                    skipped(index)
                    fed, name, size, _ = pending.popleft()
                    assert fed == index, f"stream out of order: {fed} != {index}"
                    in_flight.append(
                        (name, pool.submit(_postprocess, prob, size, pconfig.threshold, encode))
                    )
                yield from drain(limit)
            skipped(None)
            yield from drain(0)
            if failure:
                raise failure[0]
        finally:
            for _, future in in_flight:
                if isinstance(future, Future):
                    future.cancel()
            stop.set()
            cv2.setNumThreads(cv2_threads)
            gc.unfreeze()


# -- the test-set run ---------------------------------------------------------------------------
def shard_names(names: Iterable[str], shard: tuple[int, int], limit: int = 0) -> list[str]:
    """Shard i of n: every n-th name of the sorted list from the i-th; then the first `limit`."""
    i, n = shard
    chosen = sorted(names)[i::n]
    return chosen[:limit] if limit > 0 else chosen


def load_run(run_dir: Path):
    """(model, TrainConfig) of a run folder."""
    from carvana.models import load_model

    return load_model(run_dir), TrainConfig.load(run_dir)


def _signature(run_dir: Path, pconfig: PredictConfig) -> dict:
    model_file = run_dir / MODEL_FILE
    return {
        "config": json.loads((run_dir / CONFIG_FILE).read_text()),
        "model_bytes": model_file.stat().st_size if model_file.exists() else None,
        "threshold": pconfig.threshold,
        "tta": pconfig.tta,
        "shard": list(pconfig.shard),
    }


def _save_state(path: Path, state: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(state, indent=1) + "\n")
    os.replace(tmp, path)


def _read_test_set(data, names: Iterable[str], errors: dict[str, str]):
    for name in names:
        try:
            yield name, data.read_test_bytes(name)
        except (DataError, OSError) as err:
            errors[name] = str(err)
            yield name, b""


def predict(
    data,
    run_dir: Path,
    out: Path,
    pconfig: PredictConfig,
    allow_bad_images: bool = False,
    progress: bool = True,
) -> dict:
    """Predict this shard of the test set into `out` (gzip CSV), resuming `<out>.partial` when
    present; validate the result. "ok" is false when bad images (unless allowed) or problems."""
    from tqdm import tqdm

    run_dir, out = Path(run_dir), Path(out)
    TrainConfig.load(run_dir)  # a clear error before anything is written
    names = shard_names(data.test_names(), pconfig.shard, pconfig.limit)
    if not names:
        raise DataError(
            f"{data.root}: shard {pconfig.shard[0]}/{pconfig.shard[1]} has no test images"
        )
    gz = out.name.endswith(".gz")
    partial = out.with_name(out.name + ".partial")
    state_path = out.with_name(out.name + ".partial.json")
    signature = _signature(run_dir, pconfig)
    out.parent.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()

    state = json.loads(state_path.read_text()) if state_path.exists() else None
    if state is not None and state.get("signature") != signature:
        if partial.exists():
            raise ValueError(
                f"{partial}: work in progress from other settings (run, threshold, tta or "
                f"shard differ); rerun with those settings or delete {partial} and {state_path}"
            )
        state = None
    if partial.exists() and state is None:
        raise ValueError(f"{partial}: no {state_path.name} beside it; delete the partial file")
    finished_before = bool(state and state["finished"] and out.exists() and not partial.exists())
    if state is None or (state["finished"] and not finished_before and not partial.exists()):
        state = {"signature": signature, "bad": {}, "finished": False}
    wanted = set(names)
    bad: dict[str, str] = {k: v for k, v in state["bad"].items() if k in wanted}
    predicted = resumed = 0
    loop_seconds = 0.0

    if not finished_before:
        _save_state(state_path, state)
        if partial.exists():
            writer, done = SubmissionWriter.resume(partial, wanted, gz=gz)
        else:
            writer, done = SubmissionWriter(partial, gz=gz), []
        resumed = len(done)
        done_set = set(done)
        todo = [n for n in names if n not in done_set]
        bar = tqdm(
            total=len(names),
            initial=resumed,
            unit="img",
            disable=not progress,
            file=sys.stderr,
            desc=f"predict {out.name}",
            dynamic_ncols=True,
            smoothing=0.1,
        )
        saved_bad = len(bad)

        def flush():
            nonlocal saved_bad
            if len(bad) != saved_bad:  # record before the rows land: a bad row stays counted
                _save_state(state_path, {**state, "bad": bad})
                saved_bad = len(bad)
            writer.flush()

        loop_began = time.perf_counter()
        try:
            if todo:
                model, config = load_run(run_dir)
                loop_began = time.perf_counter()  # the rate leaves out loading the model
                errors: dict[str, str] = {}
                items = _read_test_set(data, todo, errors)
                for name, text in predict_masks(model, config, items, pconfig, True, errors):
                    if text is None:
                        bad[name] = errors.get(name, "unreadable")
                        bar.write(f"bad image {name}: {bad[name]}", file=sys.stderr)
                        text = ""
                    writer.write(name, text)
                    predicted += 1
                    bar.update(1)
                    if predicted % pconfig.batch_size == 0:
                        flush()
        finally:  # interrupted too: the rows computed so far are kept for the resume
            flush()
            writer.close()
            bar.close()
        loop_seconds = time.perf_counter() - loop_began
        if writer.rows != len(names):
            raise RuntimeError(f"{partial}: {writer.rows} rows for {len(names)} images")
        _save_state(state_path, {**state, "bad": bad, "finished": True})
        os.replace(partial, out)

    problems = validate(out, expected_names=names, shape=image_shape(data))
    state_path.unlink(missing_ok=True)
    seconds = time.perf_counter() - began
    summary = {
        "ok": not problems and (allow_bad_images or not bad),
        "path": out,
        "rows": len(names),
        "predicted": predicted,
        "resumed": resumed,
        "bad_images": sorted(bad),
        "bad_reasons": bad,
        "problems": problems,
        "seconds": round(seconds, 2),
        "images_per_s": round(predicted / loop_seconds, 2) if loop_seconds > 0 else 0.0,
    }
    if progress:
        _print_summary(summary, allow_bad_images)
    return summary


def _print_summary(summary: dict, allow_bad_images: bool) -> None:
    from carvana.submission import report_problems

    print(
        f"{summary['path']}: {summary['rows']} rows ({summary['predicted']} predicted now, "
        f"{summary['resumed']} resumed) in {summary['seconds']:.1f} s, "
        f"{summary['images_per_s']:.1f} img/s"
    )
    bad = summary["bad_images"]
    if bad:
        allowed = "allowed by --allow-bad-images" if allow_bad_images else "exit status 1"
        print(f"{len(bad)} bad image(s) written as empty masks ({allowed}):", file=sys.stderr)
        for name in bad[:50]:
            print(f"  {name}: {summary['bad_reasons'][name]}", file=sys.stderr)
        if len(bad) > 50:
            print(f"  ... and {len(bad) - 50} more", file=sys.stderr)
    report_problems(summary["path"], summary["problems"])
