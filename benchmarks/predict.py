"""Throughput and memory of the streaming predictor at Carvana's full resolution (1918x1280).

Prints: RLE and post-process (upscale + threshold + RLE) images/s; model-alone vs end-to-end
images/s and their ratio for the MobileNetV2 U-Net at 160x256 (random weights); end-to-end
images/s with a trivial 1x1-conv model (post-processing bound); peak RSS of `predict` at 1k and
10k images; the projected time for Kaggle's 100,064 test images on this machine.

The test set is synthetic: a few distinct rendered 1918x1280 car JPEGs (~90 kB, like Kaggle's
~78 kB) stored in test.zip under many names. The models stay in memory between runs (traced
once, in a warm-up run), so each `predict` run measures the steady state. The machine may be
shared: each figure is the best of --rounds rounds, model-alone and end-to-end interleaved, and
CPU ms per image (all threads) is printed too, since it is less sensitive to other processes:
2000 / (CPU ms per image) is the rate two free cores would reach.

    python benchmarks/predict.py                       # 10k images for the RSS figure
    python benchmarks/predict.py --images 2000 --rounds 1 --skip-mobilenet   # quick
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

KAGGLE_TEST_IMAGES = 100_064
ORIGINAL_LOAD_RUN = None
FULL = (1280, 1918)
DISTINCT = 16

RSS_SCRIPT = """
import sys, time
sys.path.insert(0, sys.argv[6])
from pathlib import Path
from predict import use_trivial_model
from carvana.config import PredictConfig
from carvana.files import CarvanaData
from carvana.predict import predict
data, run, out, n, batch = sys.argv[1:6]
use_trivial_model()
began = time.perf_counter()
summary = predict(CarvanaData(data), Path(run), Path(out),
                  PredictConfig(batch_size=int(batch), limit=int(n)), progress=False)
assert summary["ok"] and summary["rows"] == int(n), summary
# VmHWM, not ru_maxrss: Linux carries the parent's peak over fork+exec into ru_maxrss.
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
print(int(status["VmRSS"].split()[0]), int(status["VmHWM"].split()[0]),
      time.perf_counter() - began)
"""


def load() -> str:
    return "load average {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def make_test_set(root: Path, images: int) -> Path:
    """root/test.zip holding `images` names over DISTINCT rendered car JPEGs; reused if there."""
    from carvana.synth import _jpeg, render_car

    archive = root / "test.zip"
    if archive.exists():
        with zipfile.ZipFile(archive) as z:
            if len(z.namelist()) >= images:
                return root
    root.mkdir(parents=True, exist_ok=True)
    jpegs = [_jpeg(render_car(FULL, seed=i, angle=1 + i % 16)[0]) for i in range(DISTINCT)]
    tmp = archive.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as z:
        for i in range(images):
            z.writestr(f"{i // 16:012x}_{1 + i % 16:02d}.jpg", jpegs[i % DISTINCT])
    os.replace(tmp, archive)
    print(
        f"test set: {images} names over {DISTINCT} JPEGs of ~{np.mean([len(j) for j in jpegs]) / 1e3:.0f} kB"
    )
    return root


def car_probabilities(config) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Full-size car masks and blurred uint8 probability maps at the model's image size."""
    from carvana.synth import render_car

    h, w = config.image_size
    masks, probs = [], []
    for i in range(8):
        mask = render_car(FULL, seed=100 + i, angle=1 + 2 * i)[1]
        small = cv2.resize(mask.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA)
        small = cv2.GaussianBlur(small, (5, 5), 1.0)
        masks.append(mask)
        probs.append(np.round(small * 255).astype(np.uint8))
    return masks, probs


def guided_postprocess(data):
    """Post-processing with the edge filter on one test JPEG (None before carvana.edges)."""
    try:
        from carvana import edges
    except ImportError:
        return None
    from carvana import rle

    jpeg = data.read_test_bytes(data.test_names()[0])

    def post(prob):
        levels = edges.refined_levels((prob,), FULL, jpeg)
        return rle.encode((levels > 127).view(np.uint8))

    return post


def rate(fn, items, seconds: float = 3.0) -> float:
    """Items per second of fn over items, repeated for about `seconds`."""
    fn(items[0])
    done, began = 0, time.perf_counter()
    while time.perf_counter() - began < seconds:
        for item in items:
            fn(item)
        done += len(items)
    return done / (time.perf_counter() - began)


def pooled_rate(fn, items, workers: int, seconds: float = 3.0) -> float:
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(fn, items))
        done, began = 0, time.perf_counter()
        while time.perf_counter() - began < seconds:
            batch = items * 8
            list(pool.map(fn, batch))
            done += len(batch)
    return done / (time.perf_counter() - began)


def save_run(run_dir: Path, config, model) -> Path:
    config.save(run_dir)
    model.save(run_dir / "model.keras")
    return run_dir


def trivial_model(config):
    """A 1x1 convolution (the saved model) and, for the runs, the same plus a fixed car-shaped
    logit map, so that post-processing meets car-like masks (~700 runs), not empty ones."""
    import keras

    from carvana.synth import render_car

    ph, pw = config.padded_size
    h, w = config.image_size
    inputs = keras.Input((ph, pw, 3), name="image")
    conv = keras.layers.Conv2D(1, 1, name="logits")(keras.layers.Rescaling(1 / 255)(inputs))
    saved = keras.Model(inputs, conv)
    mask = render_car((h, w), seed=7, angle=3)[1].astype(np.float32)
    prior = np.full((ph, pw), -6.0, np.float32)
    prior[:h, :w] = 12 * (cv2.GaussianBlur(mask, (5, 5), 1.0) - 0.5)
    prior = keras.ops.convert_to_tensor(prior[None, :, :, None])
    car = keras.layers.Lambda(lambda x: prior + 0.0 * x, name="car_prior")(conv)
    return saved, keras.Model(inputs, car)


def use_model(make=None) -> None:
    """Make `predict` run make(config) instead of a run folder's model.keras (None: restore)."""
    import carvana.predict
    from carvana.config import TrainConfig

    def load_run(run_dir):
        config = TrainConfig.load(run_dir)
        return make(config), config

    carvana.predict.load_run = ORIGINAL_LOAD_RUN if make is None else load_run


def use_trivial_model() -> None:
    """Make `predict` run the car-prior model (the run folder's model.keras is a stub)."""
    models = {}
    use_model(lambda config: models.setdefault(config, trivial_model(config)[1]))


def with_car_prior(model, config):
    """model's compute, but logits = car prior + 1e-3 * model: random weights give noise masks
    whose RLE is 100x longer than a car's, which would measure the noise, not the pipeline."""
    import keras

    prior = trivial_model(config)[1]
    inputs = keras.Input(model.input_shape[1:], name="image")
    logits = keras.layers.Lambda(lambda t: t[0] + 1e-3 * t[1], name="car_prior_plus")(
        [prior(inputs), model(inputs)]
    )
    return keras.Model(inputs, logits)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def predict_rate(
    data, run_dir: Path, out: Path, n: int, batch: int, **settings
) -> tuple[float, float]:
    """(images/s of the prediction loop, CPU ms per image) of one `predict` run of n images;
    the final validation is left out of both (it is timed apart)."""
    from carvana.config import PredictConfig
    from carvana.predict import predict

    cpu = cpu_seconds()
    pconfig = PredictConfig(batch_size=batch, limit=n, **settings)
    summary = predict(data, run_dir, out, pconfig, progress=False)
    cpu = cpu_seconds() - cpu
    assert summary["ok"] and summary["rows"] == n, summary["problems"][:3]
    began, check = time.perf_counter(), cpu_seconds()
    validate(out, shape=FULL)
    cpu -= cpu_seconds() - check
    VALIDATION.append(n / (time.perf_counter() - began))
    return summary["images_per_s"], 1e3 * cpu / n


def validate(path, shape):
    from carvana.submission import validate as check

    problems = check(path, shape=shape)
    assert not problems, problems[:3]


VALIDATION: list[float] = []


def best(label: str, runs: list[tuple[float, float]], unit: str = "img/s") -> tuple[float, float]:
    """Print and return the best rate of the rounds and the lowest CPU ms per image."""
    rate_, cpu = max(r for r, _ in runs), min(c for _, c in runs)
    rounds = ", ".join(f"{r:.1f}" for r, _ in runs)
    print(f"  {label:44s} {rate_:7.1f} {unit} (rounds: {rounds}); CPU {cpu:.2f} ms/img")
    return rate_, cpu


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=10_000, help="largest RSS run (and zip)")
    parser.add_argument("--trivial-images", type=int, default=1500, help="per round")
    parser.add_argument("--mobilenet-images", type=int, default=160)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "carvana-bench")
    parser.add_argument("--skip-mobilenet", action="store_true")
    parser.add_argument("--skip-rss", action="store_true")
    args = parser.parse_args(argv)

    from carvana import rle
    from carvana.config import PredictConfig, TrainConfig
    from carvana.files import CarvanaData
    from carvana.predict import load_run

    try:
        from carvana.inference import make_forward, postprocess
    except ImportError:  # the engine before it moved out of carvana.predict: before/after runs
        from carvana.predict import _postprocess as postprocess
        from carvana.predict import make_forward

    global ORIGINAL_LOAD_RUN
    ORIGINAL_LOAD_RUN = ORIGINAL_LOAD_RUN or load_run

    print(f"{os.cpu_count()} CPU(s); {load()}")
    data = CarvanaData(make_test_set(args.work / "data", max(args.images, args.trivial_images)))
    config = TrainConfig(model="cnn", image_size=(160, 240), original_size=FULL)
    pconfig = PredictConfig(batch_size=args.batch_size)

    masks, probs = car_probabilities(config)
    runs = np.mean([len(rle.encode(m).split()) // 2 for m in masks])
    print(f"\n[post-processing at 1918x1280, car masks with ~{runs:.0f} runs]")
    print(f"  RLE encode, 1 thread:                 {rate(rle.encode, masks):8.0f} img/s")
    post = lambda p: postprocess(p, FULL, 0.5, True)  # noqa: E731
    print(f"  upscale+threshold+RLE, 1 thread:      {rate(post, probs):8.0f} img/s")
    print(
        f"  upscale+threshold+RLE, {pconfig.workers} threads:     "
        f"{pooled_rate(post, probs, pconfig.workers):8.0f} img/s"
    )
    guided = guided_postprocess(data)
    if guided is not None:
        print(f"  + guided filter (decode guide), 1 thread: {rate(guided, probs):6.0f} img/s")

    print(f"\n[end-to-end, trivial 1x1-conv model at 160x256, batch {args.batch_size}]  {load()}")
    trivial = save_run(args.work / "run-trivial", config, trivial_model(config)[0])
    use_trivial_model()
    out = args.work / "trivial.csv.gz"
    predict_rate(data, trivial, out, 2 * args.batch_size, args.batch_size)  # warm-up: tracing
    runs = [
        predict_rate(data, trivial, out, args.trivial_images, args.batch_size)
        for _ in range(args.rounds)
    ]
    e2e_trivial, cpu = best("predict: zip, decode, model, upscale, RLE, csv.gz", runs)
    print(f"  -> {2e3 / cpu:.0f} img/s if 2 cores were free (by CPU time)")
    if guided is not None:
        runs = [
            predict_rate(data, trivial, out, args.trivial_images, args.batch_size, guided=False)
            for _ in range(args.rounds)
        ]
        plain, plain_cpu = best("the same with --guided off", runs)
        print(f"  -> {2e3 / plain_cpu:.0f} img/s if 2 cores were free (by CPU time)")
    use_model(None)

    e2e = None
    if not args.skip_mobilenet:
        import tensorflow as tf

        from carvana.models import build_model

        mconfig = TrainConfig(model="mobilenet", image_size=(160, 240), original_size=FULL)
        model = build_model(mconfig)
        mrun = save_run(args.work / "run-mobilenet", mconfig, model)
        ph, pw = mconfig.padded_size
        print(f"\n[MobileNetV2 U-Net at {ph}x{pw}, batch {args.batch_size}]  {load()}")
        model = with_car_prior(model, mconfig)
        use_model(lambda config: model)
        forward = make_forward(model, mconfig)
        batch = tf.constant(
            np.random.default_rng(0).integers(0, 256, (args.batch_size, ph, pw, 3), np.uint8)
        )

        def model_alone():
            cpu, began = cpu_seconds(), time.perf_counter()
            alone = rate(lambda b: forward(b).numpy(), [batch], seconds=8.0) * args.batch_size
            return alone, 1e3 * (cpu_seconds() - cpu) / (alone * (time.perf_counter() - began))

        out = args.work / "mobilenet.csv.gz"
        predict_rate(data, mrun, out, args.batch_size, args.batch_size)  # warm-up: tracing
        alone_runs, e2e_runs = [], []
        for _ in range(args.rounds):
            alone_runs.append(model_alone())
            e2e_runs.append(predict_rate(data, mrun, out, args.mobilenet_images, args.batch_size))
        alone, alone_cpu = best("model alone (forward of a ready batch)", alone_runs)
        e2e, e2e_cpu = best("end-to-end predict", e2e_runs)
        print(f"  ratio end-to-end / model alone, best wall rates: {e2e / alone:5.2f}")
        print(f"  ratio by CPU time per image:                     {alone_cpu / e2e_cpu:5.2f}")
        use_model(None)
    print(f"  validation of the written files: {max(VALIDATION):.0f} rows/s")

    if not args.skip_rss:
        print(f"\n[peak RSS of predict (trivial model), subprocesses]  {load()}")
        peaks = {}
        for count in sorted({min(1000, args.images), args.images}):
            out = subprocess.run(
                [sys.executable, "-c", RSS_SCRIPT, str(data.root), str(trivial),
                 str(args.work / f"rss{count}.csv.gz"), str(count), str(args.batch_size),
                 str(Path(__file__).resolve().parent)],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            now, peak, seconds = out.stdout.split()[-3:]
            peaks[count] = int(peak) / 1024
            print(
                f"  {count:6d} images: peak RSS {peaks[count]:7.1f} MB, at the end "
                f"{int(now) / 1024:7.1f} MB ({float(seconds):.0f} s)"
            )
        if len(peaks) == 2:
            (a, ra), (b, rb) = sorted(peaks.items())
            print(f"  peak RSS growth {a} -> {b} images: {rb - ra:+.1f} MB")

    print(f"\n[projection for {KAGGLE_TEST_IMAGES} test images on this machine]")
    print(f"  trivial model:  {KAGGLE_TEST_IMAGES / e2e_trivial / 60:7.1f} min")
    if e2e:
        print(f"  MobileNetV2 U-Net 160x256: {KAGGLE_TEST_IMAGES / e2e / 3600:7.2f} h")
    print(
        f"self: peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB; {load()}"
    )


if __name__ == "__main__":
    main()
