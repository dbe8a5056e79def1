"""Carvana RLE: hand-computed cases, the validator's messages, and round-trip properties."""

import math
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from carvana import rle


def kaggle_encode(mask):
    """The widely used Kaggle encoder, as an independent reference."""
    pixels = np.concatenate([[0], mask.flatten(), [0]])
    runs = np.where(pixels[1:] != pixels[:-1])[0] + 1
    runs[1::2] -= runs[::2]
    return " ".join(str(x) for x in runs)


M = np.array
CASES = [
    ("empty", M([[0, 0], [0, 0]]), ""),
    ("full 2x2", M([[1, 1], [1, 1]]), "1 4"),
    ("first pixel", M([[1, 0, 0], [0, 0, 0]]), "1 1"),
    ("last pixel", M([[0, 0, 0], [0, 0, 1]]), "6 1"),
    ("top row is row-major", M([[1, 1, 0], [0, 0, 0]]), "1 2"),
    ("left column is not contiguous row-major", M([[1, 0, 0], [1, 0, 0]]), "1 1 4 1"),
    ("run crossing the row end", M([[0, 1, 1], [1, 0, 1]]), "2 3 6 1"),
    ("alternating", M([[1, 0, 1], [0, 1, 0]]), "1 1 3 1 5 1"),
    ("any non-zero is car", M([[0, 255], [7, 0]]), "2 2"),
    ("single pixel mask", M([[1]]), "1 1"),
    ("one column", M([[0], [1], [1]]), "2 2"),
]


@pytest.mark.parametrize("name,mask,expected", CASES, ids=[c[0] for c in CASES])
def test_encode_hand_computed(name, mask, expected):
    assert rle.encode(mask) == expected
    shape = mask.shape
    assert np.array_equal(rle.decode(expected, shape), (mask != 0).astype(np.uint8))


def test_row_major_differs_from_column_major():
    mask = M([[1, 1, 0], [0, 0, 0]])
    assert rle.encode(mask) == "1 2"
    assert rle.encode(mask.T.copy()) == "1 1 3 1"  # the column-major reading of the same car
    assert rle.encode(np.asfortranarray(mask)) == "1 2"  # memory order does not matter


def test_encode_accepts_bool_and_views():
    mask = np.zeros((4, 6), bool)
    mask[1:3, 2:5] = True
    assert rle.encode(mask) == "9 3 15 3"
    assert rle.encode(mask[:, ::-1]) == "8 3 14 3"


@pytest.mark.parametrize("period", [2, 3, 4, 8, 16, 24])
def test_long_periodic_masks(period):
    tile = np.zeros(period, np.uint8)
    tile[: period // 2 or 1] = 1
    mask = np.resize(tile, 64 * 67).reshape(64, 67)
    assert rle.encode(mask) == kaggle_encode(mask)


@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.float32, bool])
def test_dtypes_and_values(dtype):
    rng = np.random.default_rng(0)
    base = (rng.random((37, 53)) > 0.6).astype(np.uint8)
    mask = (base * (255 if dtype is np.uint8 else 1)).astype(dtype)
    assert rle.encode(mask) == kaggle_encode(base)
    assert rle.encode(np.asfortranarray(mask)) == kaggle_encode(base)
    assert rle.encode(mask.tolist()) == kaggle_encode(base)


def test_full_size_car_like_mask():
    mask = np.zeros(rle.ORIGINAL_SHAPE, np.uint8)
    mask[300:1000, 200:1700] = 1
    mask[1000:1100, 350:500] = 1
    code = rle.encode(mask)
    assert code == kaggle_encode(mask)
    assert code.split()[:2] == [str(300 * 1918 + 201), "1500"]
    assert np.array_equal(rle.decode(code), mask)


def test_encode_rejects_non_2d():
    with pytest.raises(ValueError, match="2-D"):
        rle.encode(np.zeros((2, 2, 3)))


def test_decode_dtype_and_shape():
    out = rle.decode("2 2", (2, 3))
    assert out.dtype == np.uint8 and out.shape == (2, 3)
    assert out.tolist() == [[0, 1, 1], [0, 0, 0]]


@pytest.mark.parametrize("empty", [None, math.nan, float("nan"), ""])
def test_missing_rle_decodes_to_zeros(empty):
    out = rle.decode(empty, (3, 4))
    assert out.shape == (3, 4) and not out.any()


def test_adjacent_runs_are_valid():
    assert rle.decode("1 2 3 1", (2, 3)).ravel().tolist() == [1, 1, 1, 0, 0, 0]


BAD = [
    ("1 2 3", "odd number of values \\(3\\)"),
    ("1 2.5", "value 2 '2.5' is not a plain number"),
    ("a 1", "value 1 'a' is not a plain number"),
    ("0 2", "pair 1: start 0 is not positive"),
    ("-3 2", "value 1 '-3' is not a plain number"),
    ("1 0", "pair 1: length 0 is not positive"),
    ("2 1 4 -1", "value 4 '-1' is not a plain number"),
    ("5 1 2 1", "pair 2: start 2 is not after previous start 5"),
    ("3 1 3 1", "pair 2: start 3 is not after previous start 3"),
    ("1 3 2 1", "pair 2: run starting at 2 overlaps the run ending at 3"),
    ("5 3", "ends at pixel 7, beyond the 2x3 mask"),
    ("7 1", "pair 1: start 7 is beyond the 2x3 mask \\(6 pixels\\)"),
    ("1 7", "pair 1: length 7 is longer than the 2x3 mask \\(6 pixels\\)"),
    # The strict grammar: ASCII digits 0-9 separated by single spaces, nothing else.
    ("+1 2", "value 1 '\\+1' is not a plain number"),
    ("1_0 2", "value 1 '1_0' is not a plain number"),
    ("1\t2", "value 1 '1\\\\t2' is not a plain number"),
    ("1\n2", "is not a plain number"),
    ("\u0661 2", "value 1 '\u0661' is not a plain number"),  # ARABIC-INDIC DIGIT ONE
    ("\uff11 2", "value 1 '\uff11' is not a plain number"),  # FULLWIDTH DIGIT ONE
    ("\u00b9 2", "is not a plain number"),  # SUPERSCRIPT ONE: str.isdigit() says yes
    ("1 2 ", "trailing space"),
    (" 1 2", "leading space"),
    ("1  2", "two spaces in a row at character 2"),
    ("   ", "only spaces: the empty mask is the empty string"),
    ("1,2", "value 1 '1,2' is not a plain number"),
]


@pytest.mark.parametrize("code,message", BAD)
def test_validator_rejects(code, message):
    with pytest.raises(rle.RLEError, match=message):
        rle.validate(code, (2, 3))
    with pytest.raises(ValueError, match=message):  # RLEError is a ValueError for the CLI
        rle.decode(code, (2, 3))


def test_validator_rejects_non_string():
    with pytest.raises(rle.RLEError, match="must be a string, got int"):
        rle.validate(12, (2, 3))


def test_validate_returns_pairs():
    assert rle.validate("1 2 5 2", (2, 3)).tolist() == [[1, 2], [5, 2]]


def test_dice():
    a = M([[1, 1], [0, 0]])
    b = M([[1, 0], [1, 0]])
    assert rle.dice(a, b) == pytest.approx(0.5)
    assert rle.dice(a, a) == 1.0
    assert rle.dice(np.zeros((2, 2)), np.zeros((2, 2))) == 1.0
    assert rle.dice(a, np.zeros((2, 2))) == 0.0


@st.composite
def masks(draw):
    h = draw(st.integers(1, 20))
    w = draw(st.integers(1, 20))
    kind = draw(st.sampled_from(["random", "blob", "pattern"]))
    if kind == "random":
        return draw(arrays(np.uint8, (h, w), elements=st.integers(0, 1)))
    if kind == "pattern":  # a short period repeated: many equal 8-pixel words that are not constant
        period = draw(st.sampled_from([1, 2, 3, 4, 8, 16]))
        tile = draw(arrays(np.uint8, period, elements=st.integers(0, 1)))
        return np.resize(tile, h * w).reshape(h, w)
    # A filled rectangle: long runs crossing rows, like a car.
    r0, r1 = sorted(draw(st.integers(0, h)) for _ in range(2))
    c0, c1 = sorted(draw(st.integers(0, w)) for _ in range(2))
    mask = np.zeros((h, w), np.uint8)
    mask[r0:r1, c0:c1] = 1
    return mask


@settings(max_examples=300, deadline=None)
@given(masks())
def test_round_trip(mask):
    code = rle.encode(mask)
    pairs = rle.validate(code, mask.shape)
    assert pairs[:, 1].sum() == mask.sum()
    assert np.array_equal(rle.decode(code, mask.shape), mask)
    assert code == kaggle_encode(mask)


@settings(max_examples=100, deadline=None)
@given(masks())
def test_decode_then_encode_is_identity(mask):
    code = kaggle_encode(mask)
    assert rle.encode(rle.decode(code, mask.shape)) == code


# -- numbers too large for int64 arithmetic ------------------------------------------------------
HUGE = [
    # start + length - 1 = 2**63 wraps negative in int64: this passed as valid and decoded empty.
    (
        "4611686018427387905 4611686018427387905",
        "pair 1: start 4611686018427387905 \\(19 digits\\) is beyond any mask",
    ),
    (
        "9223372036854775807 1",
        "pair 1: start 9223372036854775807 \\(19 digits\\) is beyond any mask",
    ),
    (
        "1 1 3 9223372036854775807",
        "pair 2: length 9223372036854775807 \\(19 digits\\) is beyond any mask",
    ),
    (
        "99999999999999999999 1",
        "pair 1: start 99999999999999999999 \\(20 digits\\) is beyond any mask",
    ),
    ("99999999999999999999  1", "beyond any mask|two spaces"),  # OverflowError before
    ("1 2\t99999999999999999999", "not a plain number"),  # OverflowError before
    ("9" * 5000 + " 1", "5000 digits"),  # beyond Python's int() digit limit
]


@pytest.mark.parametrize("code,message", HUGE, ids=[c[:24] for c, _ in HUGE])
def test_huge_values_are_rejected_before_any_arithmetic(code, message):
    with pytest.raises(rle.RLEError, match=message):
        rle.validate(code, rle.ORIGINAL_SHAPE)
    with pytest.raises(rle.RLEError, match=message):
        rle.decode(code, (2, 3))


def test_leading_zeros_are_digits():
    assert rle.validate("01 2 0000000000000000000000004 1", (2, 3)).tolist() == [[1, 2], [4, 1]]


def test_run_ending_on_the_last_pixel_is_valid():
    assert rle.validate("1 6", (2, 3)).tolist() == [[1, 6]]
    assert rle.decode("6 1", (2, 3)).ravel().tolist() == [0, 0, 0, 0, 0, 1]


# -- the fast numpy parse and the general parse agree --------------------------------------------
GRAMMAR = re.compile(r"(?:[0-9]+(?: [0-9]+)*)?", re.ASCII)


def reference_values(text: str):
    """The grammar written out plainly: a list of ints, or None when the string is rejected."""
    if not GRAMMAR.fullmatch(text):
        return None
    values = [int(t.lstrip("0") or "0") for t in text.split(" ")] if text else []
    return None if any(v >= 10**18 for v in values) else values


def outcome(fn, text):
    try:
        return fn(text).ravel().tolist()
    except rle.RLEError:
        return None


TOKENS = st.one_of(
    st.integers(0, 40).map(str),
    st.integers(0, 2**70).map(str),
    st.sampled_from(
        [
            "0",
            "00",
            "007",
            "999999999999999999",
            "1000000000000000000",
            "4611686018427387905",
            "9223372036854775807",
            "9223372036854775808",
            "18446744073709551617",
            "+1",
            "-1",
            "1_0",
            "1.0",
            "1e3",
            "0x1",
            "\u0661",
            "\uff11",
            "\u00b9",
            "\u0663\u0662",
            "nan",
            "",
        ]
    ),  # fmt: skip
)
SEPARATORS = st.sampled_from([" ", " ", " ", "  ", "\t", "\n", "\r", "\u00a0", "\u2003", ","])


@st.composite
def adversarial(draw):
    tokens = draw(st.lists(TOKENS, max_size=8))
    text = ""
    for k, token in enumerate(tokens):
        text += (draw(SEPARATORS) if k else "") + token
    if draw(st.booleans()):
        text = draw(st.sampled_from(["", " ", "\t", "\ufeff"])) + text
    if draw(st.booleans()):
        text += draw(st.sampled_from(["", " ", "\n", "\x00"]))
    return text


@settings(max_examples=500, deadline=None)
@given(st.one_of(adversarial(), masks().map(rle.encode), st.text(max_size=12)))
def test_fast_and_general_parse_agree_with_the_grammar(text):
    expected = reference_values(text)
    assert outcome(rle._parse_general, text) == expected
    fast = rle._parse_fast(text)
    if fast is not None:  # the fast path only takes strings it can parse exactly
        assert fast.tolist() == expected
    pairs = None if expected is None or len(expected) % 2 else expected
    assert outcome(rle.parse, text) == pairs


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(st.integers(-3, 30), st.integers(0, 2**64), st.sampled_from([2**62 + 1, 2**63])),
        max_size=8,
    ),
    st.integers(1, 6),
    st.integers(1, 6),
)
def test_validate_agrees_with_exact_integer_arithmetic(values, h, w):
    text = " ".join(map(str, values))
    size = h * w
    pairs = list(zip(values[::2], values[1::2], strict=False))
    ok = (
        len(values) % 2 == 0
        and all(v >= 0 and v < 10**18 for v in values)
        and all(1 <= s <= size and 1 <= n <= size and s + n - 1 <= size for s, n in pairs)
        and all(b[0] > a[0] + a[1] - 1 for a, b in zip(pairs, pairs[1:], strict=False))
    )  # Python ints: no overflow
    try:
        got = rle.validate(text, (h, w)).ravel().tolist()
    except rle.RLEError:
        got = None
    assert got == (values if ok else None)
