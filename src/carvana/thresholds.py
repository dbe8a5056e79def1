"""Thresholds tuned on the validation cars, from exact Dice curves of full-resolution maps.

At the end of `train`, `tune_threshold` predicts the run's validation cars once with the
streaming engine (uint8 probabilities upsampled with cv2 to the original size, as evaluate and
predict do) and keeps, per image, the Dice at every threshold of GRID, computed from two
histograms of the upscaled levels (all pixels, car pixels): no map is stored. The best
threshold goes to RUN_DIR/thresholds.json with the model's sha256, so that the file of a model
trained further is ignored. `run_threshold` is what evaluate and predict use when no
--threshold is given. No TensorFlow at import.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np

THRESHOLDS_FILE = "thresholds.json"
DEFAULT_THRESHOLD = 0.5
GRID = tuple(round(0.30 + 0.02 * i, 2) for i in range(21))  # 0.30, 0.32, ..., 0.70


def level(threshold: float) -> int:
    """The uint8 level a probability map must be above for `threshold`: floor(t*255)."""
    return int(math.floor(threshold * 255))


def image_scores(levels: np.ndarray, true: np.ndarray, cuts: np.ndarray):
    """(Dice, pixel accuracy) arrays of one image at each cut: a pixel is car when its level
    (uint8 map, or uint16 sum of several) is above the cut; `true` is the 0/1 mask."""
    import cv2

    car = np.asarray(true, np.uint8)
    if levels.dtype == np.uint8:
        # cv2.calcHist takes the mask as is: ~10x faster than numpy's boolean indexing.
        every = cv2.calcHist([levels], [0], None, [256], [0, 256]).ravel().astype(np.int64)
        on_car = cv2.calcHist([levels], [0], car, [256], [0, 256]).ravel().astype(np.int64)
    else:
        top = int(levels.max()) + 1
        every = np.bincount(levels.ravel(), minlength=top)
        on_car = np.bincount(levels[car.astype(bool)], minlength=top)
    # above[c]: pixels whose level is > c (a suffix sum shifted by one).
    above = np.concatenate([np.cumsum(every[::-1])[::-1][1:], [0]])
    above_car = np.concatenate([np.cumsum(on_car[::-1])[::-1][1:], [0]])
    cuts = np.minimum(np.asarray(cuts), len(every) - 1)
    predicted, hit, truth = above[cuts], above_car[cuts], int(on_car.sum())
    total = predicted + truth
    dice = np.where(total == 0, 1.0, 2.0 * hit / np.maximum(total, 1))
    accuracy = 1.0 - (predicted + truth - 2 * hit) / levels.size
    return dice, accuracy


def best_threshold(thresholds, dice) -> int:
    """Index of the highest Dice; ties go to the threshold nearest 0.5."""
    return max(range(len(thresholds)), key=lambda i: (dice[i], -abs(thresholds[i] - 0.5)))


def _model_sha(run_dir: Path) -> str | None:
    from carvana.config import MODEL_FILE
    from carvana.predict import file_sha256

    return file_sha256(Path(run_dir) / MODEL_FILE)


def read_tuned(run_dir: str | Path) -> dict | None:
    """RUN_DIR/thresholds.json when it belongs to the run's current model.keras, else None."""
    path = Path(run_dir) / THRESHOLDS_FILE
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text())
        threshold = float(saved["threshold"])
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: not a readable thresholds file ({err}); delete it") from None
    if not 0.0 < threshold < 1.0 or saved.get("model_sha256") != _model_sha(run_dir):
        return None  # tuned for another model (trained further since): not this one's
    return saved


def run_threshold(run_dirs, given: float | None = None) -> tuple[float, str]:
    """(threshold, where it comes from): `given`, else the mean of the runs' own thresholds
    (tuned on validation, or 0.5 for a run without one)."""
    if given is not None:
        return float(given), "given"
    tuned = [read_tuned(r) for r in run_dirs]
    values = [DEFAULT_THRESHOLD if t is None else float(t["threshold"]) for t in tuned]
    found = sum(t is not None for t in tuned)
    if not found:
        return DEFAULT_THRESHOLD, "default (no run has a tuned threshold)"
    source = "tuned on validation" if len(values) == 1 else f"mean of {len(values)} runs' own"
    return round(float(np.mean(values)), 4), source


def tune_threshold(data, run_dir: str | Path, log=print, batch_size: int = 16) -> dict | None:
    """Find the GRID threshold with the best mean full-resolution Dice on the run's validation
    cars (one prediction pass) and write RUN_DIR/thresholds.json; kept when already tuned for
    this model. None for a run without validation cars or model."""
    from carvana.config import PredictConfig, TrainConfig
    from carvana.evaluate import validation_ids
    from carvana.files import DataError
    from carvana.inference import predict_levels
    from carvana.models import load_model

    run_dir = Path(run_dir)
    config = TrainConfig.load(run_dir)
    sha = _model_sha(run_dir)
    if not config.val_cars or sha is None:
        return None
    saved = read_tuned(run_dir)
    if saved is not None:
        return saved
    ids = validation_ids(data, [run_dir])
    began = time.perf_counter()
    items = ((f"{i}.jpg", data.read_train_bytes(i)) for i in ids)
    pconfig = PredictConfig(batch_size=batch_size, workers=2)
    cuts = np.array([level(t) for t in GRID])
    rows = []
    for name, levels in predict_levels([(load_model(run_dir), config)], items, pconfig):
        if levels is None:
            raise DataError(f"{data.train.where(name)}: not a readable JPEG image")
        rows.append(image_scores(levels, data.read_mask(name[: -len(".jpg")]), cuts)[0])
    dice = np.mean(rows, axis=0)
    best = best_threshold(GRID, dice)
    result = {
        "threshold": GRID[best],
        "dice": float(dice[best]),
        "dice_at_0.5": float(dice[GRID.index(DEFAULT_THRESHOLD)]),
        "grid": {f"{t:.2f}": round(float(d), 6) for t, d in zip(GRID, dice, strict=True)},
        "images": len(rows),
        "cars": len(config.val_cars),
        "model_sha256": sha,
        "seconds": round(time.perf_counter() - began, 2),
    }
    (run_dir / THRESHOLDS_FILE).write_text(json.dumps(result, indent=1) + "\n")
    if log:
        log(
            f"threshold tuned on {len(rows)} validation images: {result['threshold']:.2f} "
            f"(full-resolution Dice {result['dice']:.5f}; {result['dice_at_0.5']:.5f} at 0.5)"
        )
    return result
