"""Text to setting values, one parser per kind of value (sizes, shards, stages, on/off,
numbers); each raises ValueError saying what the text should look like. No TensorFlow."""

from __future__ import annotations

import math

TRUE_WORDS, FALSE_WORDS = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def parse_size(text: str) -> tuple[int, int]:
    """Parse 'HxW' (e.g. '160x240') into (height, width)."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"size must look like HxW (e.g. 160x240), got {text!r}") from None
    if h < 1 or w < 1:
        raise ValueError(f"size must be positive, got {text!r}")
    return h, w


def parse_shard(text: str) -> tuple[int, int]:
    """Parse 'i/n' (e.g. '0/4') into (i, n)."""
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise ValueError(f"shard must look like i/n (e.g. 0/4), got {text!r}") from None
    return i, n


def parse_stages(text: str) -> tuple[tuple[float, float], ...]:
    """Parse progressive resizing's 'SCALE@UNTIL,...' (e.g. '0.5@0.3,0.67@0.7') into (scale,
    until) pairs: scales of image_size and schedule fractions, both rising within (0, 1);
    '', 'off' or 'none': no stages."""
    if text.strip().lower() in ("off", "none"):
        return ()
    stages = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            scale, until = (float(v) for v in part.split("@"))
        except ValueError:
            raise ValueError(
                f"stage {part!r} must look like SCALE@UNTIL (e.g. 0.67@0.7: two thirds of "
                "image_size until 70% of the schedule)"
            ) from None
        last_scale, last_until = stages[-1] if stages else (0.0, 0.0)
        if not (last_scale < scale < 1 and last_until < until < 1):
            raise ValueError(f"stage {part!r}: scales and fractions must rise, each within (0, 1)")
        stages.append((scale, until))
    return tuple(stages)


def parse_bool(text: str) -> bool:
    """Parse on/off (also 1/0, true/false, yes/no)."""
    word = text.strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise ValueError(f"expected on/off, got {text!r}")


def parse_number(text: str, kind: type):
    """Parse an int or a finite float (`kind`)."""
    try:
        value = kind(text.strip())
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise ValueError(f"expected {what}, got {text!r}") from None
    if kind is float and not math.isfinite(value):
        raise ValueError(f"expected a finite number, got {text!r}")
    return value
