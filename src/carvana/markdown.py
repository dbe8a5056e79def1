"""Markdown tables for the reports (EDA, evaluation, run comparison). No TensorFlow here."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value).replace("|", "\\|").replace("\n", " ")


def markdown_table(header: Sequence, rows: Iterable[Sequence]) -> str:
    """A GitHub markdown table; None/NaN cells are empty, `|` and newlines are escaped."""
    lines = ["| " + " | ".join(_cell(c) for c in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def frame_table(frame) -> str:
    """A pandas DataFrame as a markdown table (pandas' own to_markdown needs tabulate)."""
    return markdown_table(list(frame.columns), frame.itertuples(index=False))
