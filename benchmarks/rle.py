"""RLE speed on a full-size (1918x1280) car mask: carvana.rle vs the widely used Kaggle encoder.

    python benchmarks/rle.py [DATA_DIR] [--repeats N]

DATA_DIR (e.g. the 512x512 carvana-sample): one of its masks is brought back to 1918x1280 with
a bilinear resize thresholded at 0.5, and every mask of the folder is checked to round-trip and
to encode exactly as its train_masks.csv. Without DATA_DIR a synthetic full-size car is used.
Prints medians of N repeats and the ratio (goal: ours <= 1/4 of the Kaggle encoder's time).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from carvana import rle


def kaggle_encode(mask: np.ndarray) -> str:
    """The baseline: the Kaggle kernels' numpy encoder, as commonly copied."""
    pixels = mask.flatten()
    pixels = np.concatenate([[0], pixels, [0]])
    runs = np.where(pixels[1:] != pixels[:-1])[0] + 1
    runs[1::2] -= runs[::2]
    return " ".join(str(x) for x in runs)


def loop_encode(mask: np.ndarray) -> str:
    """A seed-notebook-style encoder: one Python step per pixel."""
    out, start, length = [], 0, 0
    for i, value in enumerate(mask.flatten().tolist(), start=1):
        if value:
            if length == 0:
                start = i
            length += 1
        elif length:
            out += [start, length]
            length = 0
    if length:
        out += [start, length]
    return " ".join(str(v) for v in out)


def median_time(fn, arg, repeats: int) -> float:
    """Median wall time of fn(arg) in seconds, after one warm-up call."""
    fn(arg)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(arg)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def full_size_mask(data_dir: Path | None) -> tuple[np.ndarray, str]:
    """A 1280x1918 uint8 0/1 car mask and where it came from."""
    import cv2

    h, w = rle.ORIGINAL_SHAPE
    if data_dir is None:
        from carvana.synth import render_car

        return render_car((h, w), seed=0, angle=3)[1], "synthetic car (seed 0, angle 03)"
    from carvana.files import CarvanaData

    data = CarvanaData(data_dir)
    image_id = data.train_ids()[len(data.train_ids()) // 3]
    small = data.read_mask(image_id).astype(np.float32)
    big = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR) > 0.5
    return big.astype(np.uint8), f"{image_id} resized {small.shape[1]}x{small.shape[0]} -> {w}x{h}"


def check_folder(data_dir: Path) -> None:
    """Every mask of the folder round-trips, and encodes exactly as its train_masks.csv."""
    from tqdm import tqdm

    from carvana.files import CarvanaData

    data = CarvanaData(data_dir)
    table = data.train_masks_table().set_index("img")["rle_mask"]
    ids = data.train_ids()
    round_trip = equal_csv = in_csv = 0
    for image_id in tqdm(ids, desc="checking masks", unit="mask"):
        mask = data.read_mask(image_id)
        code = rle.encode(mask)
        round_trip += np.array_equal(rle.decode(code, mask.shape), mask)
        if f"{image_id}.jpg" in table.index:
            in_csv += 1
            equal_csv += code == table[f"{image_id}.jpg"]
    h, w = data.image_size()
    print(f"{data_dir}: {len(ids)} masks ({w}x{h}), {len(table)} rows in train_masks.csv")
    print(f"  round trip decode(encode(mask)) == mask: {round_trip}/{len(ids)}")
    print(f"  encode(mask) == train_masks.csv row:     {equal_csv}/{in_csv}")


def main() -> None:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", nargs="?", type=Path, help="a Carvana data folder (optional)")
    parser.add_argument("--repeats", type=int, default=50, help="timed repeats per encoder")
    args = parser.parse_args()

    mask, origin = full_size_mask(args.data)
    code = rle.encode(mask)
    assert code == kaggle_encode(mask), "encoders disagree"
    assert np.array_equal(rle.decode(code, mask.shape), mask), "round trip failed"
    runs = len(code.split()) // 2
    print(f"mask: {origin}; {mask.shape[1]}x{mask.shape[0]}, {mask.mean():.1%} car, {runs} runs")

    ours = median_time(rle.encode, mask, args.repeats)
    ours_bool = median_time(rle.encode, mask.astype(bool), args.repeats)
    kaggle = median_time(kaggle_encode, mask, args.repeats)
    decode = median_time(lambda c: rle.decode(c, mask.shape), code, args.repeats)
    t0 = time.perf_counter()
    assert loop_encode(mask) == code
    loop = time.perf_counter() - t0
    print(f"median of {args.repeats} runs:")
    print(f"  Kaggle numpy encoder   {kaggle * 1e3:8.2f} ms")
    print(f"  carvana.rle.encode     {ours * 1e3:8.2f} ms  (uint8 mask)")
    print(f"  carvana.rle.encode     {ours_bool * 1e3:8.2f} ms  (bool mask)")
    print(f"  carvana.rle.decode     {decode * 1e3:8.2f} ms")
    print(f"  per-pixel loop (once)  {loop * 1e3:8.2f} ms")
    verdict = "meets" if ours <= kaggle / 4 else "MISSES"
    print(f"ratio encode / Kaggle: {ours / kaggle:.3f} ({verdict} the <= 0.25 goal); "
          f"Kaggle is {kaggle / ours:.1f}x slower, the loop {loop / ours:.0f}x")  # fmt: skip
    if args.data is not None:
        check_folder(args.data)


if __name__ == "__main__":
    main()
