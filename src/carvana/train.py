"""Training: split by car, BCE + Dice loss, Dice/accuracy metrics, checkpoints and resume.

A run folder gets config.json (with the detected original size and the car split),
model.keras (best epoch by validation Dice, float32, no optimizer: what predict loads),
history.csv, curves.png and checkpoint/ (last epoch's weights with the optimizer state, and
the epoch counters) from which an interrupted run resumes. Importing this module does nothing.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from carvana.config import MODEL_FILE, TrainConfig
from carvana.files import car_id, split_by_car

HISTORY_FILE = "history.csv"
CURVES_FILE = "curves.png"
CHECKPOINT_DIR = "checkpoint"
CALIBRATION_BATCHES = 8  # batches averaged to re-estimate BatchNormalization statistics
# Settings that may change between an interrupted run and its resumption.
RESUMABLE_CHANGES = ("epochs", "patience")


# -- losses and metrics ---------------------------------------------------------------------
def soft_dice(y_true, logits, smooth: float = 1.0):
    """Per-image soft Dice of sigmoid(logits) against 0/1 masks, shape (batch,)."""
    prob = tf.sigmoid(tf.cast(logits, tf.float32))
    y_true = tf.cast(y_true, tf.float32)
    inter = tf.reduce_sum(prob * y_true, axis=(1, 2, 3))
    total = tf.reduce_sum(prob, axis=(1, 2, 3)) + tf.reduce_sum(y_true, axis=(1, 2, 3))
    return (2 * inter + smooth) / (total + smooth)


@keras.saving.register_keras_serializable(package="carvana")
def bce_dice_loss(y_true, logits):
    """Binary cross-entropy on logits plus (1 - soft Dice), per image."""
    y_true = tf.cast(y_true, tf.float32)
    logits = tf.cast(logits, tf.float32)
    bce = tf.reduce_mean(
        tf.nn.sigmoid_cross_entropy_with_logits(labels=y_true, logits=logits), axis=(1, 2, 3)
    )
    return bce + 1.0 - soft_dice(y_true, logits)


@keras.saving.register_keras_serializable(package="carvana")
class DiceMetric(keras.metrics.Metric):
    """Mean per-image Dice of thresholded predictions (logit > 0, i.e. probability > 0.5),
    the competition's measure at the model's resolution; 1 when both masks are empty."""

    def __init__(self, name="dice", **kwargs):
        super().__init__(name=name, **kwargs)
        self.total = self.add_variable(shape=(), initializer="zeros", name="total")
        self.count = self.add_variable(shape=(), initializer="zeros", name="count")

    def update_state(self, y_true, y_pred, sample_weight=None):
        pred = tf.cast(tf.cast(y_pred, tf.float32) > 0, tf.float32)
        y_true = tf.cast(y_true, tf.float32)
        inter = tf.reduce_sum(pred * y_true, axis=(1, 2, 3))
        total = tf.reduce_sum(pred, axis=(1, 2, 3)) + tf.reduce_sum(y_true, axis=(1, 2, 3))
        dice = tf.where(total > 0, 2 * inter / tf.maximum(total, 1.0), 1.0)
        self.total.assign_add(tf.reduce_sum(dice))
        self.count.assign_add(tf.cast(tf.shape(dice)[0], tf.float32))

    def result(self):
        return self.total / tf.maximum(self.count, 1.0)

    def reset_state(self):
        self.total.assign(0.0)
        self.count.assign(0.0)


def compile_model(model: keras.Model, config: TrainConfig, steps: int) -> None:
    """Adam with cosine decay over the planned steps, BCE + Dice loss, Dice and accuracy."""
    schedule = keras.optimizers.schedules.CosineDecay(
        config.learning_rate, decay_steps=max(1, steps), alpha=0.02
    )
    model.compile(
        optimizer=keras.optimizers.Adam(schedule),
        # XLA on CPU compiles for a minute and then trains slower; keep it for accelerators.
        jit_compile="auto" if tf.config.list_logical_devices("GPU") else False,
        loss=bce_dice_loss,
        metrics=[DiceMetric(), keras.metrics.BinaryAccuracy(name="accuracy", threshold=0.0)],
    )


def recalibrate_bn(model: keras.Model, dataset) -> int:
    """Re-estimate every BatchNormalization's moving statistics as the plain average of the
    batch statistics over `dataset` at the current weights (no weight update); returns the
    number of batches used."""
    from carvana.models import iter_layers

    bns = [
        layer for layer in iter_layers(model) if isinstance(layer, keras.layers.BatchNormalization)
    ]
    if not bns:
        return 0
    saved = [bn.momentum for bn in bns]
    k = 0
    try:
        for k, (x, _) in enumerate(dataset, 1):
            for bn in bns:
                bn.momentum = (k - 1) / k  # running mean of the k batches seen so far
            model(x, training=True)  # eager: the momentum is read at call time
    finally:
        for bn, momentum in zip(bns, saved, strict=True):
            bn.momentum = momentum
    return k


# -- hardware -------------------------------------------------------------------------------
def pick_strategy() -> tf.distribute.Strategy:
    """TPUStrategy when a TPU is attached, MirroredStrategy for several GPUs, else default."""
    # Only look for a TPU when one is announced: the resolver otherwise probes the network.
    tpu = os.environ.get("TPU_NAME") or (
        "local" if tf.config.list_physical_devices("TPU") else None
    )
    if tpu:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    if len(tf.config.list_logical_devices("GPU")) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


class _Policy:
    """Context manager setting Keras's global dtype policy and restoring it afterwards."""

    def __init__(self, name: str):
        self.name = name

    def __enter__(self):
        self.saved = keras.mixed_precision.dtype_policy().name
        keras.mixed_precision.set_dtype_policy(self.name)

    def __exit__(self, *exc):
        keras.mixed_precision.set_dtype_policy(self.saved)


# -- split ----------------------------------------------------------------------------------
def choose_cars(ids: list[str], config: TrainConfig) -> tuple[list[str], list[str]]:
    """(train ids, validation ids): max_cars picks a deterministic subset first, then a split
    by car; a config that already names its cars (a resumed run) keeps them."""
    if config.train_cars or config.val_cars:
        train_set, val_set = set(config.train_cars), set(config.val_cars)
        return [i for i in ids if car_id(i) in train_set], [i for i in ids if car_id(i) in val_set]
    cars = sorted({car_id(i) for i in ids})
    if config.max_cars and config.max_cars < len(cars):
        order = np.random.default_rng(config.seed).permutation(len(cars))
        keep = {cars[i] for i in order[: config.max_cars]}
        ids = [i for i in ids if car_id(i) in keep]
    return split_by_car(ids, config.val_fraction, config.seed)


# -- callbacks ------------------------------------------------------------------------------
class TimeLimit(keras.callbacks.Callback):
    """Stop training (after the current batch, still validating) once `seconds` have passed."""

    def __init__(self, seconds: float):
        super().__init__()
        self.seconds = seconds
        self.began = None

    def on_train_begin(self, logs=None):
        self.began = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        if time.perf_counter() - self.began >= self.seconds:
            self.model.stop_training = True


class RunRecorder(keras.callbacks.Callback):
    """Per epoch: BN recalibration, history row, best model, last checkpoint, early stopping,
    progress line."""

    def __init__(
        self,
        run_dir: Path,
        config: TrainConfig,
        export: keras.Model,
        state: dict,
        monitor: str,
        log: Callable[[str], None] | None,
        calibration=None,
    ):
        super().__init__()
        self.calibration = calibration
        self.run_dir, self.config, self.export = run_dir, config, export
        self.state, self.monitor, self.log = state, monitor, log
        self.began = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self.began = time.perf_counter()
        self.calibrated = False

    def _calibrate(self):
        # From scratch, the moving statistics trail weights that change fast: inference-mode
        # outputs can be empty while training-mode ones are right. Validation, the saved
        # model and prediction all run in inference mode, so re-estimate them first.
        if self.calibration is not None and not self.calibrated:
            recalibrate_bn(self.model, self.calibration)
            self.calibrated = True

    def on_test_begin(self, logs=None):
        self._calibrate()

    def on_epoch_end(self, epoch, logs=None):
        self._calibrate()  # runs do without validation data too
        logs = dict(logs or {})
        seconds = time.perf_counter() - self.began
        lr = self.model.optimizer.learning_rate
        row = {
            "epoch": epoch + 1,
            **{k: float(v) for k, v in logs.items()},
            "learning_rate": float(lr.numpy() if hasattr(lr, "numpy") else lr),
            "seconds": round(seconds, 3),
        }
        _append_history(self.run_dir / HISTORY_FILE, row)
        score = float(logs.get(self.monitor, float("nan")))
        state = self.state
        improved = not math.isnan(score) and score > state["best"]
        if improved:
            state.update(best=score, best_epoch=epoch + 1, wait=0)
            self.export.set_weights(self.model.get_weights())
            _atomic(self.run_dir / MODEL_FILE, self.export.save)
        else:
            state["wait"] += 1
        state["epoch"] = epoch + 1
        if state["wait"] >= self.config.patience:
            state["stopped"] = True
            self.model.stop_training = True
        ckpt = self.run_dir / CHECKPOINT_DIR
        _atomic(ckpt / "last.weights.h5", self.model.save_weights)
        _atomic(ckpt / "state.json", lambda p: Path(p).write_text(json.dumps(state, indent=1)))
        if self.log:
            shown = "  ".join(f"{k} {v:.4f}" for k, v in logs.items())
            mark = "  *best" if improved else ""
            self.log(f"epoch {epoch + 1}/{self.config.epochs}  {shown}  {seconds:.1f} s{mark}")


def _atomic(path: Path, write: Callable[[str], object]) -> None:
    # Write beside the target and rename: an interrupted save never leaves a broken file.
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"tmp-{path.name}")
    write(str(tmp))
    os.replace(tmp, path)


def _append_history(path: Path, row: dict) -> None:
    rows = read_history(path)
    rows = [r for r in rows if int(r["epoch"]) < row["epoch"]] + [row]
    columns = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        writer.writerows(rows)


def read_history(path: Path) -> list[dict]:
    """Rows of a history.csv (values as floats; epoch as int); [] when missing."""
    path = Path(path)
    if not path.exists():
        return []
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [
        {k: (int(float(v)) if k == "epoch" else float(v)) for k, v in r.items() if v != ""}
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
        for prefix, style in (("", "-o"), ("val_", "-s")):
            points = [(r["epoch"], r[prefix + key]) for r in rows if prefix + key in r]
            if points:
                ax.plot(
                    *zip(*points, strict=True),
                    style,
                    ms=3,
                    label=f"{'validation' if prefix else 'training'}",
                )
        ax.set_title(key)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


# -- the run --------------------------------------------------------------------------------
def _resume(run_dir: Path, config: TrainConfig, resume: bool) -> tuple[dict | None, TrainConfig]:
    """(checkpoint state or None, the config to go on with): a resumed run keeps its saved
    settings; a setting given with a non-default value must match, except epochs/patience."""
    state_path = run_dir / CHECKPOINT_DIR / "state.json"
    if not resume or not state_path.exists():
        return None, config
    state = json.loads(state_path.read_text())
    saved, given, default = (
        TrainConfig.load(run_dir).to_dict(),
        config.to_dict(),
        TrainConfig().to_dict(),
    )
    # Left at its default, a setting was not asked for (the CLI fills in defaults).
    changed = {
        k: v
        for k, v in given.items()
        if v != default[k]
        and v != saved[k]
        and k not in ("original_size", "val_cars", "train_cars")
    }
    differ = sorted(set(changed) - set(RESUMABLE_CHANGES))
    if differ:
        raise ValueError(
            f"{run_dir}: has a checkpoint trained with other settings ({', '.join(differ)}); "
            "pass the same settings, or start over with --fresh"
        )
    return state, TrainConfig.from_dict({**saved, **changed, "original_size": config.original_size})


def train(
    data,
    config: TrainConfig,
    run_dir: Path,
    resume: bool = True,
    verbose: int = 1,
    callbacks: list | None = None,
) -> dict:
    """Train config.model on data's training images into run_dir; resume its checkpoint when
    present. Returns best_val_dice, best_epoch, epochs_run, seconds_per_epoch, params, ..."""
    from carvana.models import build_model, count_params
    from carvana.inputs import get_dataset

    run_dir = Path(run_dir)
    log = print if verbose else None
    config = config.replace(original_size=tuple(data.image_size()))
    if not resume:
        for name in (CHECKPOINT_DIR, HISTORY_FILE, MODEL_FILE, CURVES_FILE):
            target = run_dir / name
            if target.is_dir():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)
    state, config = _resume(run_dir, config, resume)
    train_ids, val_ids = choose_cars(data.train_ids(), config)
    if not train_ids:
        raise ValueError(f"{data.root}: no training images left after the split")
    config = config.replace(
        train_cars=tuple(sorted({car_id(i) for i in train_ids})),
        val_cars=tuple(sorted({car_id(i) for i in val_ids})),
    )
    config.save(run_dir)
    state = state or {"epoch": 0, "best": -1.0, "best_epoch": 0, "wait": 0, "stopped": False}
    monitor = "val_dice" if val_ids else "dice"

    keras.utils.set_random_seed(config.seed)
    gpus = tf.config.list_logical_devices("GPU")
    strategy = pick_strategy()
    steps = math.ceil(len(train_ids) / config.batch_size)
    began = time.perf_counter()
    with _Policy("mixed_float16" if gpus else keras.mixed_precision.dtype_policy().name):
        with strategy.scope():
            model = build_model(config)
            compile_model(model, config, steps * config.epochs)
            if state["epoch"] > 0:
                model.optimizer.build(model.trainable_variables)
                model.load_weights(run_dir / CHECKPOINT_DIR / "last.weights.h5")
    with _Policy("float32"):
        export = build_model(config.replace(weights="none"))
    if log:
        log(
            f"training {config.model} ({count_params(model):,} parameters) on "
            f"{len(train_ids)} images / {len(config.train_cars)} cars, validating on "
            f"{len(val_ids)} images / {len(config.val_cars)} cars at {config.image_size[0]}x"
            f"{config.image_size[1]} (input {config.padded_size[0]}x{config.padded_size[1]}); "
            f"{strategy.num_replicas_in_sync} replica(s), "
            f"{'mixed precision' if gpus else 'float32'}"
            + (f"; resuming after epoch {state['epoch']}" if state["epoch"] else "")
        )
    if state["epoch"] < config.epochs and not state["stopped"]:
        # The model is about to change: an earlier evaluation no longer describes it.
        (run_dir / "evaluation.json").unlink(missing_ok=True)
        train_ds = get_dataset(data, train_ids, config, training=True, cache="")
        val_ds = get_dataset(data, val_ids, config, training=False, cache="") if val_ids else None
        # A few fixed training images (not augmented) for the BN recalibration of each epoch;
        # the eager pass assigns variables outside strategy.run, so only with one replica;
        # several replicas (long GPU/TPU runs) rely on config.bn_momentum.
        calibration = None
        if strategy.num_replicas_in_sync == 1:
            some = [train_ids[i] for i in np.random.default_rng(0).permutation(len(train_ids))]
            calibration = get_dataset(
                data, some[: CALIBRATION_BATCHES * config.batch_size], config, False, cache=""
            )
        recorder = RunRecorder(run_dir, config, export, state, monitor, log, calibration)
        model.fit(
            train_ds,
            validation_data=val_ds,
            epochs=config.epochs,
            initial_epoch=state["epoch"],
            callbacks=[recorder, *(callbacks or [])],
            verbose=2 if verbose >= 2 else 0,
            shuffle=False,  # the dataset shuffles itself
        )
    history = read_history(run_dir / HISTORY_FILE)
    if history:
        plot_curves(run_dir / HISTORY_FILE, run_dir / CURVES_FILE)
    seconds = [r["seconds"] for r in history if "seconds" in r]
    return {
        "run_dir": run_dir,
        "model": config.model,
        "best_val_dice": state["best"],
        "best_epoch": state["best_epoch"],
        "epochs_run": state["epoch"],
        "stopped_early": bool(state["stopped"]),
        "seconds_per_epoch": float(np.mean(seconds)) if seconds else 0.0,
        "seconds": time.perf_counter() - began,
        "params": count_params(export),
        "monitor": monitor,
    }
