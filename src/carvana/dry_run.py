"""`carvana dry-run`: the whole round trip on a small synthetic dataset, on CPU, in minutes.

synthesize (Kaggle's zip layout) -> EDA -> train both models briefly -> evaluate and compare
-> predict the test set into submission.csv.gz -> validate -> build the kernels -> summary.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from carvana.config import PredictConfig, TrainConfig


@dataclass(frozen=True)
class DryRunSettings:
    """Sizes of a dry run: the default shows real geometry, `quick` is for the tests."""

    size: tuple[int, int] = (1280, 1918)  # full Carvana resolution, decoded at 1/8
    image_size: tuple[int, int] = (160, 240)
    train_cars: int = 6
    test_images: int = 48
    epochs: int = 6
    batch_size: int = 8


QUICK = DryRunSettings(
    size=(128, 192), image_size=(32, 48), train_cars=5, test_images=12, epochs=2, batch_size=8
)


@contextmanager
def _stage(number: int, title: str):
    """Print a stage's heading, then its duration once it is done."""
    print(f"\n=== [{number}/8] {title} ===", flush=True)
    began = time.perf_counter()
    yield
    print(f"    ({time.perf_counter() - began:.1f} s)", flush=True)


def _make_data(out: Path, settings: DryRunSettings):
    from carvana.eda import run_eda
    from carvana.files import CarvanaData
    from carvana.synth import synthesize

    with _stage(1, "synthesize a Kaggle-shaped dataset (zip layout)"):
        data_dir = synthesize(
            out / "input",
            train_cars=settings.train_cars,
            test_images=settings.test_images,
            size=settings.size,
            seed=0,
            zipped=True,
        )
        data = CarvanaData(data_dir)
        print(
            f"    {data_dir}: {len(data.train_ids())} train, {len(data.test_names())} test images"
        )
    with _stage(2, "exploratory data analysis"):
        eda_report = run_eda(data, out / "eda", samples=4)
        print(f"    report: {eda_report}")
    return data, eda_report


def _train_both(data, out: Path, settings: DryRunSettings) -> tuple[dict, dict]:
    from carvana.evaluate import evaluate
    from carvana.train import train

    runs, results = {}, {}
    for number, model in ((3, "cnn"), (4, "mobilenet")):
        with _stage(number, f"train `{model}` briefly, then evaluate at full resolution"):
            config = TrainConfig(
                model=model,
                image_size=settings.image_size,
                epochs=settings.epochs,
                batch_size=settings.batch_size,
                learning_rate=3e-3,
                patience=settings.epochs,
                val_fraction=0.2,
            )
            runs[model] = out / "runs" / model
            train(data, config, runs[model], resume=False)
            results[model] = evaluate(data, runs[model], out / "evaluation" / model, worst=3)
            print(f"    full-resolution Dice on validation cars: {results[model]['dice']:.4f}")
    return runs, results


def _submit_best(data, out: Path, runs: dict, results: dict) -> tuple[Path, int]:
    from carvana.predict import predict
    from carvana.submission import report_problems, validate

    best = max(results, key=lambda m: results[m]["dice"])
    submission = out / "submission.csv.gz"
    with _stage(6, "predict the test set (best run by Dice) into submission.csv.gz"):
        predicted = predict(data, runs[best], submission, PredictConfig(batch_size=16))
    with _stage(7, "validate the submission"):
        problems = validate(submission, data)
        report_problems(submission, problems)
        if problems:
            raise ValueError(f"{submission}: the dry run wrote an invalid submission")
    return submission, predicted["rows"]


def dry_run(out: Path, quick: bool = False) -> dict:
    """Run every stage on synthetic data under `out`; return the summary it prints."""
    from carvana.evaluate import compare
    from carvana.kernel_build import build

    settings = QUICK if quick else DryRunSettings()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    data, eda_report = _make_data(out, settings)
    runs, results = _train_both(data, out, settings)
    with _stage(5, "compare the runs"):
        print(compare(list(runs.values()), out=out / "comparison.md"))
    submission, rows = _submit_best(data, out, runs, results)
    with _stage(8, "build the Kaggle kernels"):
        kernel_scripts = build(out_dir=out / "kernels")
        for path in kernel_scripts:
            print(f"    {path} ({path.stat().st_size / 1e3:.0f} kB)")
    summary = {
        "seconds": round(time.perf_counter() - began, 1),
        "eda_report": str(eda_report),
        "dice": {m: round(r["dice"], 4) for m, r in results.items()},
        "evaluation_reports": {m: str(r["report"]) for m, r in results.items()},
        "comparison": str(out / "comparison.md"),
        "submission": str(submission),
        "submission_rows": rows,
        "kernels": [str(p) for p in kernel_scripts],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print("\n=== summary ===")
    for key, value in summary.items():
        print(f"  {key}: {value}")
    return summary
