"""A run's records: history.csv (one row per epoch, written by Keras's CSVLogger), curves.png,
and TensorBoard logs in tensorboard/ (the epoch scalars, and validation images beside their
true and predicted masks) to follow the curves while a run (or a kernel) goes on."""

from __future__ import annotations

import csv
import time
from pathlib import Path

import keras
import numpy as np

from carvana.files import atomic_write

HISTORY_FILE = "history.csv"
CURVES_FILE = "curves.png"
TENSORBOARD_DIR = "tensorboard"
IMAGES_TAG = "validation/image_mask_prediction"


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


def _metadata(plugin: str):
    from tensorflow.core.framework import summary_pb2

    # What TensorBoard's own scalar and image summaries declare; written with TensorFlow's
    # tf.summary.write, so the logs need no `tensorboard` package (only viewing them does).
    return summary_pb2.SummaryMetadata(plugin_data={"plugin_name": plugin})


class TensorBoardLog(keras.callbacks.Callback):
    """TensorBoard logs of a run: each epoch's logs as scalars (train/ and validation/, with
    Keras's epoch_ tags) and a few validation images beside their true mask and the predicted
    probability (inference mode), side by side (images/): after the first epoch, then after the
    first epoch that ends `image_seconds` after the last pictures, and after the last epoch."""

    def __init__(self, log_dir: Path, examples=None, size=None, image_seconds: float = 30.0):
        super().__init__()
        self.dir, self.examples, self.size = Path(log_dir), examples, size
        # Pictures cost a forward pass and PNGs (~80 ms at 160x256): for 6 s epochs, writing
        # them every epoch took 1.4% of the training time.
        self.image_seconds = image_seconds
        self.pictured_at: float | None = None
        self.unpictured: int | None = None  # the last epoch, when it has no pictures yet
        self.writers: dict = {}

    def _write(self, folder: str, tag: str, value, step: int, plugin: str) -> None:
        import tensorflow as tf

        if folder not in self.writers:
            self.writers[folder] = tf.summary.create_file_writer(str(self.dir / folder))
        with self.writers[folder].as_default():
            tf.summary.write(tag, value, step=step, metadata=_metadata(plugin))

    def on_epoch_end(self, epoch, logs=None):
        import tensorflow as tf

        for key, value in (logs or {}).items():
            folder = "validation" if key.startswith("val_") else "train"
            name = "epoch_" + key.removeprefix("val_")
            self._write(folder, name, tf.constant(float(value), tf.float32), epoch, "scalars")
        if self.examples is not None:
            now = time.monotonic()
            if self.pictured_at is None or now - self.pictured_at >= self.image_seconds:
                self._write("images", IMAGES_TAG, self._pictures(), epoch, "images")
                self.pictured_at, self.unpictured = now, None
            else:
                self.unpictured = epoch
        for writer in self.writers.values():
            writer.flush()

    def _pictures(self):
        """[width, height, PNG...]: image | mask | prediction of each example, as TensorBoard's
        image summaries store them."""
        import tensorflow as tf

        images, masks = self.examples
        h, w = self.size  # the padding is cropped off
        logits = self.model(tf.constant(images, tf.float32), training=False)
        probability = tf.sigmoid(tf.cast(logits, tf.float32))[:, :h, :w, 0].numpy()
        pngs = []
        for image, mask, prob in zip(images, masks, probability, strict=True):
            gray = [255.0 * np.repeat(m.reshape(h, w, 1), 3, -1) for m in (mask[:h, :w], prob)]
            side = np.concatenate([image[:h, :w].astype(np.float32), *gray], axis=1)
            pngs.append(tf.io.encode_png(side.round().astype(np.uint8)))
        return tf.stack([tf.constant(str(3 * w)), tf.constant(str(h)), *pngs])

    def on_train_end(self, logs=None):
        if self.unpictured is not None:  # the model as it ended
            self._write("images", IMAGES_TAG, self._pictures(), self.unpictured, "images")
            self.unpictured = None
        for writer in self.writers.values():
            writer.close()
        self.writers = {}
