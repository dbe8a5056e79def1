"""Inference-mode validation Dice per epoch of one tiny from-scratch run, four ways: 1 or 2
replicas (MirroredStrategy over the CPU split in two logical devices), float32 or mixed
precision, XLA on. Usage: python benchmarks/replicas.py [--model mobilenet] [--epochs 5]."""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="mobilenet")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--image-size", default="32x48")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--cars", type=int, default=6, help="synthetic cars (16 images each)")
    parser.add_argument("--calibration-batches", type=int, default=8, help="0: no recalibration")
    parser.add_argument("--no-jit", action="store_true")
    args = parser.parse_args(argv)

    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    # Before anything initialises TensorFlow's devices: two logical CPUs, as a 2-GPU machine.
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

    from carvana import train as training
    from carvana.config import TrainConfig, parse_size
    from carvana.files import CarvanaData
    from carvana.history import read_history
    from carvana.synth import synthesize

    training.CALIBRATION_BATCHES = args.calibration_batches
    work = Path(tempfile.mkdtemp(prefix="carvana-replicas-"))
    data = CarvanaData(
        synthesize(work / "data", train_cars=args.cars, test_images=1, size=(128, 192), seed=0)
    )
    config = TrainConfig(
        model=args.model,
        image_size=parse_size(args.image_size),
        batch_size=args.batch_size,
        learning_rate=args.lr,
        epochs=args.epochs,
        patience=args.epochs,
    )
    runs = {}
    for replicas in (1, 2):
        for precision in ("float32", "mixed_float16"):
            devices = ["/cpu:0", "/cpu:1"][:replicas]
            strategy = tf.distribute.MirroredStrategy(devices) if replicas > 1 else None
            name = f"{replicas} replica{'s' if replicas > 1 else ''} {precision}"
            began = time.perf_counter()
            training.train(
                data,
                config,
                work / name.replace(" ", "-"),
                resume=False,
                verbose=0,
                strategy=strategy,
                precision=precision,
                jit_compile=not args.no_jit,
            )
            rows = read_history(work / name.replace(" ", "-") / "history.csv")
            runs[name] = [r.get("val_dice", float("nan")) for r in rows]
            print(f"{name}: {time.perf_counter() - began:.0f} s", flush=True)
    print(
        f"\nvalidation Dice (inference mode) per epoch, {args.model} {args.image_size}, "
        f"batch {args.batch_size}, recalibration batches {args.calibration_batches}"
    )
    print("| epoch | " + " | ".join(runs) + " |")
    print("|---" * (len(runs) + 1) + "|")
    for epoch in range(args.epochs):
        cells = [f"{v[epoch]:.4f}" if epoch < len(v) else "-" for v in runs.values()]
        print(f"| {epoch + 1} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
