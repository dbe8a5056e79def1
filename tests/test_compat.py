"""Run folders across Keras versions: saved with this environment's Keras and loaded with the
Kaggle-pinned one (.venv-kaggle, made by .ci/kaggle-env), and the other way round.

A .keras file from Keras 3.15 does not deserialize in 3.13 (`input_axes`); models.load_model
rebuilds the model from config.json and loads only the weights, which must give the saver's
logits exactly in both directions."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
KAGGLE_PYTHON = Path(os.environ.get("CARVANA_KAGGLE_PYTHON", ROOT / ".venv-kaggle/bin/python"))

# Run by both interpreters: `save OUT DATA` writes a trained CNN run and a (perturbed, untrained)
# MobileNetV2 run with the logits of a fixed batch as Keras itself reloads them; `load OUT`
# loads every run under OUT with models.load_model and prints one JSON line per run.
PROBE = r"""
import json, sys
from pathlib import Path
import keras, numpy as np
from carvana.config import TrainConfig
from carvana.models import build_model, load_model

mode, out = sys.argv[1], Path(sys.argv[2])
x = np.random.default_rng(0).uniform(0, 255, (2, 32, 64, 3)).astype("float32")
if mode == "save":
    from carvana.files import CarvanaData
    from carvana.train import train

    base = dict(image_size=(32, 48), original_size=(128, 192), weights="none", augment=False)
    config = TrainConfig(model="cnn", epochs=1, batch_size=8, max_cars=2, **base)
    train(CarvanaData(sys.argv[3]), config, out / "cnn", verbose=0)
    config = TrainConfig(model="mobilenet", **base)
    config.save(out / "mobilenet")
    net = build_model(config)
    rng = np.random.default_rng(1)
    for w in net.weights:  # fresh BN statistics are 0/1: move them so they must be loaded
        w.assign(w.numpy() + rng.normal(0, 0.05, w.shape).astype("float32"))
    net.save(out / "mobilenet" / "model.keras")
    for run in out.iterdir():
        reference = keras.models.load_model(run / "model.keras", compile=False)
        np.save(run / "expected.npy", np.asarray(reference(x, training=False)))
else:
    for run in sorted(out.iterdir()):
        try:
            keras.models.load_model(run / "model.keras", compile=False)
            whole = "ok"
        except Exception as err:  # noqa: BLE001 - recorded: the defect rebuilding avoids
            whole = f"{type(err).__name__}: {str(err).splitlines()[0][:120]}"
        logits = np.asarray(load_model(run)(x, training=False))
        diff = float(np.abs(logits - np.load(run / "expected.npy")).max())
        print(json.dumps(dict(model=run.name, keras=keras.__version__, diff=diff, whole=whole)))
"""


def probe(python: Path, *args) -> str:
    """Run PROBE with an interpreter; its stdout."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "CARVANA_"))}
    env.update(TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
    run = subprocess.run(
        [str(python), "-c", PROBE, *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert run.returncode == 0, f"{python} {args[0]} failed:\n{run.stderr[-3000:]}"
    return run.stdout


def keras_version(python: Path) -> str:
    """The Keras version an interpreter has, without importing it."""
    code = "from importlib.metadata import version; print(version('keras'))"
    return subprocess.run(
        [str(python), "-I", "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()


@pytest.fixture(scope="module")
def pythons():
    """(this interpreter, the Kaggle-pinned one), skipping when the latter is absent or same."""
    if not KAGGLE_PYTHON.is_file():
        pytest.skip(
            f"no Kaggle-pinned environment at {KAGGLE_PYTHON}; .ci/kaggle-env creates it "
            "(or set CARVANA_KAGGLE_PYTHON)"
        )
    ours, theirs = Path(sys.executable), KAGGLE_PYTHON
    if keras_version(ours) == keras_version(theirs):
        pytest.skip(f"{KAGGLE_PYTHON} has this environment's Keras; nothing to cross")
    return ours, theirs


@pytest.mark.slow
@pytest.mark.parametrize("direction", ["ours-to-kaggle", "kaggle-to-ours"])
def test_run_folder_loads_with_the_other_keras(pythons, direction, synth_dirs, tmp_path):
    saver, loader = pythons if direction == "ours-to-kaggle" else pythons[::-1]
    probe(saver, "save", tmp_path, synth_dirs["folders"])
    saved_with = keras_version(saver)
    for run in ("cnn", "mobilenet"):
        recorded = json.loads((tmp_path / run / "config.json").read_text())["versions"]
        assert recorded["keras"] == saved_with
    results = [json.loads(line) for line in probe(loader, "load", tmp_path).splitlines()]
    assert [r["model"] for r in results] == ["cnn", "mobilenet"]
    for r in results:
        print(f"saved with Keras {saved_with}, loaded with {r['keras']}: {r}")
        assert r["keras"] == keras_version(loader) != saved_with
        assert r["diff"] <= 1e-5, r


def test_weights_that_do_not_fit_name_both_versions(tmp_path):
    import keras

    from carvana.config import TrainConfig
    from carvana.models import build_model, load_model

    TrainConfig(model="mobilenet", image_size=(32, 48)).save(tmp_path)
    build_model(TrainConfig(model="cnn", image_size=(32, 48))).save(tmp_path / "model.keras")
    with pytest.raises(ValueError) as err:
        load_model(tmp_path)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{tmp_path / 'model.keras'}: the weights")
    assert message.count(f"Keras {keras.__version__}") == 2
    assert f"pip install keras=={keras.__version__}" in message
