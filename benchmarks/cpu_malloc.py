"""Epoch time of `carvana train` on a CPU with glibc's malloc as it is and as the kit sets it.

`train` on a CPU has glibc keep freed memory for reuse (`carvana.distribute.keep_freed_memory`):
by default glibc maps each block over 32 MB afresh and unmaps it when freed, and a training
step frees activations of tens of MB, so every step faults them in again while each unmapping
holds the lock the other threads' page faults wait for. The setting lasts for a process, so
each side is a `carvana train` subprocess (CARVANA_KEEP_FREED=0 for glibc's default), the two
alternating for --rounds; it prints each run's epoch seconds, CPU time in user and kernel
mode, and peak RSS, then the ratio of the steady epochs' (2..N) mean times.

    python benchmarks/cpu_malloc.py --data /tmp/q11/data        # the restored sample
    python benchmarks/cpu_malloc.py --rounds 2 --epochs 3       # 50 synthetic cars
"""

from __future__ import annotations

import argparse
import csv
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from carvana.distribute import KEEP_FREED_ENV

SIDES = {"glibc default": "0", "kept (the kit's)": "1"}


def one_run(data: Path, run_dir: Path, keep: str, args) -> dict:
    """Train in a subprocess; its epoch seconds, user / system CPU seconds and peak RSS."""
    env = {**os.environ, KEEP_FREED_ENV: keep, "TF_CPP_MIN_LOG_LEVEL": "2"}
    command = [
        sys.executable, "-c", "import sys; from carvana.cli import main; sys.exit(main())", "train", "--data", str(data), "--out", str(run_dir),
        "--model", args.model, "--image-size", args.image_size, "--progressive", "",
        "--epochs", str(args.epochs), "--patience", str(args.epochs), "--augment-until", "1",
        "--fresh",
    ]  # fmt: skip
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    began = time.perf_counter()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - began
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(run_dir / "history.csv", newline="") as f:
        seconds = [float(row["seconds"]) for row in csv.DictReader(f)]
    return {
        "epochs": seconds,
        "wall": wall,
        "user": after.ru_utime - before.ru_utime,
        "system": after.ru_stime - before.ru_stime,
        # ru_maxrss of children is the largest child's so far: only the first run's is its own.
        "max_rss_mb": after.ru_maxrss / 1024,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="", help="a Kaggle-shaped folder (made if missing)")
    parser.add_argument("--cars", type=int, default=50, help="synthetic cars when made")
    parser.add_argument("--model", default="mobilenet")
    parser.add_argument("--image-size", default="128x192")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run (the first apart)")
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args(argv)
    if args.epochs < 2:
        parser.error("--epochs must be 2 or more: the first epoch decodes and traces")

    work = Path(tempfile.mkdtemp(prefix="carvana-malloc-"))
    data = Path(args.data) if args.data else work / "data"
    if not (data / "train").exists() and not (data / "train.zip").exists():
        from carvana.synth import synthesize

        synthesize(data, train_cars=args.cars, test_images=0, size=(1280, 1918))
    steady = {side: [] for side in SIDES}
    for round_ in range(1, args.rounds + 1):
        for side, keep in SIDES.items():
            run = one_run(data, work / f"run-{keep}-{round_}", keep, args)
            steady[side] += run["epochs"][1:]
            shown = " ".join(f"{s:.1f}" for s in run["epochs"])
            print(
                f"round {round_}, {side}: epochs {shown} s; wall {run['wall']:.0f} s, CPU user "
                f"{run['user']:.0f} s, system {run['system']:.0f} s; peak RSS (largest child "
                f"so far) {run['max_rss_mb']:.0f} MB",
                flush=True,
            )
    means = {side: statistics.mean(s) for side, s in steady.items()}
    default, kept = means.values()
    print(
        f"{args.model} {args.image_size}, steady epochs: glibc default {default:.1f} s, kept "
        f"{kept:.1f} s: kept takes {kept / default:.2f}x the time ({default / kept:.2f}x faster)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
