"""A run's history.csv (one row per epoch, written by Keras's CSVLogger) and its curves.png."""

from __future__ import annotations

import csv
from pathlib import Path

import keras

from carvana.files import atomic_write

HISTORY_FILE = "history.csv"
CURVES_FILE = "curves.png"


class HistoryCSV(keras.callbacks.CSVLogger):
    """CSVLogger appending to history.csv across resumes, epochs numbered from 1."""

    def __init__(self, path: Path, epochs_kept: int):
        super().__init__(str(path), append=True)
        self.path, self.epochs_kept = Path(path), epochs_kept

    def on_train_begin(self, logs=None):
        # Rows after the checkpoint's epoch belong to a run that did not get to save it.
        columns = _trim(self.path, self.epochs_kept)
        super().on_train_begin(logs)
        if columns:
            self.keys = columns[1:]  # resumed rows line up with the file's header

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch + 1, logs)


def _trim(path: Path, epochs: int) -> list[str]:
    """Keep the rows of the first `epochs` epochs; returns the header ([] when no file is left)."""
    if not path.exists() or epochs == 0:
        path.unlink(missing_ok=True)
        return []
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        columns, rows = list(reader.fieldnames or []), list(reader)
    kept = [r for r in rows if int(float(r["epoch"])) <= epochs]

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as out:
            writer = csv.DictWriter(out, columns)
            writer.writeheader()
            writer.writerows(kept)

    atomic_write(path, write)
    return columns


def read_history(path: Path) -> list[dict]:
    """Rows of a history.csv (values as floats; epoch as int); [] when missing."""
    path = Path(path)
    if not path.exists():
        return []
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    # CSVLogger writes NA for a metric an epoch did not have (no validation data).
    return [
        {
            k: (int(float(v)) if k == "epoch" else float(v))
            for k, v in r.items()
            if v not in ("", "NA")
        }
        for r in rows
    ]


def plot_curves(history_path: Path, out: Path) -> Path:
    """Learning curves (loss, Dice, accuracy; training and validation) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_history(history_path)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, key in zip(axes, ("loss", "dice", "accuracy"), strict=True):
        for prefix, style, label in (("", "-o", "training"), ("val_", "-s", "validation")):
            points = [(r["epoch"], r[prefix + key]) for r in rows if prefix + key in r]
            if points:
                ax.plot(*zip(*points, strict=True), style, ms=3, label=label)
        ax.set_title(key)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out
