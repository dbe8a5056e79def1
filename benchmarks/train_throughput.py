"""Images/s of `carvana train`'s whole epoch loop against the model's own training speed.

The loop is `carvana.train.train` as a user runs it: the tf.data input (cached after the first
epoch), augmentation, validation, BN recalibration, the float32 export and the checkpoint.
Its rate is the training images of an epoch over the wall time between the ends of two
consecutive epochs (every callback included), averaged over the steady-state epochs: the
first epoch, which decodes the JPEGs into the cache and traces the functions, is reported
apart. The model's own speed is `fit` on one in-memory batch repeated, same batch size and
geometry, after a warm-up epoch; it is timed before the loop and again at the end of every
epoch (outside the epoch's timed window), because this machine's speed drifts by up to 2x
over minutes: each epoch is compared with the mean of the model's speeds just before and just
after it, and the ratio reported is the median over the steady epochs (the ratio of the
totals is printed too). Goal >= 0.9.

    python benchmarks/train_throughput.py [--models cnn,mobilenet] [--cars 50] [--epochs 4]
    python benchmarks/train_throughput.py --data /tmp/q11/data   # a Kaggle-shaped folder
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def model_speed(config, steps: int):
    """A function returning the images/s of fit on one repeated in-memory batch (built and
    warmed up once), at the precision and with the malloc setting `carvana train` picks on this
    machine."""
    import numpy as np
    import tensorflow as tf

    from carvana.distribute import dtype_policy, keep_freed_memory_on_cpu, resolve_precision
    from carvana.models import build_model
    from carvana.train import compile_model

    keep_freed_memory_on_cpu()  # as train does: the loop and the model on one allocator

    with dtype_policy(resolve_precision("auto")):
        model = build_model(config)
        compile_model(model, config, steps * 1000)
    rng = np.random.default_rng(0)
    ph, pw = config.padded_size
    x = rng.uniform(0, 255, (config.batch_size, ph, pw, 3)).astype(np.float32)
    y = (rng.uniform(size=(config.batch_size, ph, pw, 1)) > 0.5).astype(np.float32)
    batches = tf.data.Dataset.from_tensors((x, y)).repeat(steps)
    model.fit(batches, epochs=1, verbose=0, shuffle=False)

    def measure() -> float:
        began = time.perf_counter()
        model.fit(batches, epochs=1, verbose=0, shuffle=False)
        return steps * config.batch_size / (time.perf_counter() - began)

    return measure


PHASES = ("train", "recalibrate", "validate", "callbacks")
SETTLE_SECONDS = 2.0


def loop_speed(data, config, run_dir: Path, reference) -> dict:
    """Train into run_dir; images/s of the first epoch and of the steady-state ones, the
    seconds each phase of a steady epoch took (training steps with their input, BN
    recalibration, validation, the epoch-end callbacks: history, export, checkpoint), and the
    model's own speed (`reference()`) before the loop and after each epoch."""
    import keras

    from carvana.train import choose_cars, train

    marks: list[dict] = []
    speeds = [reference()]

    class Phases(keras.callbacks.Callback):
        # Appended after the run-folder callbacks: its on_test_begin comes after the BN
        # recalibration and its on_epoch_end after every other epoch-end callback.
        def on_train_begin(self, logs=None):
            self.last = time.perf_counter()

        def on_epoch_begin(self, epoch, logs=None):
            self.mark = {"begin": self.last}

        def on_train_batch_end(self, batch, logs=None):
            self.mark["steps"] = time.perf_counter()

        def on_test_begin(self, logs=None):
            self.mark.setdefault("test_begin", time.perf_counter())

        def on_test_end(self, logs=None):
            self.mark["test_end"] = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.mark["end"] = time.perf_counter()
            marks.append(self.mark)
            # The training input is one iterator for the whole run: right after an epoch its
            # read-ahead fills its buffers for the next one. Let it, before timing the model.
            time.sleep(SETTLE_SECONDS)
            speeds.append(reference())
            self.last = time.perf_counter()

    train_ids, _ = choose_cars(data.train_ids(), config)
    train(data, config, run_dir, resume=False, verbose=0, callbacks=[Phases()])
    seconds = [m["end"] - m["begin"] for m in marks]
    steady = marks[1:]

    def phase(m):
        test_begin = m.get("test_begin", m["steps"])
        test_end = m.get("test_end", test_begin)
        return (
            m["steps"] - m["begin"],
            test_begin - m["steps"],
            test_end - test_begin,
            m["end"] - test_end,
        )

    totals = [sum(values) / len(steady) for values in zip(*map(phase, steady), strict=True)]
    # Each epoch against the model's speed on either side of it.
    around = [(a + b) / 2 for a, b in zip(speeds, speeds[1:], strict=False)]
    ratios = [len(train_ids) / s / r for s, r in zip(seconds, around, strict=True)]
    return {
        "images": len(train_ids),
        "first": len(train_ids) / seconds[0],
        "steady": len(train_ids) * len(steady) / sum(seconds[1:]),
        # This machine's host noise stretches single epochs 1.5-2x: the median resists it.
        "median": len(train_ids) / statistics.median(seconds[1:]),
        "epoch_seconds": seconds,
        "phases": dict(zip(PHASES, totals, strict=True)),
        "model": statistics.mean(around[1:]),
        "model_speeds": speeds,
        "ratio": statistics.median(ratios[1:]),
        "ratios": ratios,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="cnn,mobilenet")
    parser.add_argument(
        "--cars",
        type=int,
        default=50,
        help="synthetic cars (16 images each): 50 gives 40 training cars, 40 steps an epoch, "
        "like benchmarks/quality.py on carvana-sample",
    )
    parser.add_argument("--epochs", type=int, default=4, help="epochs (the first is apart)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--image-size", default="160x256")
    parser.add_argument("--data", default="", help="reuse a dataset folder (made if missing)")
    args = parser.parse_args(argv)

    from carvana.config import TrainConfig, parse_size
    from carvana.files import CarvanaData
    from carvana.synth import synthesize

    work = Path(tempfile.mkdtemp(prefix="carvana-throughput-"))
    root = Path(args.data) if args.data else work / "data"
    if not (root / "train").exists():
        began = time.perf_counter()
        synthesize(root, train_cars=args.cars, test_images=0, size=(1280, 1918))
        print(f"synthesized {args.cars} cars at 1918x1280 in {time.perf_counter() - began:.0f} s")
    data = CarvanaData(root)
    for name in args.models.split(","):
        config = TrainConfig(
            model=name,
            image_size=parse_size(args.image_size),
            batch_size=args.batch_size,
            epochs=args.epochs,
            patience=args.epochs,
            # Every epoch at image_size and augmented, like the model-alone reference: the
            # defaults' smaller first stage and unaugmented tail would not be comparable.
            progressive="",
            augment_until=1.0,
        )
        loop = loop_speed(data, config, work / f"run-{name}", model_speed(config, steps=8))
        shown = " ".join(f"{s:.1f}" for s in loop["epoch_seconds"])
        speeds = " ".join(f"{s:.0f}" for s in loop["model_speeds"])
        ratios = " ".join(f"{r:.2f}" for r in loop["ratios"])
        phases = ", ".join(f"{k} {v:.1f} s" for k, v in loop["phases"].items())
        print(
            f"{name}: ratio {loop['ratio']:.3f} (median over steady epochs of each epoch against "
            f"the model's speed around it; of the totals {loop['steady'] / loop['model']:.3f}): "
            f"loop {loop['steady']:.2f} img/s (steady epochs 2..{args.epochs}; first "
            f"{loop['first']:.2f}), model {loop['model']:.2f} img/s; {loop['images']} training "
            f"images per epoch; epoch seconds {shown}; model img/s before and after each epoch "
            f"{speeds}; ratio per epoch {ratios}; a steady epoch: {phases}",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
