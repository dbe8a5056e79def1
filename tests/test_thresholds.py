"""Dice curves from histograms, the tuned threshold's file, and the optional threshold setting."""

import json

import numpy as np
import pytest

from carvana import rle
from carvana.config import PredictConfig, parse_value
from carvana.flags import from_env
from carvana.thresholds import (
    THRESHOLDS_FILE,
    best_threshold,
    image_scores,
    read_tuned,
    run_threshold,
)


@pytest.mark.parametrize("dtype,top", [(np.uint8, 255), (np.uint16, 3 * 255)])
def test_image_scores_equal_dice_and_accuracy_of_the_thresholded_map(dtype, top):
    rng = np.random.default_rng(0)
    levels = rng.integers(0, top + 1, (37, 53)).astype(dtype)
    true = (levels.astype(int) + rng.integers(-90, 90, levels.shape) > top // 2).astype(np.uint8)
    cuts = np.array([0, 60, top // 2, top - 1, top, top + 40])
    dice, accuracy = image_scores(levels, true, cuts)
    for cut, d, a in zip(cuts, dice, accuracy, strict=True):
        pred = levels > cut
        assert d == pytest.approx(rle.dice(pred, true)), cut
        assert a == pytest.approx(np.mean(pred == true.astype(bool))), cut
    assert 0.5 < dice[2] < 1.0


def test_image_scores_of_an_empty_mask_follow_kaggle():
    levels = np.zeros((4, 5), np.uint8)
    dice, accuracy = image_scores(levels, np.zeros((4, 5), np.uint8), np.array([127]))
    assert dice.tolist() == [1.0] and accuracy.tolist() == [1.0]


def test_best_threshold_breaks_ties_towards_one_half():
    assert best_threshold((0.3, 0.4, 0.5, 0.6), [0.9, 0.95, 0.95, 0.9]) == 2
    assert best_threshold((0.3, 0.4, 0.5, 0.6), [0.9, 0.97, 0.95, 0.9]) == 1


def test_threshold_setting_is_optional_and_checked():
    assert PredictConfig().threshold is None
    assert parse_value(PredictConfig, "threshold", "0.4") == 0.4
    assert from_env(PredictConfig(), {"CARVANA_THRESHOLD": "0.45"})[0].threshold == 0.45
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match="setting threshold must be between 0 and 1"):
            PredictConfig(threshold=bad)


def test_run_threshold_reads_the_file_of_the_current_model_only(tmp_path):
    from carvana.predict import file_sha256

    runs = [tmp_path / "a", tmp_path / "b"]
    for i, run in enumerate(runs):
        run.mkdir()
        (run / "model.keras").write_bytes(b"model %d" % i)
    assert run_threshold(runs) == (0.5, "default (no run has a tuned threshold)")
    sha = file_sha256(runs[0] / "model.keras")
    (runs[0] / THRESHOLDS_FILE).write_text(json.dumps({"threshold": 0.42, "model_sha256": sha}))
    assert run_threshold(runs[:1]) == (0.42, "tuned on validation")
    assert run_threshold(runs)[0] == pytest.approx(0.46)
    assert run_threshold(runs, 0.6) == (0.6, "given")
    (runs[0] / "model.keras").write_bytes(b"trained further")
    assert read_tuned(runs[0]) is None and run_threshold(runs[:1])[0] == 0.5
    (runs[1] / THRESHOLDS_FILE).write_text("{not json")
    with pytest.raises(ValueError, match=r"thresholds\.json: not a readable thresholds file"):
        run_threshold(runs[1:])
