"""Training: split by car, compile, resume, and the fit loop with its run-folder callbacks.

A run folder gets config.json (with the detected original size and the car split),
model.keras (best epoch by validation Dice, float32, no optimizer: what predict loads),
history.csv, curves.png and checkpoint/ (last epoch's weights with the optimizer state, and
the epoch counters) from which an interrupted run resumes. One model and one optimizer train
through the run's stages (TrainConfig.stages), a `fit` each: smaller sizes first with
progressive resizing, then the photos as they are once augmentation stops; model.keras is at
image_size, chosen among the epochs at that size. Importing this module does nothing.
The loss and metric live in carvana.losses / carvana.metrics, the callbacks in
carvana.callbacks, the strategy and precision in carvana.distribute.
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Collection
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from carvana import callbacks as cb
from carvana.callbacks import TimeLimit, recalibrate_bn
from carvana.config import MODEL_FILE, TrainConfig
from carvana.distribute import (
    dtype_policy,
    global_batch,
    keep_freed_memory_on_cpu,
    pick_strategy,
    resolve_jit,
    resolve_precision,
    whole_for_replicas,
)
from carvana.files import car_id, shuffled, split_by_car, spread
from carvana.history import (
    CURVES_FILE,
    HISTORY_FILE,
    TENSORBOARD_DIR,
    HistoryCSV,
    TensorBoardLog,
    plot_curves,
    read_history,
)
from carvana.losses import LOSSES, bce_dice_loss, soft_dice
from carvana.metrics import DiceMetric, PixelAccuracy

# Kept importable from here: evaluate, benchmarks and older scripts import them from train.
__all__ = [
    "HISTORY_FILE",
    "DiceMetric",
    "TimeLimit",
    "bce_dice_loss",
    "choose_cars",
    "compile_model",
    "pick_strategy",
    "read_history",
    "recalibrate_bn",
    "soft_dice",
    "train",
]

CHECKPOINT_DIR = "checkpoint"
# Batches averaged to re-estimate BatchNormalization statistics before each validation: 3
# (48 images) cost ~5% of a 40-step epoch of training-mode forward passes; 8 cost ~13%.
CALIBRATION_BATCHES = 3
PREVIEW_IMAGES = 3  # validation images shown in TensorBoard
# Settings that may change between an interrupted run and its resumption.
# A time budget is per invocation: a resumed run plans what is left of its schedule into it.
RESUMABLE_CHANGES = ("epochs", "patience", "minutes")
# Settings train fills in itself: never the user's to change on resume.
FILLED_IN = ("original_size", "val_cars", "train_cars")


def compile_model(
    model: keras.Model,
    config: TrainConfig,
    steps: int,
    jit_compile: bool | str = "auto",
    replicas: int = 1,
) -> cb.PlannedCosine:
    """Adam with cosine decay over the planned steps (or a time budget's progress), the
    config's loss, Dice and accuracy; returns the learning-rate schedule."""
    progress = tf.Variable(0.0, trainable=False, name="schedule_progress")
    schedule = cb.PlannedCosine(
        config.learning_rate, steps, alpha=0.02, progress=progress, warmup=config.warmup
    )
    # With ema > 0 the optimizer also keeps the weights' moving average, updated in the step.
    average = {"use_ema": True, "ema_momentum": config.ema} if config.ema > 0 else {}
    model.compile(
        optimizer=keras.optimizers.Adam(schedule, **average),
        jit_compile=resolve_jit(jit_compile, replicas),
        loss=LOSSES[config.loss],
        metrics=[DiceMetric(), PixelAccuracy()],
    )
    return schedule


def choose_cars(ids: list[str], config: TrainConfig) -> tuple[list[str], list[str]]:
    """(train ids, validation ids): max_cars picks a deterministic subset first, then a split
    by car; a config that already names its cars (a resumed run) keeps them."""
    if config.train_cars or config.val_cars:
        train_set, val_set = set(config.train_cars), set(config.val_cars)
        return [i for i in ids if car_id(i) in train_set], [i for i in ids if car_id(i) in val_set]
    cars = sorted({car_id(i) for i in ids})
    if config.max_cars and config.max_cars < len(cars):
        keep = set(shuffled(cars, config.seed)[: config.max_cars])
        ids = [i for i in ids if car_id(i) in keep]
    return split_by_car(ids, config.val_fraction, config.seed)


def resume_config(
    run_dir: Path, config: TrainConfig, asked: Collection[str] | None
) -> tuple[cb.RunState | None, TrainConfig]:
    """(checkpoint state or None, the config to go on with). A resumed run keeps its saved
    settings; an asked setting may differ only when it is in RESUMABLE_CHANGES."""
    state = cb.RunState.load(run_dir / CHECKPOINT_DIR)
    if state is None:
        return None, config
    saved = TrainConfig.load(run_dir)
    fields = set(config.to_dict())
    asked = fields if asked is None else set(asked)
    if asked - fields:
        raise ValueError(f"unknown settings: {', '.join(sorted(asked - fields))}")
    changed = {
        k: getattr(config, k)
        for k in sorted(asked - set(FILLED_IN))
        if getattr(config, k) != getattr(saved, k)
    }
    differ = [k for k in changed if k not in RESUMABLE_CHANGES]
    if differ:
        raise ValueError(
            f"{run_dir}: has a checkpoint trained with other settings ({', '.join(differ)}); "
            "pass the same settings, or start over with --fresh"
        )
    return state, saved.replace(**changed, original_size=config.original_size)


def _clear_run(run_dir: Path) -> None:
    for name in (CHECKPOINT_DIR, HISTORY_FILE, MODEL_FILE, CURVES_FILE, TENSORBOARD_DIR):
        target = run_dir / name
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)


def _split(data, config: TrainConfig) -> tuple[list[str], list[str], TrainConfig]:
    train_ids, val_ids = choose_cars(data.train_ids(), config)
    if not train_ids:
        raise ValueError(f"{data.root}: no training images left after the split")
    return (
        train_ids,
        val_ids,
        config.replace(
            train_cars=tuple(sorted({car_id(i) for i in train_ids})),
            val_cars=tuple(sorted({car_id(i) for i in val_ids})),
        ),
    )


def build_models(config, strategy, precision, jit_compile, steps, run_dir, state):
    """(model to train, compiled under the strategy and precision, restored from the checkpoint
    when the run has one; its float32 twin for export; its learning-rate schedule)."""
    from carvana.models import build_model

    with dtype_policy(precision), strategy.scope():
        # Progressive resizing feeds the one model (and its optimizer state) several sizes.
        model = build_model(config, any_size=len({s.size for s in config.stages}) > 1)
        schedule = compile_model(model, config, steps, jit_compile, strategy.num_replicas_in_sync)
        if state.epoch > 0:
            cb.restore_checkpoint(model, run_dir / CHECKPOINT_DIR)
    with dtype_policy("float32"):
        export = build_model(config.replace(weights="none"))
    return model, export, schedule


def make_callbacks(
    run_dir, config, state, export, monitor, inputs, schedule, log, seconds=0.0, until=1.0
) -> list:
    """The run-folder callbacks of one stage's fit (`seconds` of the time budget left, 0:
    none; until `until` of the schedule), in the order they must see each epoch's logs.
    TensorBoard's pictures are at config.image_size whatever the stage."""
    calibration, preview = inputs[2:]
    average = cb.AverageWeights() if config.ema > 0 else None
    return [
        # First: the validation and the export need them, the recalibration after the swap.
        *([average] if average else []),
        *([cb.BNRecalibration(calibration)] if calibration is not None else []),
        cb.EpochStats(),
        HistoryCSV(run_dir / HISTORY_FILE, state.epoch),
        TensorBoardLog(run_dir / TENSORBOARD_DIR, preview, config.image_size),
        cb.BestModelExport(run_dir / MODEL_FILE, export, state, monitor),
        cb.Patience(state, config.patience),
        *([cb.Budget(seconds, state, schedule.progress)] if seconds else []),
        *([cb.StageEnd(state, until, config.epochs)] if until < 1.0 else []),
        *([cb.TrainedWeights(average)] if average else []),
        cb.Checkpoint(run_dir / CHECKPOINT_DIR, state),
        *([cb.ProgressLine(state, config.epochs, log)] if log else []),
    ]


def train(
    data,
    config: TrainConfig,
    run_dir: Path,
    resume: bool = True,
    verbose: int = 1,
    callbacks: list | None = None,
    asked: Collection[str] | None = None,
    strategy: tf.distribute.Strategy | None = None,
    precision: str = "auto",
    jit_compile: bool | str = "auto",
) -> dict:
    """Train config.model on data's training images into run_dir; resume its checkpoint when
    present (`asked`: the fields the user set; None: all). `strategy` defaults to
    pick_strategy(), `precision` ("auto", "float32", "mixed_float16") to mixed precision on a
    GPU. Returns best_val_dice, best_epoch, epochs_run, seconds_per_epoch, params, ..."""
    from carvana.models import count_params
    from carvana.thresholds import tune_threshold

    run_dir, began, log = Path(run_dir), time.perf_counter(), print if verbose else None
    config = config.replace(original_size=tuple(data.image_size()))
    if not resume:
        _clear_run(run_dir)
    state, config = resume_config(run_dir, config, asked)
    state = state or cb.RunState()
    train_ids, val_ids, config = _split(data, config)
    config.save(run_dir)
    monitor = "val_dice" if val_ids else "dice"

    keras.utils.set_random_seed(config.seed)
    strategy = strategy or pick_strategy()
    precision = resolve_precision(precision)
    keep_freed_memory_on_cpu()
    replicas = strategy.num_replicas_in_sync
    # Saved as asked (a resume elsewhere may have another replica count); fed rounded.
    fed = config.replace(batch_size=global_batch(config.batch_size, replicas))
    steps = math.ceil(len(train_ids) / fed.batch_size) * config.epochs
    model, export, schedule = build_models(
        config, strategy, precision, jit_compile, steps, run_dir, state
    )
    if log:
        log(_announce(fed, model, train_ids, val_ids, strategy, precision, state))
    if state.epoch < config.epochs and not state.stopped:
        # The model is about to change: an earlier evaluation no longer describes it.
        (run_dir / "evaluation.json").unlink(missing_ok=True)

        def stage_callbacks(inputs, seconds, until):
            own = make_callbacks(
                run_dir, config, state, export, monitor, inputs, schedule, log, seconds, until
            )
            return [*own, *(callbacks or [])]

        ids = (train_ids, val_ids)
        _fit_stages(model, data, ids, fed, replicas, state, stage_callbacks, log, verbose)
    # One pass over the validation cars: the threshold predict uses -> thresholds.json.
    tune_threshold(data, run_dir, log=log)
    return _summary(run_dir, config, state, export, monitor, began, count_params(export))


def _fit_stages(model, data, ids, fed, replicas, state, stage_callbacks, log, verbose) -> None:
    """model.fit over each stage of fed.stages still ahead; the time budget, when there is one,
    covers them all. `stage_callbacks(inputs,
    seconds left, until)` gives each fit its callbacks."""
    from carvana.inputs import named_data_errors

    began, stages = cb.now(), fed.stages
    for stage, (size, until, augment) in enumerate(stages):
        if state.stopped or state.epoch >= fed.epochs:
            break
        if until < 1.0 and cb.schedule_done(state, fed.epochs) >= until:
            continue  # a resumed run already past this stage
        seconds = fed.minutes * 60 - (cb.now() - began) if fed.minutes else 0.0
        if fed.minutes and seconds <= 0:
            state.stopped = state.budget_spent = True
            break
        if stage > state.stage:
            if size != stages[state.stage].size:
                # Dice at another size does not compare: the new size's first epoch is the best.
                state.best, state.wait = -1.0, 0
            state.stage = stage
        sized = stage_config(fed, size, augment)
        if log and len(stages) > 1:
            shown = "augmented" if augment else "flips only" if sized.augment else "not augmented"
            log(
                f"stage {stage + 1}/{len(stages)}: {size[0]}x{size[1]} until {until:.0%} of "
                f"the schedule, {shown}"
            )
        inputs = _inputs(data, *ids, sized, replicas, shown_at=fed.image_size)
        # One iterator for the whole stage, over a repeated dataset: given a dataset that ends,
        # Keras starts a new iterator every epoch, and the first step of a new one stalled for
        # ~5 s in half the epochs (CNN at 160x256: 10 s epochs instead of 5.5 s).
        train_ds, val_ds = inputs[:2]
        with named_data_errors():  # a bad training image: its name, in one line
            model.fit(
                train_ds.repeat(),
                steps_per_epoch=int(train_ds.cardinality()),
                validation_data=val_ds,
                epochs=fed.epochs,
                initial_epoch=state.epoch,
                callbacks=stage_callbacks(inputs, seconds, until),
                verbose=2 if verbose >= 2 else 0,
                shuffle=False,  # the dataset shuffles itself
            )
        if cb.schedule_done(state, fed.epochs) < until:
            break  # stopped before its end by another callback (a caller's TimeLimit)


def stage_config(fed: TrainConfig, size: tuple[int, int], augment: bool) -> TrainConfig:
    """The config a stage's inputs are made with: its size, and augmented, flipped only (after
    augment_until with keep_flips) or neither."""
    if augment or not (fed.augment and fed.keep_flips):
        return fed.replace(image_size=size, augment=augment)
    # Strength 0 leaves the flips alone: the mirrored car is still a studio photo.
    return fed.replace(image_size=size, augment=True, augment_strength=0.0)


def _inputs(data, train_ids, val_ids, fed: TrainConfig, replicas: int, shown_at=None) -> tuple:
    """(training, validation or None, calibration or None) datasets at the fed batch size,
    and (images, masks) arrays of a few validation images for TensorBoard (or None; at
    `shown_at`, default fed.image_size). The validation dataset holds the fixed sample of
    fed.val_images images each epoch scores."""
    from carvana.inputs import get_dataset

    def batches(ids, training):
        dataset = get_dataset(data, ids, fed, training=training, cache="")
        return whole_for_replicas(dataset, len(ids), fed.batch_size, replicas)

    # A few fixed training images, not augmented, for the BN recalibration of each epoch.
    some = shuffled(train_ids, 0)[: CALIBRATION_BATCHES * fed.batch_size]
    # A few validation images (spread over the angles) for TensorBoard; decoded once, here.
    shown = spread(val_ids, PREVIEW_IMAGES)
    preview = None
    if shown:
        at = fed.replace(batch_size=len(shown), image_size=shown_at or fed.image_size)
        x, y = next(iter(get_dataset(data, shown, at, False, None)))
        preview = (x.numpy(), y.numpy())
    return (
        batches(train_ids, True),
        batches(spread(val_ids, fed.val_images), False) if val_ids else None,
        get_dataset(data, some, fed, training=False, cache="") if some else None,
        preview,
    )


def _announce(config, model, train_ids, val_ids, strategy, precision, state) -> str:
    from carvana.models import count_params

    return (
        f"training {config.model} ({count_params(model):,} parameters) on "
        f"{len(train_ids)} images / {len(config.train_cars)} cars, validating on "
        f"{len(spread(val_ids, config.val_images))} of {len(val_ids)} images / "
        f"{len(config.val_cars)} cars each epoch at {config.image_size[0]}x"
        f"{config.image_size[1]} (input {config.padded_size[0]}x{config.padded_size[1]}); "
        f"batch {config.batch_size}, {strategy.num_replicas_in_sync} replica(s), "
        f"{precision.replace('_', ' ')} precision"
        + (f"; resuming after epoch {state.epoch}" if state.epoch else "")
    )


def _summary(run_dir, config, state, export, monitor, began, params) -> dict:
    history = read_history(run_dir / HISTORY_FILE)
    if history:
        plot_curves(run_dir / HISTORY_FILE, run_dir / CURVES_FILE)
    seconds = [r["seconds"] for r in history if "seconds" in r]
    return {
        "run_dir": run_dir,
        "model": config.model,
        "best_val_dice": state.best,
        "best_epoch": state.best_epoch,
        "epochs_run": state.epoch,
        "stopped_early": bool(state.stopped) and not state.budget_spent,
        "budget_spent": bool(state.budget_spent),
        "seconds_per_epoch": float(np.mean(seconds)) if seconds else 0.0,
        "seconds": time.perf_counter() - began,
        "params": params,
        "monitor": monitor,
    }
