"""Training: loss and metric by hand, car split, a tiny run that learns, resume, time limit."""

import json
import math

import numpy as np
import pytest
import tensorflow as tf

from carvana.config import TrainConfig
from carvana.files import CarvanaData, angle, car_id, spread
from carvana.inputs import get_dataset
from carvana.models import load_model
from carvana.train import (
    DiceMetric,
    TimeLimit,
    bce_dice_loss,
    choose_cars,
    pick_strategy,
    read_history,
    recalibrate_bn,
    resume_config,
    stage_config,
    train,
)

TINY = TrainConfig(
    model="cnn",
    image_size=(32, 48),
    batch_size=8,
    learning_rate=3e-3,
    epochs=6,
    patience=6,
    progressive="",  # one stage: progressive resizing and augment_until have tests of their own
    augment_until=1.0,
)


def test_loss_by_hand():
    y = np.ones((1, 2, 2, 1), np.float32)
    # logits 0: probability 0.5 everywhere; BCE = ln 2, soft Dice = (2*2 + 1) / (2 + 4 + 1).
    loss = bce_dice_loss(y, np.zeros_like(y)).numpy()
    np.testing.assert_allclose(loss, [math.log(2) + 1 - 5 / 7], rtol=1e-5)
    # Confident and right: both terms vanish, also for an empty mask.
    assert bce_dice_loss(y, 20 * y).numpy()[0] < 1e-3
    assert bce_dice_loss(0 * y, -20 * y).numpy()[0] < 1e-3


def test_lovasz_hinge_by_hand():
    from carvana.losses import lovasz_hinge

    y = np.zeros((2, 4, 4, 1), np.float32)
    y[:, 1:3, 1:3] = 1  # a 2x2 car in a 4x4 image
    right = 20 * (2 * y - 1)
    # Every margin beyond 1: no hinge error at all.
    np.testing.assert_allclose(lovasz_hinge(y, right).numpy(), [0, 0])
    # Logits 0: every hinge error is 1 and the weights add up to the Jaccard loss of all wrong.
    np.testing.assert_allclose(lovasz_hinge(y, 0 * y).numpy(), [1, 1], rtol=1e-6)
    # One background pixel at logit +1: hinge error 2, weighted by the Jaccard loss of that one
    # pixel wrong, 1 - 4/5.
    one_wrong = right.copy()
    one_wrong[0, 0, 0, 0] = 1.0
    np.testing.assert_allclose(lovasz_hinge(y, one_wrong).numpy(), [0.4, 0], atol=1e-6)
    # Soft targets (car shares) take their sign from 0.5: the same as the 0/1 mask they round to.
    shares = np.where(y == 1, 0.75, 0.25).astype(np.float32)
    np.testing.assert_allclose(lovasz_hinge(shares, one_wrong).numpy(), [0.4, 0], atol=1e-6)


def test_bce_lovasz_loss_has_gradients_and_vanishes_when_confidently_right():
    from carvana.losses import LOSSES

    y = np.zeros((2, 4, 4, 1), np.float32)
    y[:, 1:3, 1:3] = 1
    logits = tf.Variable(np.zeros_like(y))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(LOSSES["bce_lovasz"](y, logits))
    grad = tape.gradient(loss, logits).numpy()
    # Gradient descent raises the car's logits and lowers the background's.
    assert (grad[y == 1] < 0).all() and (grad[y == 0] > 0).all()
    assert LOSSES["bce_lovasz"](y, 20 * (2 * y - 1)).numpy().max() < 1e-3


def test_dice_metric_is_the_mean_over_images():
    metric = DiceMetric()
    true = np.zeros((3, 2, 2, 1), np.float32)
    true[0, 0] = 1  # half the image
    true[2] = 1
    logits = np.full((3, 2, 2, 1), -5.0, np.float32)
    logits[0] = 5.0  # predicts the whole image: Dice 2*2 / (4 + 2)
    # image 1: both empty -> 1; image 2: misses everything -> 0
    metric.update_state(true, logits)
    np.testing.assert_allclose(metric.result().numpy(), (4 / 6 + 1 + 0) / 3, rtol=1e-6)
    metric.reset_state()
    metric.update_state(true[1:2], logits[1:2])
    assert metric.result().numpy() == 1.0
    # Soft targets are scored as the masks they stand for (share >= 0.5).
    metric.reset_state()
    metric.update_state(np.where(true == 1, 0.5, 0.49), logits)
    np.testing.assert_allclose(metric.result().numpy(), (4 / 6 + 1 + 0) / 3, rtol=1e-6)


def test_pixel_accuracy_scores_soft_targets_as_their_masks():
    from carvana.metrics import PixelAccuracy

    true = np.array([[1.0, 0.6, 0.4, 0.0]], np.float32).reshape(1, 2, 2, 1)
    logits = np.array([[3.0, 1.0, -1.0, 2.0]], np.float32).reshape(1, 2, 2, 1)
    metric = PixelAccuracy()
    metric.update_state(true, logits)
    assert metric.result().numpy() == pytest.approx(3 / 4)  # only the last pixel is wrong


def test_recalibrate_bn_averages_the_batch_statistics():
    import keras

    inputs = keras.Input((1,))
    model = keras.Model(inputs, keras.layers.BatchNormalization(momentum=0.99, name="bn")(inputs))
    batches = [(np.array([[0.0], [2.0]]), None), (np.array([[4.0], [6.0]]), None)]
    assert recalibrate_bn(model, batches) == 2
    bn = model.get_layer("bn")
    # Batch means 1 and 5, (biased) variances 1 and 1: averaged, not smoothed with momentum.
    np.testing.assert_allclose(bn.moving_mean.numpy(), [3.0], rtol=1e-6)
    np.testing.assert_allclose(bn.moving_variance.numpy(), [1.0], rtol=1e-5)
    assert bn.momentum == 0.99


def test_choose_cars_is_deterministic_and_by_car(synth_dirs):
    ids = CarvanaData(synth_dirs["folders"]).train_ids()
    config = TINY.replace(max_cars=4, val_fraction=0.25)
    train_ids, val_ids = choose_cars(ids, config)
    assert (train_ids, val_ids) == choose_cars(ids, config)
    train_cars, val_cars = {car_id(i) for i in train_ids}, {car_id(i) for i in val_ids}
    assert len(train_cars) == 3 and len(val_cars) == 1 and not train_cars & val_cars
    assert len(train_ids) == 48 and len(val_ids) == 16  # all 16 angles of each car
    named = config.replace(train_cars=tuple(train_cars), val_cars=tuple(val_cars), max_cars=0)
    assert choose_cars(ids, named) == (train_ids, val_ids)


def test_strategy_on_this_machine_is_the_default():
    assert pick_strategy().num_replicas_in_sync == 1


def _baseline_all_car(data, ids, config):
    """Mean Dice of predicting 'car' everywhere (padding included, as the metric sees it)."""
    metric = DiceMetric()
    for _, y in get_dataset(data, ids, config, training=False, cache=None):
        metric.update_state(y, tf.ones_like(y))
    return float(metric.result())


@pytest.mark.slow
def test_tiny_run_learns_and_writes_its_run_folder(synth_dirs, tmp_path, capsys):
    data = CarvanaData(synth_dirs["zipped"])
    run = tmp_path / "run"
    # float32: the export is compared below to the recorded best to 1e-4 (a bfloat16 run, the
    # default on CPUs that have it, validates with slightly different logits).
    # Each epoch scores a fixed sample of 8 of the 16 validation images, every other angle.
    asked = TINY.replace(val_images=8)
    summary = train(data, asked, run, resume=False, precision="float32")
    config = TrainConfig.load(run)
    _, val_ids = choose_cars(data.train_ids(), config)
    baseline = _baseline_all_car(data, val_ids, config)  # all-background scores 0
    # A model that learned nothing scores at most the all-car baseline (~0.2 here); a
    # learning one must find the car's outline: well above that, and above 0.6 outright.
    assert summary["best_val_dice"] > max(0.6, baseline + 0.3), (summary, baseline)
    assert summary["epochs_run"] == 6 and summary["seconds_per_epoch"] > 0
    # Config round trip: detected original size, the split, everything else as asked.
    assert config.original_size == (128, 192)
    assert len(config.val_cars) == 1 and len(config.train_cars) == 5
    assert config.replace(original_size=TINY.original_size, val_cars=(), train_cars=()) == asked
    rows = read_history(run / "history.csv")
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert max(r["val_dice"] for r in rows) == pytest.approx(summary["best_val_dice"])
    assert (run / "curves.png").stat().st_size > 1000
    # model.keras is the best epoch: its Dice on the sample is the recorded best.
    sample = spread(val_ids, 8)
    assert [int(angle(i)) for i in sample] == [1, 3, 5, 7, 9, 11, 13, 15]
    model, metric = load_model(run), DiceMetric()
    for x, y in get_dataset(data, sample, config, training=False, cache=None):
        metric.update_state(y, model(x, training=False))
    assert float(metric.result()) == pytest.approx(summary["best_val_dice"], abs=1e-4)
    out = capsys.readouterr().out
    assert "validating on 8 of 16 images / 1 cars each epoch" in out and "epoch 6/6" in out


@pytest.mark.slow
def test_resume_continues_from_the_saved_epoch(synth_dirs, tmp_path, capsys):
    data = CarvanaData(synth_dirs["folders"])
    run = tmp_path / "run"
    config = TINY.replace(epochs=2, max_cars=3, augment=False)
    first = train(data, config, run)
    before = read_history(run / "history.csv")
    state = json.loads((run / "checkpoint" / "state.json").read_text())
    assert first["epochs_run"] == 2 and state["epoch"] == 2
    capsys.readouterr()
    again = train(data, config.replace(epochs=3), run)
    assert "resuming after epoch 2" in capsys.readouterr().out
    after = read_history(run / "history.csv")
    assert [r["epoch"] for r in after] == [1, 2, 3] and after[:2] == before
    assert again["epochs_run"] == 3 and again["best_val_dice"] >= first["best_val_dice"]
    # Settings not asked for (the CLI fills in their defaults) resume the saved run as it was.
    done = train(data, TrainConfig(epochs=3), run, asked={"epochs"})  # nothing left to do
    assert done["model"] == "cnn" and TrainConfig.load(run).image_size == (32, 48)
    assert done["epochs_run"] == 3 and len(read_history(run / "history.csv")) == 3
    with pytest.raises(ValueError, match="--fresh"):
        train(data, config.replace(epochs=3, learning_rate=1e-2), run)
    fresh = train(data, config.replace(epochs=1), run, resume=False)
    assert fresh["epochs_run"] == 1 and len(read_history(run / "history.csv")) == 1


def test_a_weight_average_trains_exports_and_resumes(synth_dirs, tmp_path):
    data = CarvanaData(synth_dirs["folders"])
    run = tmp_path / "run"
    config = TINY.replace(epochs=2, max_cars=3, augment=False, ema=0.9)
    first = train(data, config, run)
    assert first["epochs_run"] == 2 and first["best_val_dice"] > 0
    # The averages are optimizer variables: the checkpoint holds them and a resume needs them.
    again = train(data, config.replace(epochs=3), run)
    assert again["epochs_run"] == 3
    with pytest.raises(ValueError, match="ema"):
        train(data, config.replace(epochs=4, ema=0.0), run)


@pytest.mark.slow
def test_time_limit_stops_training(synth_dirs, tmp_path):
    data = CarvanaData(synth_dirs["folders"])
    config = TINY.replace(epochs=5, max_cars=2, val_fraction=0.5)
    summary = train(data, config, tmp_path / "run", callbacks=[TimeLimit(0)], verbose=0)
    assert summary["epochs_run"] == 1
    assert (tmp_path / "run" / "model.keras").exists()


def _checkpointed_run(tmp_path, config: TrainConfig):
    """A run folder with a saved config and a checkpoint state, as an interrupted run leaves."""
    from carvana.callbacks import RunState

    run = tmp_path / "run"
    config.save(run)
    RunState(epoch=2, best=0.5, best_epoch=2).save(run / "checkpoint")
    return run


def test_resume_honours_an_asked_default_and_refuses_another(tmp_path):
    saved = TINY.replace(augment=False, patience=9, val_cars=("c1",), train_cars=("c2",))
    run = _checkpointed_run(tmp_path, saved)
    # patience=5 is the default: asked for explicitly, it applies (it used to be ignored).
    state, config = resume_config(run, TrainConfig(patience=5), asked={"patience"})
    assert state.epoch == 2 and config.patience == 5
    assert config.replace(patience=9) == saved
    # Not asked for: defaults the CLI filled in change nothing.
    assert resume_config(run, TrainConfig(), asked=())[1] == saved
    # augment=True is the default too: asked for, it differs from the run and is refused.
    with pytest.raises(ValueError, match=r"\(augment\); pass the same settings.*--fresh"):
        resume_config(run, TrainConfig(augment=True), asked={"augment", "epochs"})
    # asked=None: every field counts; what train fills in itself is never compared.
    same = saved.replace(epochs=30, val_cars=(), train_cars=(), original_size=(9, 9))
    state, config = resume_config(run, same, asked=None)
    assert config.epochs == 30 and config.val_cars == ("c1",) and config.original_size == (9, 9)
    with pytest.raises(ValueError, match="model, progressive, weights"):
        resume_config(run, TrainConfig(weights="x.h5"), asked=None)
    with pytest.raises(ValueError, match="unknown settings: colour"):
        resume_config(run, saved, asked={"colour"})


def test_a_corrupt_training_image_stops_training_with_its_name(synth_copy, tmp_path):
    from carvana.files import DataError

    root = synth_copy("folders")
    data = CarvanaData(root)
    bad = root / "train" / f"{data.train_ids()[5]}.jpg"
    bad.write_bytes(bad.read_bytes()[: len(bad.read_bytes()) // 2])  # header intact, data cut
    with pytest.raises(DataError, match=rf"{bad.name}") as err:
        train(CarvanaData(root), TINY.replace(epochs=1), tmp_path / "run", verbose=0)
    assert "\n" not in str(err.value)


@pytest.fixture
def fake_clock(monkeypatch):
    """Time budgets planned by a clock that advances 0.1 s per reading (~1 s a tiny epoch),
    whatever the machine's speed: a slow first epoch cannot spend a test's budget."""
    readings = iter(range(10**7))
    monkeypatch.setattr("carvana.callbacks.now", lambda: 0.1 * next(readings))


@pytest.mark.slow
def test_a_time_budget_ends_the_schedule_and_the_run(synth_dirs, tmp_path, fake_clock):
    data = CarvanaData(synth_dirs["folders"])
    run = tmp_path / "run"
    config = TINY.replace(epochs=500, patience=500, max_cars=3, minutes=0.25)
    summary = train(data, config, run, verbose=0)
    rows = read_history(run / "history.csv")
    # Stopped by the budget long before 500 epochs, the last (partial) epoch validated,
    # the best one exported and checkpointed as finished.
    assert summary["budget_spent"] and not summary["stopped_early"]
    assert 2 <= summary["epochs_run"] == len(rows) < 500 and "val_dice" in rows[-1]
    assert (run / "model.keras").exists()
    state = json.loads((run / "checkpoint" / "state.json").read_text())
    assert state["budget_spent"] and state["progress"] == 1.0
    # The cosine was planned for the budget: it went from the start to near its end.
    lrs = [r["learning_rate"] for r in rows]
    assert lrs == sorted(lrs, reverse=True) and lrs[-1] < 0.25 * TINY.learning_rate
    # A finished budget is a finished run; a new budget does not train it further.
    again = train(data, config.replace(minutes=1.0), run, verbose=0)
    assert again["epochs_run"] == summary["epochs_run"]


@pytest.mark.slow
def test_progressive_resizing_trains_small_then_at_image_size(synth_dirs, tmp_path, capsys):
    data = CarvanaData(synth_dirs["folders"])
    run = tmp_path / "run"
    config = TINY.replace(
        image_size=(64, 96), progressive="0.5@0.5", epochs=4, max_cars=3, augment=False
    )
    summary = train(data, config, run, precision="float32")
    out = capsys.readouterr().out
    assert "stage 1/2: 32x48 until 50% of the schedule" in out and "stage 2/2: 64x96" in out
    rows = read_history(run / "history.csv")
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    # One optimizer and one cosine through both stages: the rate never jumps back up.
    lrs = [r["learning_rate"] for r in rows]
    assert lrs == sorted(lrs, reverse=True)
    # Dice at 32x48 does not compare with Dice at 64x96: the best is one of the last stage's.
    state = json.loads((run / "checkpoint" / "state.json").read_text())
    assert state["stage"] == 1 and summary["best_epoch"] in (3, 4)
    assert summary["best_val_dice"] == pytest.approx(rows[summary["best_epoch"] - 1]["val_dice"])
    assert load_model(run).input_shape == (None, 64, 96, 3)  # predict's model: image_size
    # A resumed run past the first stage goes on at image_size only.
    again = train(data, config.replace(epochs=5), run, precision="float32")
    out = capsys.readouterr().out
    assert "stage 1/2" not in out and "stage 2/2: 64x96" in out and again["epochs_run"] == 5


@pytest.mark.slow
def test_augmentation_stops_at_augment_until(synth_dirs, tmp_path, capsys, monkeypatch):
    import carvana.inputs

    fed = []  # (size, augmented) of each training dataset train builds

    def recording(data, ids, config, training, *args, **kwargs):
        if training:
            fed.append((config.image_size, config.augment))
        return get_dataset(data, ids, config, training, *args, **kwargs)

    monkeypatch.setattr(carvana.inputs, "get_dataset", recording)
    data = CarvanaData(synth_dirs["folders"])
    run = tmp_path / "run"
    config = TINY.replace(epochs=4, max_cars=3, augment_until=0.5)
    summary = train(data, config, run, precision="float32")
    out = capsys.readouterr().out
    assert "stage 1/2: 32x48 until 50% of the schedule, augmented" in out
    assert "stage 2/2: 32x48 until 100% of the schedule, not augmented" in out
    assert fed == [((32, 48), True), ((32, 48), False)]
    assert summary["epochs_run"] == 4 and len(read_history(run / "history.csv")) == 4
    # One size throughout: the best is kept across the switch, the model has a fixed input.
    state = json.loads((run / "checkpoint" / "state.json").read_text())
    rows = read_history(run / "history.csv")
    assert state["stage"] == 1
    assert summary["best_val_dice"] == pytest.approx(max(r["val_dice"] for r in rows))
    assert load_model(run).input_shape == (None, *config.padded_size, 3)


@pytest.mark.parametrize(
    ("augment", "keep_flips", "stage_augmented", "expected"),
    [
        (True, False, True, (True, 1.0)),  # augmented stage: the config's own strength
        (True, False, False, (False, 1.0)),  # after augment_until: nothing
        (True, True, True, (True, 1.0)),
        (True, True, False, (True, 0.0)),  # after augment_until: flips only
        (False, True, False, (False, 1.0)),  # augmentation off: no flips either
    ],
)
def test_a_stage_after_augment_until_flips_only_with_keep_flips(
    augment, keep_flips, stage_augmented, expected
):
    fed = TINY.replace(augment=augment, keep_flips=keep_flips)
    sized = stage_config(fed, (64, 96), stage_augmented)
    assert (sized.augment, sized.augment_strength) == expected and sized.image_size == (64, 96)


def test_keep_flips_goes_on_flipping_after_augment_until(synth_dirs, tmp_path, capsys, monkeypatch):
    import carvana.inputs

    fed = []  # (augmented, strength) of each training dataset train builds

    def recording(data, ids, config, training, *args, **kwargs):
        if training:
            fed.append((config.augment, config.augment_strength))
        return get_dataset(data, ids, config, training, *args, **kwargs)

    monkeypatch.setattr(carvana.inputs, "get_dataset", recording)
    data = CarvanaData(synth_dirs["folders"])
    config = TINY.replace(epochs=2, max_cars=3, augment_until=0.5, keep_flips=True)
    train(data, config, tmp_path / "run", precision="float32")
    assert "stage 2/2: 32x48 until 100% of the schedule, flips only" in capsys.readouterr().out
    assert fed == [(True, 1.0), (True, 0.0)]


@pytest.mark.slow
def test_a_time_budget_covers_every_stage(synth_dirs, tmp_path, capsys, fake_clock):
    data = CarvanaData(synth_dirs["folders"])
    config = TINY.replace(
        image_size=(64, 96),
        progressive="0.5@0.4",
        epochs=500,
        patience=500,
        max_cars=3,
        minutes=0.3,
    )
    summary = train(data, config, tmp_path / "run")
    out = capsys.readouterr().out
    assert "stage 1/2: 32x48" in out and "stage 2/2: 64x96" in out
    assert summary["budget_spent"] and not summary["stopped_early"]
    # The switch comes at ~40% of the budget's epochs (their clock time is all alike here).
    first = out.split("stage 2/2")[0].count("\nepoch ")
    assert 0.3 <= first / summary["epochs_run"] <= 0.5, out
    rows = read_history(tmp_path / "run" / "history.csv")
    lrs = [r["learning_rate"] for r in rows]
    assert lrs == sorted(lrs, reverse=True) and lrs[-1] < 0.25 * TINY.learning_rate
