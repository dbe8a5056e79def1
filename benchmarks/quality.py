"""Quality on real cars: train each model on CPU within a time budget, then full-resolution Dice
on held-out cars through `carvana.evaluate`.

The data folder holds Carvana training pairs, e.g. ../shared/carvana-sample (512x512, squashed):
its pairs are first brought back to 1918x1280 as its README says (images bicubic, masks
bilinear thresholded at 0.5) into a Kaggle-shaped folder under --work (kept for later runs).
The number of epochs is planned from a short timing of the model's training step so that the
cosine learning-rate schedule ends with the budget; a callback stops training when time is up.
Goal: MobileNetV2 U-Net >= 0.985 mean Dice on held-out cars with <= 20 minutes of 2-core CPU
training, without ImageNet weights.

    python benchmarks/quality.py ../shared/carvana-sample --minutes 20
    python benchmarks/quality.py ../shared/carvana-sample --minutes 2 --models mobilenet
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

FULL_SIZE = (1280, 1918)  # (h, w) of Kaggle's images


def restore(source: Path, target: Path, size=FULL_SIZE) -> Path:
    """Write source's train/ and train_masks/ pairs at full size into target (once)."""
    import cv2
    import numpy as np
    from PIL import Image

    from carvana.files import CarvanaData

    done = target / "RESTORED"
    if done.exists():
        return target
    data = CarvanaData(source)
    (target / "train").mkdir(parents=True, exist_ok=True)
    (target / "train_masks").mkdir(parents=True, exist_ok=True)
    h, w = size
    ids = data.train_ids()
    began = time.perf_counter()
    for n, image_id in enumerate(ids, 1):
        image, mask = data.read_pair(image_id)
        image = cv2.resize(image, (w, h), interpolation=cv2.INTER_CUBIC)
        ok, jpeg = cv2.imencode(
            ".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95]
        )
        if not ok:
            raise RuntimeError(f"could not encode {image_id}")
        (target / "train" / f"{image_id}.jpg").write_bytes(jpeg.tobytes())
        big = cv2.resize(mask.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR) >= 0.5
        gif = Image.fromarray(big.astype(np.uint8), mode="P")
        gif.putpalette([0, 0, 0, 255, 255, 255])
        buffer = io.BytesIO()
        gif.save(buffer, format="GIF")
        (target / "train_masks" / f"{image_id}_mask.gif").write_bytes(buffer.getvalue())
        if n % 100 == 0 or n == len(ids):
            print(
                f"  restored {n}/{len(ids)} pairs to {w}x{h} ({time.perf_counter() - began:.0f} s)",
                flush=True,
            )
    done.write_text("pairs restored to full size\n")
    return target


def seconds_per_image(config, steps: int = 3) -> float:
    """Steady training seconds per image of config's model (random data, after warm-up)."""
    import keras
    import numpy as np

    from carvana.models import build_model
    from carvana.train import compile_model

    model = build_model(config)
    compile_model(model, config, 100)
    ph, pw = config.padded_size
    b = config.batch_size
    x = np.random.default_rng(0).uniform(0, 255, (b, ph, pw, 3)).astype("float32")
    y = np.zeros((b, ph, pw, 1), "float32")
    y[:, ph // 4 : 3 * ph // 4, pw // 4 : 3 * pw // 4] = 1
    model.train_on_batch(x, y)
    began = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(x, y)
    seconds = (time.perf_counter() - began) / (steps * b)
    del model
    keras.backend.clear_session()
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", help="folder with train/ and train_masks/ (e.g. carvana-sample)")
    parser.add_argument("--minutes", type=float, default=20.0, help="training budget per model")
    parser.add_argument("--models", default="mobilenet,cnn")
    parser.add_argument("--image-size", default="160x240", help="HxW model input before padding")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--bn-momentum", type=float, default=0.9)
    # Off by default: within a few epochs it slows convergence (2-min runs: 0.916 off, 0.903 on).
    parser.add_argument("--augment", choices=("on", "off"), default="off")
    parser.add_argument("--val-cars", type=int, default=8, help="held-out cars")
    parser.add_argument("--max-cars", type=int, default=0, help="0: every car of the folder")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--work", default="/tmp/carvana-quality", help="restored data and runs")
    args = parser.parse_args(argv)

    from carvana.config import TrainConfig, parse_size
    from carvana.evaluate import compare, evaluate
    from carvana.files import CarvanaData, car_id
    from carvana.train import TimeLimit, train

    work = Path(args.work)
    source = Path(args.data)
    print(f"restoring {source} to {FULL_SIZE[1]}x{FULL_SIZE[0]} under {work / 'data'}")
    data = CarvanaData(restore(source, work / "data"))
    cars = len({car_id(i) for i in data.train_ids()})
    used = min(cars, args.max_cars) if args.max_cars else cars
    budget = args.minutes * 60
    print(
        f"{used} cars, {args.val_cars} held out; budget {args.minutes:g} min of training per "
        f"model on {os.cpu_count()} CPU cores"
    )

    results, runs = {}, []
    for name in args.models.split(","):
        config = TrainConfig(
            model=name,
            image_size=parse_size(args.image_size),
            batch_size=args.batch_size,
            learning_rate=args.lr,
            bn_momentum=args.bn_momentum,
            augment=args.augment == "on",
            val_fraction=args.val_cars / used,
            max_cars=args.max_cars,
            seed=args.seed,
            patience=1000,  # the budget ends training, not early stopping
        )
        per_image = seconds_per_image(config)
        train_images = (used - args.val_cars) * 16
        # An epoch: its training steps plus validating the held-out cars (~1/3 of a step each).
        epoch_s = per_image * (train_images + args.val_cars * 16 / 3)
        epochs = max(1, math.floor(budget / epoch_s))
        print(
            f"\n== {name}: ~{per_image:.2f} s/image to train -> {epochs} epoch(s) of "
            f"{train_images} images in {args.minutes:g} min",
            flush=True,
        )
        run_dir = work / "runs" / name
        began = time.perf_counter()
        summary = train(
            data,
            config.replace(epochs=epochs),
            run_dir,
            resume=False,
            callbacks=[TimeLimit(budget)],
        )
        trained = time.perf_counter() - began
        result = evaluate(data, run_dir, work / "evaluation" / name, worst=6)
        results[name] = {
            "full_res_dice": round(result["dice"], 5),
            "pixel_accuracy": round(result["accuracy"], 5),
            "best_val_dice_model_res": round(summary["best_val_dice"], 5),
            "epochs": summary["epochs_run"],
            "train_minutes": round(trained / 60, 2),
            "params": summary["params"],
            "report": str(result["report"]),
        }
        runs.append(run_dir)
        print(
            f"== {name}: full-resolution mean Dice {result['dice']:.5f} on "
            f"{result['images']} held-out images ({trained / 60:.1f} min training incl. "
            f"data loading)",
            flush=True,
        )

    print("\n" + compare(runs, out=work / "comparison.md"))
    (work / "quality.json").write_text(
        json.dumps({"settings": vars(args), "results": results}, indent=2) + "\n"
    )
    print(f"\nresults: {work / 'quality.json'}")
    goal = results.get("mobilenet", {}).get("full_res_dice")
    if goal is not None:
        print(
            f"goal mobilenet >= 0.985 within 20 min: {'met' if goal >= 0.985 and args.minutes <= 20 else 'not met'} "
            f"({goal:.5f} in {args.minutes:g} min)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
