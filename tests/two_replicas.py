"""Run by tests/test_distribute.py in a subprocess: the CPU split into two logical devices
(which must happen before TensorFlow initialises them, hence a process of its own), then tiny
runs with 1 or 2 replicas, float32 or mixed precision, XLA on; prints one JSON of results.

Usage: python tests/two_replicas.py DATA_DIR WORK_DIR CONFIG_JSON
"""

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(data_dir: str, work: str, config_json: str) -> dict:
    """Four runs and two cross-resumes; returns each run's history and summary."""
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

    from carvana.config import TrainConfig
    from carvana.files import CarvanaData
    from carvana.history import read_history
    from carvana.train import train

    data, work = CarvanaData(data_dir), Path(work)
    config = TrainConfig.from_dict(json.loads(config_json))
    setups = {
        "1-float32": (None, "float32"),
        "2-mixed": (tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]), "mixed_float16"),
    }
    out = {
        "recalibrated": _recalibrated_copies(setups["2-mixed"][0]),
        "swapped": _swapped_copies(setups["2-mixed"][0]),
    }
    for name, (strategy, precision) in setups.items():
        summary = train(
            data, config, work / name, resume=False, verbose=0,
            strategy=strategy, precision=precision, jit_compile=True,
        )  # fmt: skip
        out[name] = {
            "summary": _plain(summary),
            "history": read_history(work / name / "history.csv"),
        }
    # Each checkpoint resumes one epoch further on the other setup.
    for name, other in (("1-float32", "2-mixed"), ("2-mixed", "1-float32")):
        strategy, precision = setups[other]
        summary = train(
            data, config.replace(epochs=config.epochs + 1), work / name, verbose=0,
            asked={"epochs"}, strategy=strategy, precision=precision, jit_compile=True,
        )  # fmt: skip
        out[f"{name}-resumed"] = {
            "summary": _plain(summary),
            "history": read_history(work / name / "history.csv"),
        }
    return out


def _recalibrated_copies(strategy) -> list:
    """Each replica's copy of a BN moving mean after recalibrating on batch means 1 and 5."""
    import keras
    import numpy as np

    from carvana.callbacks import recalibrate_bn

    with strategy.scope():
        inputs = keras.Input((1,))
        model = keras.Model(inputs, keras.layers.BatchNormalization(name="bn")(inputs))
    batches = [
        (np.array([[0.0], [2.0]], "float32"), None),
        (np.array([[4.0], [6.0]], "float32"), None),
    ]
    recalibrate_bn(model, batches)
    mirrored = model.get_layer("bn").moving_mean.value
    return [float(copy.numpy()[0]) for copy in mirrored.values]


def _swapped_copies(strategy) -> dict:
    """Each replica's copy of a weight and of its moving average after swapping them."""
    import keras
    import numpy as np

    from carvana.callbacks import averaged_pairs, swap_weights

    with strategy.scope():
        inputs = keras.Input((1,))
        model = keras.Model(inputs, keras.layers.Dense(1, use_bias=False, name="dense")(inputs))
        model.compile(optimizer=keras.optimizers.Adam(use_ema=True), loss="mse")
        model.optimizer.build(model.trainable_variables)
    [(weight, average)] = averaged_pairs(model)
    weight.assign(np.full((1, 1), 2.0, "float32"))
    average.assign(np.full((1, 1), 5.0, "float32"))
    swap_weights(averaged_pairs(model))
    return {
        name: [float(copy.numpy()[0, 0]) for copy in variable.value.values]
        for name, variable in (("weight", weight), ("average", average))
    }


def _plain(summary: dict) -> dict:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in summary.items()}


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:4])))
