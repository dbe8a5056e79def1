"""Quality on real cars: train each model on CPU within a time budget, then full-resolution Dice
on held-out cars through `carvana.evaluate`.

The data folder holds Carvana training pairs, e.g. ../shared/carvana-sample (512x512, squashed):
its pairs are first brought back to 1918x1280 as its README says (images bicubic, masks
bilinear thresholded at 0.5) into a Kaggle-shaped folder under --work (kept for later runs).
Each model trains with the kit's own time budget (TrainConfig.minutes, `carvana train
--minutes`): the cosine learning-rate schedule ends and training stops when it is spent. Settings
not given keep `carvana train`'s defaults. The held-out cars are one split (--split-seed) for
every seed, so the seeds differ only in training and can be ensembled.
Goal: MobileNetV2 U-Net >= 0.985 mean Dice on held-out cars with <= 20 minutes of 2-core CPU
training, without ImageNet weights.

    python benchmarks/quality.py ../shared/carvana-sample --minutes 20 --models mobilenet \
        --seeds 42,7      # each seed alone, their spread and their ensemble
    python benchmarks/quality.py ../shared/carvana-sample --minutes 4 --models mobilenet \
        --precision mixed_bfloat16 --tag bf16
"""

from __future__ import annotations

import argparse
import io
import json
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


def lever_settings(args) -> dict:
    """The TrainConfig fields the command line sets; the rest keep the defaults a user gets."""
    from carvana.config import parse_size

    given = {
        "image_size": parse_size(args.image_size) if args.image_size else None,
        "batch_size": args.batch_size,
        "learning_rate": args.lr,
        "bn_momentum": args.bn_momentum,
        "decoder_width": args.decoder_width,
        "loss": args.loss,
        "encoder_scale": args.encoder_scale,
        "warmup": args.warmup,
        "augment": None if args.augment is None else args.augment == "on",
        "augment_until": args.augment_until,
        "augment_strength": args.augment_strength,
        "ema": args.ema,
        "keep_flips": None if args.keep_flips is None else args.keep_flips == "on",
        "soft_targets": None if args.soft_targets is None else args.soft_targets == "on",
        "progressive": args.progressive,
    }
    return {k: v for k, v in given.items() if v is not None}


def train_and_score(data, config, run_dir: Path, work: Path, precision: str) -> dict:
    """Train one run within its budget, then its full-resolution Dice on the held-out cars."""
    from carvana.evaluate import evaluate
    from carvana.train import train

    print(f"\n== {run_dir.name}: {config.minutes:g} min budget, precision {precision}", flush=True)
    began = time.perf_counter()
    summary = train(data, config, run_dir, resume=False, precision=precision)
    trained = time.perf_counter() - began
    result = evaluate(data, run_dir, work / "evaluation" / run_dir.name, worst=6)
    print(
        f"== {run_dir.name}: full-resolution mean Dice {result['dice']:.5f} at threshold "
        f"{result['threshold']} ({result['dice_at_0.5']:.5f} at 0.5) on {result['images']} "
        f"held-out images; {summary['epochs_run']} epochs, {trained / 60:.1f} min "
        "(training, threshold tuning, data loading)",
        flush=True,
    )
    return {
        "full_res_dice": round(result["dice"], 5),
        "dice_at_0.5": round(result["dice_at_0.5"], 5),
        "threshold": result["threshold"],
        "pixel_accuracy": round(result["accuracy"], 5),
        "best_val_dice_model_res": round(summary["best_val_dice"], 5),
        "epochs": summary["epochs_run"],
        "best_epoch": summary["best_epoch"],
        "seconds_per_epoch": round(summary["seconds_per_epoch"], 1),
        "train_minutes": round(trained / 60, 2),
        "params": summary["params"],
        "config": {k: v for k, v in config.to_dict().items() if "cars" not in k},
        "precision": precision,
        "report": str(result["report"]),
    }


def seed_summary(data, runs: list[Path], results: list[dict], work: Path) -> dict:
    """Mean and spread of the seeds' Dice, and the Dice of their ensemble (maps averaged)."""
    from carvana.evaluate import evaluate

    dice = [r["full_res_dice"] for r in results]
    name = "+".join(r.name for r in runs)
    ensemble = evaluate(data, runs, work / "evaluation" / f"ensemble-{name}", worst=6)
    print(
        f"== {len(runs)} seeds: Dice {min(dice):.5f} .. {max(dice):.5f} (mean "
        f"{sum(dice) / len(dice):.5f}, spread {max(dice) - min(dice):.5f}); their ensemble "
        f"{ensemble['dice']:.5f}",
        flush=True,
    )
    return {
        "seeds_dice": dice,
        "mean": round(sum(dice) / len(dice), 5),
        "spread": round(max(dice) - min(dice), 5),
        "ensemble_dice": round(ensemble["dice"], 5),
        "ensemble_report": str(ensemble["report"]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", help="folder with train/ and train_masks/ (e.g. carvana-sample)")
    parser.add_argument("--minutes", type=float, default=20.0, help="training budget per model")
    parser.add_argument("--models", default="mobilenet,cnn")
    # Not given: `carvana train`'s own default, so the figure is what a user gets.
    parser.add_argument("--image-size", help="HxW model input before padding")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--bn-momentum", type=float)
    parser.add_argument("--decoder-width", type=int)
    parser.add_argument("--loss", choices=("bce_dice", "bce_lovasz"))
    parser.add_argument("--warmup", type=float, help="fraction of the schedule warming up")
    parser.add_argument("--encoder-scale", type=int, help="1, 2 or 4 (mobilenet with refine)")
    parser.add_argument("--augment", choices=("on", "off"))
    parser.add_argument(
        "--augment-until", type=float, help="schedule fraction after which augmentation stops"
    )
    parser.add_argument("--soft-targets", choices=("on", "off"), help="train on car shares")
    parser.add_argument(
        "--progressive", help="progressive resizing, SCALE@UNTIL[,...] ('' for off)"
    )
    parser.add_argument(
        "--precision", default="auto", help="auto | float32 | mixed_float16 | mixed_bfloat16"
    )
    parser.add_argument(
        "--augment-strength", type=float, help="scale of the augmentation's ranges (not flips)"
    )
    parser.add_argument("--keep-flips", choices=("on", "off"), help="flips after augment_until")
    parser.add_argument("--ema", type=float, help="momentum of the weights' moving average")
    parser.add_argument("--val-cars", type=int, default=8, help="held-out cars")
    parser.add_argument("--max-cars", type=int, default=0, help="0: every car of the folder")
    parser.add_argument(
        "--seeds",
        default="42",
        help="comma-separated training seeds (initialisation, shuffling, augmentation); with "
        "several: each alone, their spread, and their ensemble",
    )
    parser.add_argument("--split-seed", type=int, default=42, help="seed of the held-out cars")
    parser.add_argument("--work", default="/tmp/carvana-quality", help="restored data and runs")
    parser.add_argument("--tag", default="", help="suffix of the run folders (runs/MODEL-TAG)")
    args = parser.parse_args(argv)

    from carvana.config import TrainConfig
    from carvana.evaluate import compare
    from carvana.files import CarvanaData, car_id
    from carvana.train import choose_cars

    work = Path(args.work)
    source = Path(args.data)
    print(f"restoring {source} to {FULL_SIZE[1]}x{FULL_SIZE[0]} under {work / 'data'}")
    data = CarvanaData(restore(source, work / "data"))
    cars = len({car_id(i) for i in data.train_ids()})
    used = min(cars, args.max_cars) if args.max_cars else cars
    print(
        f"{used} cars, {args.val_cars} held out; budget {args.minutes:g} min of training per "
        f"model on {os.cpu_count()} CPU cores"
    )

    # One split for every seed: the seeds then differ only in training, and can be ensembled.
    split = TrainConfig(val_fraction=args.val_cars / used, max_cars=args.max_cars)
    train_ids, val_ids = choose_cars(data.train_ids(), split.replace(seed=args.split_seed))
    cars = {
        "train_cars": tuple(sorted({car_id(i) for i in train_ids})),
        "val_cars": tuple(sorted({car_id(i) for i in val_ids})),
    }
    seeds = [int(v) for v in args.seeds.split(",")]
    results, runs = {}, []
    for name in args.models.split(","):
        seed_runs = []
        for seed in seeds:
            # The kit's own budget: the cosine schedule ends when the minutes do; epochs is a cap.
            config = split.replace(
                model=name,
                seed=seed,
                minutes=args.minutes,
                epochs=1000,
                patience=1000,  # the budget ends training, not early stopping
                **cars,
                **lever_settings(args),
            )
            tag = "-".join(v for v in (args.tag, f"s{seed}" if len(seeds) > 1 else "") if v)
            run_dir = work / "runs" / (f"{name}-{tag}" if tag else name)
            results[run_dir.name] = train_and_score(data, config, run_dir, work, args.precision)
            runs.append(run_dir)
            seed_runs.append(run_dir)
        if len(seed_runs) > 1:
            results[f"{name}-{args.tag}-seeds" if args.tag else f"{name}-seeds"] = seed_summary(
                data, seed_runs, [results[r.name] for r in seed_runs], work
            )

    print("\n" + compare(runs, out=work / "comparison.md"))
    out = work / (f"quality-{args.tag}.json" if args.tag else "quality.json")
    out.write_text(json.dumps({"settings": vars(args), "results": results}, indent=2) + "\n")
    print(f"\nresults: {out}")
    for key, result in results.items():
        if key.startswith("mobilenet") and "full_res_dice" in result:
            met = result["full_res_dice"] >= 0.985 and args.minutes <= 20
            print(
                f"goal mobilenet >= 0.985 within 20 min ({key}): {'met' if met else 'not met'} "
                f"({result['full_res_dice']:.5f} in {args.minutes:g} min)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
