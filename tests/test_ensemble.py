"""Ensembles and tuned thresholds in `predict`: maps of several runs averaged at full size."""

import json
import shutil
from pathlib import Path

import cv2
import keras
import numpy as np
import pytest
import tensorflow as tf

import carvana.predict
from carvana import cli, rle
from carvana.config import PredictConfig, TrainConfig
from carvana.edges import refined_levels
from carvana.files import CarvanaData
from carvana.inputs import decode_image
from carvana.predict import file_sha256, predict
from carvana.submission import read_rows, validate
from carvana.thresholds import THRESHOLDS_FILE

A = TrainConfig(model="cnn", image_size=(32, 48), original_size=(128, 192))
B = TrainConfig(model="cnn", image_size=(48, 72), original_size=(128, 192))  # another geometry
WEIGHTS = {"a": ([0.0, 6.0, -6.0], 0.3), "b": ([-3.0, 5.0, -2.0], -0.4)}


def conv_model(config: TrainConfig, kind: str) -> keras.Model:
    """A fixed 1x1 convolution of the image; `kind` picks its weights."""
    ph, pw = config.padded_size
    inputs = keras.Input((ph, pw, 3), name="image")
    conv = keras.layers.Conv2D(1, 1, name="logits")
    outputs = conv(keras.layers.Rescaling(1 / 255)(inputs))
    kernel, bias = WEIGHTS[kind]
    conv.set_weights([np.array(kernel, np.float32).reshape(1, 1, 3, 1), np.array([bias])])
    return keras.Model(inputs, outputs)


@pytest.fixture(autouse=True)
def hand_made_models(monkeypatch):
    def load(run_dir):
        return keras.models.load_model(Path(run_dir) / "model.keras"), TrainConfig.load(run_dir)

    monkeypatch.setattr(carvana.predict, "load_run", load)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    made = {}
    for kind, config in (("a", A), ("b", B)):
        path = tmp_path_factory.mktemp(f"run-{kind}")
        config.save(path)
        conv_model(config, kind).save(path / "model.keras")
        made[kind] = path
    return made


def model_map(data, name: str, config: TrainConfig, kind: str) -> np.ndarray:
    """One model's uint8 probability map*255 of a test image at its size, without predict."""
    h, w = config.image_size
    jpeg = data.read_test_bytes(name)
    image = decode_image(tf.constant(jpeg), config).numpy()
    logits = conv_model(config, kind)(image[None].astype(np.float32)).numpy()[0, :h, :w, 0]
    return np.round(255 / (1 + np.exp(-logits.astype(np.float64)))).astype(np.uint8)


def level_map(data, name: str, config: TrainConfig, kind: str) -> np.ndarray:
    """One model's uint8 map of a test image upscaled with cv2, computed without predict."""
    small = model_map(data, name, config, kind)
    return cv2.resize(small, (192, 128), interpolation=cv2.INTER_LINEAR).astype(np.int64)


def rows_of(path) -> dict[str, str]:
    return dict(read_rows(path))


def run_predict(data, run_dirs, out, **settings) -> dict[str, str]:
    settings = {"batch_size": 5, "guided": False, **settings}  # level_map: plain bilinear
    summary = predict(data, run_dirs, out, PredictConfig(**settings), progress=False)
    assert summary["ok"] and validate(out, data) == []
    return rows_of(out)


def test_an_ensemble_of_a_run_with_itself_is_the_run(synth_dirs, runs, tmp_path):
    data = CarvanaData(synth_dirs["zipped"])
    alone = run_predict(data, runs["a"], tmp_path / "a.csv.gz")
    twice = run_predict(data, [runs["a"], runs["a"]], tmp_path / "aa.csv.gz")
    assert twice == alone and len(alone) == 12


def test_an_ensemble_of_two_runs_averages_their_full_size_maps(synth_dirs, runs, tmp_path):
    data = CarvanaData(synth_dirs["zipped"])
    a = run_predict(data, runs["a"], tmp_path / "a.csv.gz")
    b = run_predict(data, runs["b"], tmp_path / "b.csv.gz")
    both = run_predict(data, [runs["a"], runs["b"]], tmp_path / "ab.csv.gz")
    assert both != a and both != b
    for name in data.test_names():
        total = level_map(data, name, A, "a") + level_map(data, name, B, "b")
        assert both[name] == rle.encode(total > 2 * 127), name  # mean > floor(0.5 * 255)
    # the CLI takes --run twice, and a resume of the pair refuses a single run
    out = tmp_path / "cli.csv.gz"
    args = ["predict", "--data", str(synth_dirs["zipped"]), "--out", str(out), "--guided", "off"]
    assert cli.main([*args, "--run", str(runs["a"]), "--run", str(runs["b"])]) == 0
    assert rows_of(out) == both


def test_guided_masks_are_the_refined_mean_of_the_maps(synth_dirs, runs, tmp_path):
    data = CarvanaData(synth_dirs["zipped"])
    plain = run_predict(data, [runs["a"], runs["b"]], tmp_path / "p.csv.gz")
    guided = run_predict(data, [runs["a"], runs["b"]], tmp_path / "g.csv.gz", guided=True)
    assert guided != plain
    for name in data.test_names():
        probs = (model_map(data, name, A, "a"), model_map(data, name, B, "b"))
        levels = refined_levels(probs, (128, 192), data.read_test_bytes(name))
        assert guided[name] == rle.encode(levels > 2 * 127), name


def test_predict_uses_the_runs_tuned_threshold_unless_given(synth_dirs, runs, tmp_path):
    data = CarvanaData(synth_dirs["zipped"])
    run = tmp_path / "tuned"
    shutil.copytree(runs["a"], run)
    tuned = {"threshold": 0.3, "model_sha256": file_sha256(run / "model.keras")}
    (run / THRESHOLDS_FILE).write_text(json.dumps(tuned))
    names = data.test_names()
    expected = {n: rle.encode(level_map(data, n, A, "a") > 76) for n in names}  # floor(76.5)
    summary = predict(data, run, tmp_path / "t.csv.gz", PredictConfig(guided=False), progress=False)
    assert summary["threshold"] == 0.3 and rows_of(tmp_path / "t.csv.gz") == expected
    given = run_predict(data, run, tmp_path / "g.csv.gz", threshold=0.5)
    assert given == run_predict(data, runs["a"], tmp_path / "a.csv.gz") != expected
    # the ensemble's threshold: the mean of its runs' own (0.3 tuned, 0.5 by default)
    pair = predict(
        data, [run, runs["b"]], tmp_path / "p.csv.gz", PredictConfig(guided=False), progress=False
    )
    assert pair["threshold"] == pytest.approx(0.4)
    # a thresholds file of another model (trained further since) is not this model's
    (run / THRESHOLDS_FILE).write_text(json.dumps({**tuned, "model_sha256": "0" * 64}))
    stale = predict(data, run, tmp_path / "s.csv.gz", PredictConfig(guided=False), progress=False)
    assert stale["threshold"] == 0.5
