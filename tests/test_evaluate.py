"""Full-resolution evaluation of a tiny run, its report and panels, and the run comparison."""

import json

import numpy as np
import pytest
import tensorflow as tf

from carvana import rle
from carvana.config import TrainConfig
from carvana.edges import refined_levels
from carvana.evaluate import compare, epochs_to, evaluate
from carvana.files import ANGLES, CarvanaData
from carvana.inputs import crop_to_image, decode_image
from carvana.models import load_model
from carvana.thresholds import GRID, THRESHOLDS_FILE, level
from carvana.train import train

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


@pytest.fixture(scope="module")
def evaluated(synth_dirs, tmp_path_factory):
    base = tmp_path_factory.mktemp("evaluate")
    data = CarvanaData(synth_dirs["folders"])
    run = base / "cnn-run"
    train(data, TINY, run, resume=False, verbose=0)
    result = evaluate(data, run, base / "report", worst=3)
    return data, run, base, result


@pytest.mark.slow
def test_evaluate_writes_report_panels_and_json(evaluated):
    data, run, base, result = evaluated
    saved = json.loads((run / "evaluation.json").read_text())
    per_image = saved["per_image"]
    assert len(per_image) == 16 and saved["images"] == 16 and saved["cars"] == 1
    assert result["dice"] == pytest.approx(np.mean([r["dice"] for r in per_image]))
    assert result["dice"] > 0.5 and 0.5 < result["accuracy"] <= 1.0
    assert sorted(saved["per_angle"]) == list(ANGLES)
    report = result["report"].read_text()
    assert "Mean Dice at full resolution" in report and "| 16 |" in report
    panels = sorted(p.name for p in (base / "report").glob("worst_*.png"))
    assert len(panels) == 3 and all(f"]({name})" in report for name in panels)
    assert saved["worst"][0]["dice"] == pytest.approx(min(r["dice"] for r in per_image))


@pytest.mark.slow
def test_full_resolution_dice_recomputed_by_hand(evaluated):
    data, run, _, result = evaluated
    config = TrainConfig.load(run)
    image_id = json.loads((run / "evaluation.json").read_text())["per_image"][5]["id"]
    x = decode_image(tf.constant(data.read_train_bytes(image_id)), config)[None]
    prob = tf.sigmoid(load_model(run)(tf.cast(x, tf.float32), training=False))
    prob = crop_to_image(prob, config).numpy()[0, ..., 0]
    # As evaluate does by default: uint8 levels through the edge filter.
    small = np.round(prob * 255).astype(np.uint8)
    levels = refined_levels((small,), (128, 192), data.read_train_bytes(image_id))
    expected = rle.dice(levels > level(result["threshold"]), data.read_mask(image_id))
    got = {
        r["id"]: r["dice"] for r in json.loads((run / "evaluation.json").read_text())["per_image"]
    }
    assert got[image_id] == pytest.approx(expected, abs=0.01)


@pytest.fixture(scope="module")
def short_run(evaluated):
    data, _, base, _ = evaluated
    other = base / "cnn-short"
    train(data, TINY.replace(epochs=1, learning_rate=1e-3), other, resume=False, verbose=0)
    return other


@pytest.mark.slow
def test_training_tunes_the_threshold_that_evaluate_uses(evaluated):
    data, run, base, result = evaluated
    tuned = json.loads((run / THRESHOLDS_FILE).read_text())
    assert tuned["images"] == 16 and len(tuned["grid"]) == len(GRID)
    assert tuned["dice"] == pytest.approx(max(tuned["grid"].values()), abs=1e-6)
    assert tuned["dice"] >= tuned["dice_at_0.5"]
    assert result["threshold"] == tuned["threshold"]
    assert result["threshold_source"] == "tuned on validation"
    assert result["dice"] == pytest.approx(tuned["grid"][f"{tuned['threshold']:.2f}"], abs=1e-6)
    assert result["dice_at_0.5"] == pytest.approx(tuned["dice_at_0.5"], abs=1e-6)
    given = evaluate(data, run, base / "at-0.5", worst=0, threshold=0.5)
    assert given["dice"] == pytest.approx(tuned["dice_at_0.5"], abs=1e-6)
    assert given["threshold_source"] == "given"


@pytest.mark.slow
def test_evaluate_of_an_ensemble_reports_a_dice(evaluated, short_run):
    data, run, base, result = evaluated
    itself = evaluate(data, [run, run], base / "twice", worst=1)
    assert itself["dice"] == pytest.approx(result["dice"]) and itself["images"] == 16
    pair = evaluate(data, [run, short_run], base / "pair", worst=1)
    assert 0.0 < pair["dice"] <= 1.0 and pair["model"] == "cnn+cnn"
    assert pair["run"] == [str(run), str(short_run)]
    assert json.loads((base / "pair" / "evaluation.json").read_text())["dice"] == pair["dice"]
    assert not (short_run / "evaluation.json").exists()  # an ensemble describes no one run
    assert "Ensemble (mean of the maps)" in pair["report"].read_text()


@pytest.mark.slow
def test_compare_lists_both_runs(evaluated, short_run, tmp_path):
    data, run, base, result = evaluated
    other = short_run
    table = compare([run, other], out=tmp_path / "comparison.md", target=0.5)
    lines = table.splitlines()
    assert (
        lines[0].startswith("| run | model | full-res Dice")
        and "epochs to val Dice >= 0.5" in lines[0]
    )
    assert len(lines) == 4
    latest = json.loads((run / "evaluation.json").read_text())["dice"]  # the run's last one
    assert lines[2].startswith(f"| cnn-run | cnn | {latest:.5f}")
    assert "| cnn-short | cnn | not evaluated |" in lines[3] and "284,241" in lines[3]
    assert (tmp_path / "comparison.md").read_text().count("| cnn-") == 2


def test_epochs_to_target():
    history = [
        {"epoch": 1, "val_dice": 0.5},
        {"epoch": 2, "val_dice": 0.97},
        {"epoch": 3, "val_dice": 0.99},
    ]
    assert epochs_to(history, 0.95) == 2
    assert epochs_to(history, 0.995) is None


def test_a_run_without_validation_cars_is_refused(synth_dirs, tmp_path):
    TINY.replace(val_fraction=0.0).save(tmp_path)
    with pytest.raises(ValueError, match="no validation cars"):
        evaluate(CarvanaData(synth_dirs["folders"]), tmp_path, tmp_path / "out")


@pytest.mark.slow
def test_evaluate_with_flips_scores_the_flip_averaged_maps(evaluated):
    data, run, base, result = evaluated
    flipped = evaluate(data, run, base / "tta", worst=0, tta=True)
    assert flipped["tta"] is True and result["tta"] is False
    assert flipped["images"] == result["images"] and 0.5 < flipped["dice"] <= 1.0
    # The same model seen through its mirror image: close to, but not exactly, the plain score.
    assert flipped["dice"] != result["dice"] and abs(flipped["dice"] - result["dice"]) < 0.1
