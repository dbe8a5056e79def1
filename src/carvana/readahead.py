"""Read ahead: run a function over items in background threads, bounded, in input order.

One helper for every stage that must not wait on slow reads (the training input reading JPEGs
and masks, prediction reading test images and post-processing masks). The caller's iterable is
itself walked in a thread of ours, so its per-thread state (an open zip) lasts from one item
to the next even when the consumer is a tf.data generator on TensorFlow's ever-new threads.
An exception from `fn` stays with its item (`Done.error`); one from the iterable ends the
stream and is raised, unchanged, where the consumer reaches it. No TensorFlow here.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Done(Generic[T, R]):
    """One item and what `fn` made of it: its value, or the exception it raised."""

    item: T
    value: R | None = None
    error: Exception | None = None

    def result(self) -> R:
        """The value, or the item's exception raised here."""
        if self.error is not None:
            raise self.error
        return self.value  # type: ignore[return-value]


@dataclass(frozen=True)
class _Failed:
    error: BaseException


_END = object()


def _run(fn: Callable[[T], R], item: T) -> Done[T, R]:
    try:
        return Done(item, fn(item))
    except Exception as err:  # kept with its item: the consumer decides what it means
        return Done(item, error=err)


class ReadAhead(Generic[T, R]):
    """Iterate Done(item, fn(item)) over `items`, in order, at most `depth` items ahead.

    `threads` > 0 runs fn in that many pool threads (for work that releases the GIL: image
    decoding, resizing); 0 runs it in the thread that walks `items`. Use as a context manager
    (or call close) so that an early exit stops the background work."""

    def __init__(self, items: Iterable[T], fn: Callable[[T], R], threads: int = 0, depth: int = 8):
        if depth < 1 or threads < 0:
            raise ValueError(
                f"read-ahead needs depth >= 1 and threads >= 0, got {depth}, {threads}"
            )
        self._items, self._fn = items, fn
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._pool = (
            ThreadPoolExecutor(threads, thread_name_prefix="read-ahead") if threads else None
        )
        self._thread: threading.Thread | None = None

    def __iter__(self) -> Iterator[Done[T, R]]:
        if self._thread is None:
            self._thread = threading.Thread(target=self._feed, name="read-ahead", daemon=True)
            self._thread.start()
        while True:
            try:
                entry = self._queue.get(timeout=0.1)
            except queue.Empty:
                if self._stop.is_set():  # closed (by another thread): nothing more will come
                    return
                continue
            if entry is _END:
                return
            if isinstance(entry, _Failed):
                raise entry.error
            yield entry.result() if isinstance(entry, Future) else entry

    def _put(self, entry: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _feed(self) -> None:
        items = iter(self._items)
        try:
            for item in items:
                work = self._pool.submit(_run, self._fn, item) if self._pool else None
                if not self._put(work or _run(self._fn, item)):
                    return
        except BaseException as err:  # the iterable failed: raised in the consumer, unchanged
            self._put(_Failed(err))
        finally:
            close = getattr(items, "close", None)
            if close is not None:  # a generator: let its own cleanup run in its thread
                close()
        self._put(_END)

    def close(self) -> None:
        """Stop reading ahead; work already running finishes in the background."""
        self._stop.set()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        while True:  # futures still queued will not be collected: cancel them
            try:
                entry = self._queue.get_nowait()
            except queue.Empty:
                return
            if isinstance(entry, Future):
                entry.cancel()

    def __enter__(self) -> ReadAhead[T, R]:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
