"""Carvana run-length encoding: 1-indexed `start length` pairs over the row-major mask.

Pure numpy, no TensorFlow: the CLI, the validator and the submission writer import this.
"""

from __future__ import annotations

import re

import numpy as np

ORIGINAL_SHAPE = (1280, 1918)  # (height, width) of every Carvana image


class RLEError(ValueError):
    """An RLE string that is not a valid Carvana mask for the given shape."""


ONES = np.uint64(0x0101010101010101)  # eight mask bytes that are all 1


def _binary_bytes(mask: np.ndarray) -> np.ndarray:
    """The mask, row-major, as a 1-D uint8 array of 0/1 (no copy for C-ordered bool or 0/1 uint8)."""
    if mask.dtype == np.bool_:
        return mask.ravel().view(np.uint8)
    if mask.dtype == np.uint8:
        flat = mask.ravel()
        if flat.size and flat.max() > 1:  # 0/255 and similar: any non-zero is car
            flat = (flat != 0).view(np.uint8)
        return flat
    return (mask != 0).ravel().view(np.uint8)


def _word_ranges(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Concatenated aranges [start, end) without a Python loop."""
    lengths = ends - starts
    offsets = np.repeat(starts - np.cumsum(lengths) + lengths, lengths)
    return offsets + np.arange(int(lengths.sum()))


def _changes(flat: np.ndarray) -> np.ndarray:
    """0-based indices p where flat[p] != flat[p - 1] (flat[-1] taken as 0), ascending."""
    n = flat.size
    n8 = n - n % 8
    found = []
    if n8:
        # A car mask is mostly long constant runs: compare 8 pixels at a time as one uint64 and
        # look at single bytes only in the few words where something changes.
        words = flat[:n8].view(np.uint64)
        starts = np.concatenate(([0], np.flatnonzero(words[1:] != words[:-1]) + 1))
        values = words[starts]
        mixed = (values != 0) & (values != ONES)
        ends = np.where(mixed, np.append(starts[1:], words.size), starts + 1)
        # Candidates, ascending: the first word of every segment of equal words (a change may
        # sit on its first byte), and every word of a segment whose words are not constant.
        candidates = _word_ranges(starts, ends)
        pos = (candidates[:, None] * 8 + np.arange(8)).ravel()
        current = flat[pos]
        previous = flat[np.maximum(pos - 1, 0)]
        if candidates[0] == 0:
            previous[0] = 0
        found.append(pos[current != previous])
    if n8 < n:  # the last n % 8 pixels
        tail = np.arange(n8, n)
        previous = flat[n8 - 1 : n - 1] if n8 else np.concatenate(([0], flat[: n - 1]))
        found.append(tail[flat[n8:] != previous])
    if n and flat[-1]:
        found.append(np.array([n]))
    return np.concatenate(found) if found else np.zeros(0, np.int64)


def encode(mask: np.ndarray) -> str:
    """Encode a 2-D mask (any non-zero value counts as car) as a Carvana RLE string."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (height, width), got shape {mask.shape}")
    changes = _changes(_binary_bytes(mask)).astype(np.int64)
    changes[1::2] -= changes[::2]  # end positions become run lengths
    changes[::2] += 1  # 1-indexed starts
    values = changes.tolist()
    return ("%d " * len(values) % tuple(values))[:-1]  # faster than " ".join(map(str, ...))


MAX_DIGITS = 18  # 10**18 - 1 fits int64 with room: no sum of two checked values can wrap
# Digits and single spaces with no number over MAX_DIGITS digits, as every encoder writes: numpy
# parses it ~8x faster than int() per token (100,064 rows to validate) and cannot overflow.
_FAST = re.compile(rf"[0-9]{{1,{MAX_DIGITS}}}(?: [0-9]{{1,{MAX_DIGITS}}})*", re.ASCII)
_PLAIN = re.compile(r"[0-9]+", re.ASCII)
GRAMMAR = "RLE is ASCII digits 0-9 separated by single spaces"


def _parse_fast(text: str) -> np.ndarray | None:
    """Values of a string the numpy parser reads exactly, else None (the general path decides)."""
    if not _FAST.fullmatch(text):
        return None
    return np.fromstring(text, dtype=np.int64, sep=" ")


def _parse_general(text: str) -> np.ndarray:
    """Values of any string by the strict grammar, or RLEError naming the first offence."""
    if not text:
        return np.zeros(0, dtype=np.int64)
    if not text.strip(" "):
        raise RLEError("only spaces: the empty mask is the empty string")
    if text[0] == " ":
        raise RLEError(f"leading space: {GRAMMAR}")
    if text[-1] == " ":
        raise RLEError(f"trailing space: {GRAMMAR}")
    values = []
    position = 1  # 1-based character position of the current token
    for k, token in enumerate(text.split(" "), 1):
        if not token:
            raise RLEError(f"two spaces in a row at character {position - 1}: {GRAMMAR}")
        if not _PLAIN.fullmatch(token):
            shown = token if len(token) <= 24 else token[:24] + "..."
            raise RLEError(f"value {k} {shown!r} is not a plain number: {GRAMMAR}")
        digits = token.lstrip("0") or "0"
        if len(digits) > MAX_DIGITS:  # before int(): no overflow, no int() digit limit
            what = "start" if k % 2 else "length"
            shown = digits if len(digits) <= 24 else digits[:24] + "..."
            raise RLEError(
                f"pair {(k + 1) // 2}: {what} {shown} ({len(digits)} digits) is beyond any mask"
            )
        values.append(int(digits))
        position += len(token) + 1
    return np.array(values, dtype=np.int64)


def parse(rle) -> np.ndarray:
    """Parse an RLE string into an (n, 2) int64 array of (start, length); "" or NaN gives none."""
    if rle is None or (isinstance(rle, float) and np.isnan(rle)):
        return np.zeros((0, 2), dtype=np.int64)
    if not isinstance(rle, str):
        raise RLEError(f"RLE must be a string, got {type(rle).__name__}")
    values = _parse_fast(rle)
    if values is None:
        values = _parse_general(rle)
    if values.size % 2:
        raise RLEError(f"odd number of values ({values.size}): RLE needs `start length` pairs")
    return values.reshape(-1, 2)


def _first(bad: np.ndarray) -> int | None:
    found = np.flatnonzero(bad)
    return int(found[0]) if found.size else None


def validate(rle, shape: tuple[int, int] = ORIGINAL_SHAPE) -> np.ndarray:
    """Check an RLE string against a mask shape; return its (start, length) pairs or raise."""
    pairs = parse(rle)
    if not len(pairs):
        return pairs
    starts, lengths = pairs[:, 0], pairs[:, 1]
    size = int(shape[0]) * int(shape[1])
    mask = f"{shape[0]}x{shape[1]} mask ({size} pixels)"
    # Every value is within the mask before any sum, so nothing below can wrap around. The
    # min/max test is one pass; the offending pair is looked for only when there is one.
    if min(starts.min(), lengths.min()) < 1 or max(starts.max(), lengths.max()) > size:
        for bad, what in (
            (starts < 1, "start {} is not positive (1-indexed)"),
            (lengths < 1, "length {} is not positive"),
            (starts > size, "start {} is beyond the " + mask),
            (lengths > size, "length {} is longer than the " + mask),
        ):
            i = _first(bad)
            if i is not None:
                value = starts[i] if what.startswith("start") else lengths[i]
                raise RLEError(f"pair {i + 1}: " + what.format(value))
    ends = starts + lengths - 1
    i = _first(starts[1:] <= starts[:-1])
    if i is not None:
        raise RLEError(
            f"pair {i + 2}: start {starts[i + 1]} is not after previous start {starts[i]}"
        )
    i = _first(starts[1:] <= ends[:-1])
    if i is not None:
        raise RLEError(
            f"pair {i + 2}: run starting at {starts[i + 1]} overlaps the run ending at {ends[i]}"
        )
    if ends[-1] > size:
        raise RLEError(f"last run ends at pixel {ends[-1]}, beyond the {shape[0]}x{shape[1]} mask")
    return pairs


def decode(rle, shape: tuple[int, int] = ORIGINAL_SHAPE) -> np.ndarray:
    """Decode a Carvana RLE string into a (height, width) uint8 mask of 0/1."""
    pairs = validate(rle, shape)
    flat = np.zeros(int(shape[0]) * int(shape[1]), dtype=np.uint8)
    for start, length in pairs.tolist():
        flat[start - 1 : start - 1 + length] = 1
    return flat.reshape(shape)


def dice(pred: np.ndarray, true: np.ndarray) -> float:
    """Dice coefficient of two binary masks; 1.0 when both are empty (Kaggle's convention)."""
    p = np.asarray(pred, dtype=bool)
    t = np.asarray(true, dtype=bool)
    total = int(p.sum()) + int(t.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(p, t).sum()) / total
