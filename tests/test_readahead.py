"""The shared read-ahead: order, bound, errors kept with their items, early close."""

import threading
import time

import pytest

from carvana.readahead import ReadAhead


def slow_square(x: int) -> int:
    time.sleep(0.002 * (x % 3))  # later items often finish first
    if x == 5:
        raise ValueError("five is bad")
    return x * x


@pytest.mark.parametrize("threads", [0, 3])
def test_results_come_in_input_order_with_errors_kept_per_item(threads):
    with ReadAhead(range(12), slow_square, threads=threads, depth=4) as ahead:
        done = list(ahead)
    assert [d.item for d in done] == list(range(12))
    assert [d.value for d in done if d.item != 5] == [x * x for x in range(12) if x != 5]
    assert isinstance(done[5].error, ValueError) and done[5].value is None
    with pytest.raises(ValueError, match="five is bad"):
        done[5].result()
    assert done[4].result() == 16


@pytest.mark.parametrize("threads", [0, 2])
def test_a_failing_iterable_raises_in_its_place_unchanged(threads):
    def items():
        yield from range(3)
        raise KeyboardInterrupt  # BaseException too: carried to the consumer

    seen = []
    with pytest.raises(KeyboardInterrupt):
        with ReadAhead(items(), lambda x: x, threads=threads, depth=2) as ahead:
            for done in ahead:
                seen.append(done.result())
    assert seen == [0, 1, 2]


def test_reading_ahead_is_bounded_and_stops_when_closed():
    walked = []
    walkers = set()

    def items():
        for i in range(1000):
            walked.append(i)
            walkers.add(threading.current_thread().name)
            yield i

    ahead = ReadAhead(items(), lambda x: x, threads=2, depth=3)
    stream = iter(ahead)
    assert next(stream).item == 0
    time.sleep(0.3)
    assert len(walked) <= 1 + 3 + 2  # the one taken, the queue, the one waiting to be queued
    ahead.close()
    time.sleep(0.3)
    stopped_at = len(walked)
    time.sleep(0.2)
    assert len(walked) == stopped_at < 1000
    assert walkers == {"read-ahead"}  # the caller's iterable is walked in one thread of ours


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="depth >= 1"):
        ReadAhead([], len, depth=0)
