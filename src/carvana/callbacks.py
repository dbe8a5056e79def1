"""The training callbacks Keras lacks, one job each: BN recalibration, the float32 best-model
export, patience and checkpoints whose counters survive a resume, a time limit, the progress line.

They share one `RunState` (epoch, best score, epochs without improvement), which the checkpoint
saves as state.json beside the last weights, so a resumed run goes on counting where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import keras

from carvana.files import atomic_write

WEIGHTS_FILE = "last.weights.h5"
STATE_FILE = "state.json"


def now() -> float:
    """Seconds on the clock that time budgets are planned by (a test's fake clock replaces it)."""
    return time.perf_counter()


@dataclass
class RunState:
    """Counters of a run: epochs done, best monitored score and its epoch, epochs since."""

    epoch: int = 0
    best: float = -1.0
    best_epoch: int = 0
    wait: int = 0
    stopped: bool = False
    # Fraction of the learning-rate schedule a time budget had used at the checkpoint.
    progress: float = 0.0
    budget_spent: bool = False
    stage: int = 0  # progressive resizing: the stage (index into TrainConfig.stages) reached

    @classmethod
    def load(cls, checkpoint_dir: Path) -> RunState | None:
        """The state saved in a checkpoint folder, or None when there is none."""
        path = Path(checkpoint_dir) / STATE_FILE
        return cls(**json.loads(path.read_text())) if path.exists() else None

    def save(self, checkpoint_dir: Path) -> None:
        """Write state.json into a checkpoint folder."""
        text = json.dumps(dataclasses.asdict(self), indent=1)
        atomic_write(Path(checkpoint_dir) / STATE_FILE, lambda p: Path(p).write_text(text))


def batch_norms(model: keras.Model) -> list:
    """Every BatchNormalization layer of a model, nested models included."""
    from carvana.models import iter_layers

    return [
        layer for layer in iter_layers(model) if isinstance(layer, keras.layers.BatchNormalization)
    ]


def recalibrate_bn(model: keras.Model, batches: Iterable, forward: Callable | None = None) -> int:
    """Re-estimate every BatchNormalization's moving statistics as the plain average of the
    batch statistics over `batches` at the current weights (no weight update); returns the
    number of batches used. `forward(x)` runs the model in training mode (default: eagerly)."""
    bns = batch_norms(model)
    if not bns:
        return 0
    saved = [bn.momentum for bn in bns]
    moving = [v for bn in bns for v in (bn.moving_mean, bn.moving_variance)]
    forward = forward or (lambda x: model(x, training=True))
    totals, k = None, 0
    try:
        # Momentum 0: each call leaves its batch's statistics, summed here. A tf.function
        # `forward` traced inside this block keeps momentum 0 in its graph; in cross-replica
        # context an assignment to a mirrored variable writes every replica's copy.
        for bn in bns:
            bn.momentum = 0.0
        for x, _ in batches:
            forward(x)
            k += 1
            values = [v.numpy() for v in moving]
            totals = (
                values if totals is None else [t + v for t, v in zip(totals, values, strict=True)]
            )
        for variable, total in zip(moving, totals or [], strict=False):
            variable.assign(total / k)
    finally:
        for bn, momentum in zip(bns, saved, strict=True):
            bn.momentum = momentum
    return k


class BNRecalibration(keras.callbacks.Callback):
    """Before each validation (or at the epoch's end without one), re-estimate the moving
    BN statistics from a few fixed training batches, in a compiled forward pass."""

    # From scratch, the moving statistics trail weights that change fast: inference-mode
    # outputs can be empty while training-mode ones are right. Validation, the saved model
    # and prediction all run in inference mode.

    def __init__(self, batches: Iterable):
        super().__init__()
        self.batches, self.done, self.forward = batches, False, None

    def on_epoch_begin(self, epoch, logs=None):
        self.done = False

    def on_test_begin(self, logs=None):
        if not self.done:
            if self.forward is None:
                import tensorflow as tf

                # Graph mode fuses what eager runs op by op: about twice as fast on CPU.
                model = self.model
                self.forward = tf.function(lambda x: model(x, training=True), reduce_retracing=True)
            recalibrate_bn(self.model, self.batches, self.forward)
            self.done = True

    def on_epoch_end(self, epoch, logs=None):
        self.on_test_begin()


def averaged_pairs(model: keras.Model) -> list[tuple]:
    """(weight, its moving average) for each trainable weight when the model's optimizer keeps
    an exponential moving average of them (Keras's use_ema); [] when it does not."""
    optimizer = getattr(model.optimizer, "inner_optimizer", model.optimizer)
    if not getattr(optimizer, "use_ema", False):
        return []
    # Where Keras keeps the averages (its SwapEMAWeights reads them there too), in the order of
    # the variables the optimizer was built with: the model's trainable ones.
    averages = getattr(optimizer, "_model_variables_moving_average", None) or []
    weights = model.trainable_variables
    if len(averages) != len(weights):
        raise ValueError(
            f"the optimizer averages {len(averages)} variables, the model trains {len(weights)}"
        )
    return list(zip(weights, averages, strict=True))


def swap_weights(pairs: Iterable[tuple]) -> None:
    """Exchange the values of each (weight, average) pair."""
    for weight, average in pairs:
        held = weight.numpy()
        weight.assign(average)
        average.assign(held)


class AverageWeights(keras.callbacks.Callback):
    """With a weight average (TrainConfig.ema): from the validation on (or the epoch's end
    without one), the model holds the averaged weights, so the BN recalibration, validation,
    export and previews see them; a later TrainedWeights gives training its own back. Goes
    first."""

    def __init__(self):
        super().__init__()
        self.swapped = False

    def on_test_begin(self, logs=None):
        if not self.swapped:
            swap_weights(averaged_pairs(self.model))
            self.swapped = True

    def on_epoch_end(self, epoch, logs=None):
        self.on_test_begin()


class TrainedWeights(keras.callbacks.Callback):
    """Give training its own weights back after the callbacks that use the average; after a
    fit's last epoch the model keeps the average, as Keras's fit ends by copying it into the
    weights anyway: the checkpoint then holds what the next stage starts from. Goes after the
    callbacks that stop training (Patience, Budget, StageEnd), before the Checkpoint."""

    def __init__(self, average: AverageWeights):
        super().__init__()
        self.average = average

    def on_epoch_end(self, epoch, logs=None):
        if not self.average.swapped:
            return
        pairs = averaged_pairs(self.model)
        if self.model.stop_training or epoch + 1 >= self.params.get("epochs", math.inf):
            for weight, average in pairs:  # the average goes back where Keras looks for it
                average.assign(weight)
        else:
            swap_weights(pairs)
        self.average.swapped = False


class EpochStats(keras.callbacks.Callback):
    """Add the epoch's seconds and learning rate to the logs the later callbacks see."""

    def on_epoch_begin(self, epoch, logs=None):
        self.began = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        lr = self.model.optimizer.learning_rate
        logs["learning_rate"] = float(lr.numpy() if hasattr(lr, "numpy") else lr)
        logs["seconds"] = round(time.perf_counter() - self.began, 3)


class BestModelExport(keras.callbacks.Callback):
    """When the monitored score improves, save a float32 copy of the model (no optimizer)."""

    def __init__(self, path: Path, export: keras.Model, state: RunState, monitor: str):
        super().__init__()
        self.path, self.export, self.state, self.monitor = Path(path), export, state, monitor

    def on_epoch_end(self, epoch, logs=None):
        score = float(logs.get(self.monitor, math.nan))
        if not math.isnan(score) and score > self.state.best:
            self.state.best, self.state.best_epoch, self.state.wait = score, epoch + 1, 0
            # The export model was built float32: copying the weights casts nothing, since
            # mixed precision keeps its variables in float32 too.
            self.export.set_weights(self.model.get_weights())
            atomic_write(self.path, self.export.save)
        else:
            self.state.wait += 1


class Patience(keras.callbacks.Callback):
    """Stop once `patience` epochs passed without improvement (counted in the RunState, so
    unlike keras.callbacks.EarlyStopping the count survives a resume)."""

    def __init__(self, state: RunState, patience: int):
        super().__init__()
        self.state, self.patience = state, patience

    def on_epoch_end(self, epoch, logs=None):
        if self.state.wait >= self.patience:
            self.state.stopped = True
            self.model.stop_training = True


class Checkpoint(keras.callbacks.Callback):
    """After every epoch, save the weights with the optimizer state and the RunState."""

    def __init__(self, checkpoint_dir: Path, state: RunState):
        super().__init__()
        self.dir, self.state = Path(checkpoint_dir), state

    def on_epoch_end(self, epoch, logs=None):
        self.state.epoch = epoch + 1
        atomic_write(self.dir / WEIGHTS_FILE, self.model.save_weights)
        self.state.save(self.dir)


def restore_checkpoint(model: keras.Model, checkpoint_dir: Path) -> None:
    """Load a checkpoint's weights and optimizer state into a compiled model, whether it was
    written with mixed precision (a LossScaleOptimizer around Adam) or without."""
    path = Path(checkpoint_dir) / WEIGHTS_FILE
    model.optimizer.build(model.trainable_variables)
    with warnings.catch_warnings():
        # A different precision wraps the optimizer differently: its state is loaded below.
        warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
        model.load_weights(path)
    import h5py

    inner = getattr(model.optimizer, "inner_optimizer", model.optimizer)
    with h5py.File(path, "r") as h5:
        key = next((k for k in ("optimizer/inner_optimizer/vars", "optimizer/vars") if k in h5), "")
        saved = [h5[key][str(i)][()] for i in range(len(h5[key]))] if key else []
    if len(saved) != len(inner.variables):
        raise ValueError(
            f"{path}: holds {len(saved)} optimizer variables, this model needs "
            f"{len(inner.variables)}; start over with --fresh"
        )
    for variable, value in zip(inner.variables, saved, strict=True):
        variable.assign(value)


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


class PlannedCosine(keras.optimizers.schedules.LearningRateSchedule):
    """Cosine decay from `initial` to alpha * initial, at the larger of two progresses: the
    step over `decay_steps` (the epochs' plan) and `progress`, a variable a Budget advances
    with the time spent (0 without a budget). Without a budget it is Keras's CosineDecay.
    With `warmup` w > 0 the rate is also scaled by progress / w over the first w of it."""

    def __init__(
        self, initial: float, decay_steps: int, alpha: float = 0.02, progress=None, warmup=0.0
    ):
        import tensorflow as tf

        self.initial, self.decay_steps, self.alpha = initial, max(1, decay_steps), alpha
        self.warmup = warmup
        self.progress = progress if progress is not None else tf.Variable(0.0, trainable=False)

    def __call__(self, step):
        import tensorflow as tf

        done = tf.cast(step, tf.float32) / float(self.decay_steps)
        done = tf.clip_by_value(tf.maximum(done, tf.cast(self.progress, tf.float32)), 0.0, 1.0)
        cosine = 0.5 * (1.0 + tf.cos(math.pi * done))
        rate = self.initial * ((1.0 - self.alpha) * cosine + self.alpha)
        if self.warmup > 0:
            rate *= tf.minimum(1.0, done / self.warmup)
        return rate

    def get_config(self):
        """The schedule's settings (its progress lives in the run's state, not here)."""
        return {
            "initial": self.initial,
            "decay_steps": self.decay_steps,
            "alpha": self.alpha,
            "warmup": self.warmup,
        }


class Budget(keras.callbacks.Callback):
    """A time budget for this invocation that the learning-rate schedule is planned for: it
    advances the schedule's `progress` with the time spent, so the cosine ends when the budget
    does, and stops training (mid-epoch; the epoch still validates and saves) early enough
    that the end of the epoch fits in the budget too. Goes before the Checkpoint."""

    # An epoch's end (recalibration, validation, export, checkpoint) costs what it cost last
    # time, measured from the last step to the next epoch's start; it and one step are kept
    # in reserve.

    def __init__(self, seconds: float, state: RunState, progress, clock=None):
        super().__init__()
        self.seconds, self.state, self.progress = seconds, state, progress
        self.clock = clock or now
        self.start = state.progress  # a resumed run plans what is left of its schedule
        self.began = self.step = self.tail = self.last = 0.0
        self.spent, self.reached = False, self.start

    def on_train_begin(self, logs=None):
        self.began = self.last = self.clock()
        self.progress.assign(self.start)

    def fraction(self, now: float) -> float:
        """Schedule progress at clock time `now`: where it began plus the budget's share (never
        back, when the reserve for the epoch's end shrinks)."""
        usable = max(1e-9, self.seconds - self.tail)
        share = self.start + (1.0 - self.start) * (now - self.began) / usable
        self.reached = min(1.0, max(self.reached, share))
        return self.reached

    def on_epoch_begin(self, epoch, logs=None):
        now = self.clock()
        if epoch > 0 and self.last > self.began:
            self.tail = now - self.last
        self.last = now

    def on_train_batch_begin(self, batch, logs=None):
        self.progress.assign(self.fraction(self.clock()))

    def on_train_batch_end(self, batch, logs=None):
        now = self.clock()
        self.step, self.last = now - self.last, now
        if now - self.began + self.step + self.tail >= self.seconds:
            self.spent = self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        self.state.progress = 1.0 if self.spent else self.fraction(self.clock())
        if self.spent:
            self.state.stopped = self.state.budget_spent = True


def schedule_done(state: RunState, epochs: int, epoch: int | None = None) -> float:
    """How far the learning-rate schedule is, as PlannedCosine sees it: the time budget's
    progress or the epochs' plan (after `epoch` epochs; state.epoch when None), the further."""
    return max(state.progress, (state.epoch if epoch is None else epoch) / max(1, epochs))


class StageEnd(keras.callbacks.Callback):
    """Progressive resizing: end this stage's fit after the epoch in which the schedule reached
    `until`. Goes after the Budget (it updates the state's progress)."""

    def __init__(self, state: RunState, until: float, epochs: int):
        super().__init__()
        self.state, self.until, self.epochs = state, until, epochs

    def on_epoch_end(self, epoch, logs=None):
        if schedule_done(self.state, self.epochs, epoch + 1) >= self.until:
            self.model.stop_training = True


class ProgressLine(keras.callbacks.Callback):
    """One line per epoch: the logs, the seconds and a mark on the best epoch so far."""

    def __init__(self, state: RunState, epochs: int, log: Callable[[str], None]):
        super().__init__()
        self.state, self.epochs, self.log = state, epochs, log

    def on_epoch_end(self, epoch, logs=None):
        shown = "  ".join(
            f"{k} {v:.4f}" for k, v in logs.items() if k not in ("seconds", "learning_rate")
        )
        mark = "  *best" if self.state.best_epoch == epoch + 1 else ""
        line = f"epoch {epoch + 1}/{self.epochs}  {shown}  {logs['seconds']:.1f} s{mark}"
        self.log(line)
