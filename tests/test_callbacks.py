"""The time budget's schedule and stop, by a fake clock; the weight average's swaps; the
TensorBoard logs (pictures by a fake clock too, and of a tiny run)."""

import math
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from carvana.callbacks import (
    AverageWeights,
    Budget,
    PlannedCosine,
    RunState,
    StageEnd,
    TrainedWeights,
    averaged_pairs,
)


def test_planned_cosine_follows_the_larger_progress():
    progress = tf.Variable(0.0)
    schedule = PlannedCosine(1.0, decay_steps=100, alpha=0.02, progress=progress)
    # No budget: Keras's CosineDecay, by hand.
    assert float(schedule(0)) == pytest.approx(1.0)
    assert float(schedule(50)) == pytest.approx(0.02 + 0.98 * 0.5)
    assert float(schedule(100)) == pytest.approx(0.02)
    assert float(schedule(400)) == pytest.approx(0.02)  # held at the end
    progress.assign(0.75)  # the budget is further along than the steps
    expected = 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * 0.75))
    assert float(schedule(10)) == pytest.approx(expected, rel=1e-5)
    assert float(schedule(90)) == pytest.approx(0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * 0.9)))


def test_warmup_ramps_the_cosine_linearly():
    schedule = PlannedCosine(1.0, decay_steps=100, alpha=0.0, warmup=0.1)
    assert float(schedule(0)) == pytest.approx(0.0)
    assert float(schedule(5)) == pytest.approx(0.5 * 0.5 * (1 + math.cos(math.pi * 0.05)))
    assert float(schedule(10)) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.1)))
    assert float(schedule(50)) == pytest.approx(0.5)  # after the ramp: the plain cosine
    progress = tf.Variable(0.02)  # a time budget's progress ramps it the same way
    budgeted = PlannedCosine(1.0, decay_steps=10**6, alpha=0.0, progress=progress, warmup=0.1)
    assert float(budgeted(0)) == pytest.approx(0.2 * 0.5 * (1 + math.cos(math.pi * 0.02)))


class _Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class _Model:
    stop_training = False


def _budget(seconds, state):
    clock, progress = _Clock(), tf.Variable(0.0)
    budget = Budget(seconds, state, progress, clock=clock)
    budget.set_model(_Model())
    return budget, clock, progress


def test_budget_plans_the_schedule_and_keeps_the_epoch_end_in_reserve():
    state = RunState()
    budget, clock, progress = _budget(100.0, state)
    budget.on_train_begin()
    budget.on_epoch_begin(0)
    for _ in range(4):  # 4 steps of 5 s
        budget.on_train_batch_begin(0)
        clock.now += 5
        budget.on_train_batch_end(0)
    assert float(progress) == pytest.approx(0.15) and not budget.model.stop_training
    budget.on_epoch_end(0)
    assert state.progress == pytest.approx(0.2) and not state.stopped
    clock.now += 10  # the end of the epoch (validation, saving) took 10 s
    budget.on_epoch_begin(1)
    budget.on_train_batch_begin(0)
    assert float(progress) == pytest.approx(30 / 90)  # planned over the 90 s left usable
    steps = 0
    while not budget.model.stop_training:
        budget.on_train_batch_begin(0)
        clock.now += 5
        budget.on_train_batch_end(0)
        steps += 1
    # Stopped when one more step and the epoch's end would overrun: 30 + 55 + 5 + 10 = 100.
    assert clock.now - 1000 == 85 and steps == 11
    budget.on_epoch_end(1)
    assert state.stopped and state.budget_spent and state.progress == 1.0


def test_a_resumed_budget_plans_what_is_left_of_the_schedule():
    state = RunState(epoch=3, progress=0.6)
    budget, clock, progress = _budget(50.0, state)
    budget.on_train_begin()
    assert float(progress) == pytest.approx(0.6)
    budget.on_epoch_begin(3)
    clock.now += 25
    budget.on_train_batch_begin(0)
    assert float(progress) == pytest.approx(0.6 + 0.4 * 0.5)


def _image_steps(board: Path) -> list[int]:
    from carvana.history import IMAGES_TAG

    return sorted(
        event.step
        for path in (board / "images").glob("events.out.tfevents.*")
        for event in tf.compat.v1.train.summary_iterator(str(path))
        for value in event.summary.value
        if value.tag == IMAGES_TAG
    )


@pytest.mark.parametrize(
    "progress, epochs_done, stops",
    [
        (0.0, 5, False),  # 5 of 10 planned epochs: half the schedule, the stage ends at 0.6
        (0.0, 6, True),
        (0.65, 1, True),  # a time budget's progress counts when it is further
        (0.55, 1, False),
    ],
)
def test_a_stage_ends_with_the_epoch_that_reaches_its_share(progress, epochs_done, stops):
    state = RunState(progress=progress)
    end = StageEnd(state, until=0.6, epochs=10)
    end.set_model(_Model())
    end.on_epoch_end(epochs_done - 1)
    assert end.model.stop_training is stops


def test_tensorboard_pictures_come_every_so_many_seconds_and_at_the_end(tmp_path, monkeypatch):
    import keras

    import carvana.history
    from carvana.history import TensorBoardLog

    inputs = keras.Input((4, 6, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(1, 1)(inputs))
    examples = (np.zeros((2, 4, 6, 3), np.float32), np.zeros((2, 4, 6, 1), np.float32))
    clock = _Clock()
    monkeypatch.setattr(carvana.history.time, "monotonic", clock)
    log = TensorBoardLog(tmp_path, examples, (4, 6), image_seconds=30)
    log.set_model(model)
    for epoch, seconds in enumerate([0, 10, 25, 5]):  # the clock at 0, 10, 35, 40
        clock.now += seconds
        log.on_epoch_end(epoch, {"loss": 1.0})
    assert _image_steps(tmp_path) == [0, 2]
    log.on_train_end()  # the last epoch had none: the model as it ended
    assert _image_steps(tmp_path) == [0, 2, 3]


@pytest.mark.slow
def test_tensorboard_logs_hold_the_scalars_and_the_images(synth_dirs, tmp_path):
    from carvana.config import TrainConfig
    from carvana.files import CarvanaData
    from carvana.history import IMAGES_TAG
    from carvana.train import train

    config = TrainConfig(
        model="cnn", image_size=(32, 48), batch_size=8, epochs=2, max_cars=3, augment=False
    )
    train(CarvanaData(synth_dirs["folders"]), config, tmp_path / "run", verbose=0)
    board = tmp_path / "run" / "tensorboard"
    scalars, images = {}, {}
    for path in board.rglob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                key = (path.parent.name, value.tag)
                if path.parent.name == "images":
                    images.setdefault(key, []).append((event.step, value))
                else:
                    scalars.setdefault(key, []).append(event.step)
    for tag in ("epoch_loss", "epoch_dice", "epoch_accuracy", "epoch_learning_rate"):
        assert scalars[("train", tag)] == [0, 1], (tag, sorted(scalars))
    for tag in ("epoch_loss", "epoch_dice"):
        assert scalars[("validation", tag)] == [0, 1]
    shown = images[("images", IMAGES_TAG)]
    assert [step for step, _ in shown] == [0, 1]
    # One PNG per validation image, image | mask | prediction side by side (3 x 48 wide).
    tensor = shown[-1][1].tensor
    assert tensor.string_val[:2] == [b"144", b"32"] and len(tensor.string_val) == 2 + 3
    picture = tf.io.decode_png(tensor.string_val[2]).numpy()
    assert picture.shape == (32, 144, 3) and np.ptp(picture) > 0


def _averaging_model(momentum: float) -> keras.Model:
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(
        optimizer=keras.optimizers.Adam(0.1, use_ema=True, ema_momentum=momentum), loss="mse"
    )
    return model


class _Snapshot(keras.callbacks.Callback):
    """Record the weights and the optimizer's averages at each epoch's end."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def on_epoch_end(self, epoch, logs=None):
        pairs = averaged_pairs(self.model)
        self.seen.append(
            ([w.numpy().copy() for w, _ in pairs], [a.numpy().copy() for _, a in pairs])
        )


def _same(arrays, others) -> bool:
    return len(arrays) == len(others) and all(
        np.array_equal(a, b) for a, b in zip(arrays, others, strict=True)
    )


def test_the_epoch_end_sees_the_average_and_training_goes_on_with_its_own_weights():
    keras.utils.set_random_seed(0)
    model = _averaging_model(0.5)
    x = np.random.default_rng(0).normal(size=(32, 3)).astype("float32")
    y = x @ np.array([[1.0], [-2.0], [0.5]], "float32")
    average = AverageWeights()
    before, during, after = _Snapshot(), _Snapshot(), _Snapshot()
    callbacks = [before, average, during, TrainedWeights(average), after]
    model.fit(x, y, batch_size=8, epochs=3, callbacks=callbacks, verbose=0)
    for epoch in range(3):
        (trained, averaged), (held, swapped) = before.seen[epoch], during.seen[epoch]
        assert not np.allclose(trained[0], averaged[0])  # momentum 0.5 over moving weights
        # Between the two callbacks the model holds the average (and the optimizer its weights).
        assert _same(held, averaged)
        assert _same(swapped, trained)
        restored, kept = after.seen[epoch]
        assert _same(kept, averaged)  # the average stays
        # Training goes on with its own weights; after the fit's last epoch, with the average.
        expected = averaged if epoch == 2 else trained
        assert _same(restored, expected)
    final = [w.numpy() for w in model.trainable_variables]
    assert _same(final, before.seen[2][1])


def test_without_an_average_the_weight_callbacks_change_nothing():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    assert averaged_pairs(model) == []
    average, snapshot = AverageWeights(), []
    record = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda e, logs: snapshot.append(model.get_weights())
    )
    x = np.ones((8, 3), "float32")
    model.fit(
        x, x[:, :1], epochs=1, verbose=0, callbacks=[average, record, TrainedWeights(average)]
    )
    assert _same(snapshot[0], model.get_weights())
