"""Images/s of the cached, augmented training pipeline at 160x256 (goal: >= 400 on 2 cores).

Synthesizes full-size (1918x1280) Kaggle-shaped data into a temporary folder, fills the
in-memory cache with one pass (the decode rate of that pass is printed too), then times
several epochs (one iterator, reshuffled every epoch) of the shuffled, batched, augmented
dataset, with this project's fused KerasCV layers and, for comparison, keras_cv's stock ones.

    python benchmarks/input_pipeline.py [--cars 2] [--epochs 20] [--batch-size 16]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cars", type=int, default=2, help="synthetic cars (16 images each)")
    parser.add_argument("--epochs", type=int, default=20, help="timed epochs after the cache pass")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--image-size", default="160x240", help="HxW before padding to x32")
    parser.add_argument(
        "--augmenters",
        default="fused,stock,none",
        help="comma-separated: fused, stock (keras_cv layers), none",
    )
    args = parser.parse_args(argv)

    from carvana.config import TrainConfig, parse_size
    from carvana.files import CarvanaData
    from carvana.inputs import get_dataset
    from carvana.synth import synthesize

    config = TrainConfig(
        image_size=parse_size(args.image_size),
        batch_size=args.batch_size,
    )
    with tempfile.TemporaryDirectory(prefix="carvana-bench-") as tmp:
        t = time.perf_counter()
        root = synthesize(
            Path(tmp) / "data", train_cars=args.cars, test_images=0, size=(1280, 1918)
        )
        print(f"synthesized {args.cars} cars at 1918x1280 in {time.perf_counter() - t:.1f} s")
        data = CarvanaData(root)
        ids = data.train_ids()
        for name in args.augmenters.split(","):
            cfg = config.replace(augment=name != "none")
            dataset = get_dataset(
                data, ids, cfg, training=True, cache="", augmenter=name if cfg.augment else "fused"
            )
            t = time.perf_counter()
            n = sum(int(x.shape[0]) for x, _ in dataset)
            first = time.perf_counter() - t
            print(
                f"[{name}] cache pass: {n} images decoded from full-size JPEG/GIF in "
                f"{first:.2f} s ({n / first:.0f} img/s)"
            )
            t, cpu = time.perf_counter(), time.process_time()
            seen = sum(int(x.shape[0]) for x, _ in dataset.repeat(args.epochs))
            seconds, cpu = time.perf_counter() - t, time.process_time() - cpu
            ph, pw = cfg.padded_size
            cores = os.cpu_count()
            goal = "  (goal >= 400)" if name == "fused" else ""
            # CPU time is what other processes on a shared machine cannot inflate: images per
            # CPU-second times the cores is the rate of an otherwise idle machine (tf.data's
            # parallel map keeps every core busy).
            print(
                f"[{name}] cached pipeline at {ph}x{pw}, batch {cfg.batch_size}: {seen} images in "
                f"{seconds:.2f} s = {seen / seconds:.0f} img/s wall-clock (load average "
                f"{os.getloadavg()[0]:.1f}); {cpu:.2f} CPU-s = {seen / cpu:.0f} img per CPU-s, "
                f"x {cores} cores = {cores * seen / cpu:.0f} img/s on an idle machine{goal}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
