"""What runs inside a Kaggle kernel: the train kernel's job, finding attached runs and weights.

The entry scripts in kernels/*/kernel.py call these after the built script has unpacked the
package. Settings come from the entry script's CONFIG, overridden by CARVANA_<FIELD> variables
(parsed and checked by `flags.from_env`, the parser the CLI uses). No TensorFlow at import.
"""

from __future__ import annotations

import json
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from carvana.files import COMPETITION, kaggle_root

# The no-top ImageNet file Keras downloads for MobileNetV2 (alpha 1.0; 224 is also what it
# picks for non-square inputs); `carvana weights upload` puts it in a private dataset.
WEIGHTS_FILE = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"


def _sources(inputs: Path) -> list[Path]:
    if not inputs.is_dir():
        raise FileNotFoundError(f"{inputs}: no Kaggle input folder; is this a kernel?")
    # Not the competition folder: walking 100k images there would take minutes.
    return sorted(p for p in inputs.iterdir() if p.is_dir() and p.name != COMPETITION)


def find_weights(root: str | Path | None = None, name: str = WEIGHTS_FILE) -> Path | None:
    """The weights file of an attached dataset under /kaggle/input, or None when none is."""
    inputs = Path(root) if root else kaggle_root() / "input"
    found = sorted(p for s in _sources(inputs) for p in s.rglob(name) if p.is_file())
    return found[0] if found else None


def attached_weights(config):
    """`config` with weights=imagenet pointed at the attached file, so no download is needed."""
    if config.model != "mobilenet" or config.weights != "imagenet":
        return config
    path = find_weights()
    if path is None:
        print(
            f"ImageNet weights: no {WEIGHTS_FILE} attached under {kaggle_root() / 'input'}; "
            "Keras downloads them, which needs the kernel's internet on "
            "(or run `carvana weights upload` and attach the dataset)",
            flush=True,
        )
        return config
    print(f"ImageNet weights: {path}", flush=True)
    return config.replace(weights=str(path))


def announce_runtime(augment: bool) -> None:
    """Print what the kernel runs on (Python, libraries, GPUs); stop at once on a combination
    known not to work instead of hours later."""
    from carvana import runtime

    print("\n".join(runtime.describe() + runtime.notices()), flush=True)
    try:
        runtime.check(augment=augment)
    except runtime.UnsupportedEnvironment as err:
        raise SystemExit(f"carvana: {err}") from None


@contextmanager
def user_errors():
    """Bad input (a missing file, a corrupt image, a setting out of range) ends the kernel with
    the kit's one line, as the CLI does, instead of a traceback; CARVANA_DEBUG=1 shows it."""
    try:
        yield
    except (ValueError, FileNotFoundError, FileExistsError, PermissionError) as err:
        if os.environ.get("CARVANA_DEBUG"):
            raise
        print(f"carvana: error: {err}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


@user_errors()
def train_kernel(config) -> dict:
    """A train kernel's job: train `config` (CARVANA_<FIELD> overrides) into working/run,
    evaluate on the validation cars unless CARVANA_EVALUATE=0, write train-summary.json."""
    from carvana.evaluate import evaluate
    from carvana.files import CarvanaData, competition_dir, working_dir
    from carvana.flags import cli_fields, from_env
    from carvana.train import train

    began = time.time()
    config, from_environment = from_env(config)
    announce_runtime(augment=config.augment)
    config = attached_weights(config)
    data = CarvanaData(competition_dir())
    config = config.replace(original_size=data.image_size())
    # The entry script's CONFIG is what the user asked for, field by field.
    asked = frozenset(f.name for f in cli_fields(type(config))) | from_environment
    run_dir = working_dir() / "run"
    print(f"training {config.model} at {config.image_size} for up to {config.epochs} epochs")
    summary = train(data, config, run_dir, resume=True, asked=asked)
    print(f"run folder: {run_dir}  best validation Dice: {summary['best_val_dice']:.4f}")
    if os.environ.get("CARVANA_EVALUATE", "1") != "0":
        result = evaluate(data, run_dir, working_dir() / "evaluation")
        summary["full_resolution_dice"] = result["dice"]
        print(f"full-resolution Dice on the validation cars: {result['dice']:.4f}")
    summary["minutes"] = round((time.time() - began) / 60, 1)
    (working_dir() / "train-summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print(f"done in {summary['minutes']} min")
    return summary


@user_errors()
def predict_kernel(config, run: str = "") -> dict:
    """A predict kernel's job: the attached run, or the ensemble of the attached runs
    (CARVANA_RUN or `run`: comma-separated parts of their paths; none: every attached run),
    predicts the test set into working/submission.csv.gz (or submission-i-of-n.csv.gz), validated."""
    from carvana.files import CarvanaData, competition_dir, working_dir
    from carvana.flags import from_env
    from carvana.predict import predict

    config, _ = from_env(config)
    announce_runtime(augment=False)
    names = [n.strip() for n in os.environ.get("CARVANA_RUN", run).split(",") if n.strip()]
    run_dirs = find_runs(names=names)
    i, n = config.shard
    out = working_dir() / ("submission.csv.gz" if n == 1 else f"submission-{i}-of-{n}.csv.gz")
    if len(run_dirs) > 1:
        how = "named by CARVANA_RUN" if names else "all attached runs, none named by CARVANA_RUN"
        print(f"ensemble of {len(run_dirs)} runs ({how}): mean of their full-size maps")
    print(f"model(s): {', '.join(map(str, run_dirs))}  output: {out}", flush=True)
    progress = os.environ.get("CARVANA_PROGRESS", "1") != "0"
    summary = predict(CarvanaData(competition_dir()), run_dirs, out, config, progress=progress)
    print(
        f"{out}: {summary['rows']} rows in {summary['seconds']} s at threshold "
        f"{summary['threshold']} ({summary['threshold_source']}), "
        f"{len(summary['bad_images'])} unreadable image(s), {len(summary['problems'])} problem(s)"
    )
    if not summary["ok"]:
        raise SystemExit(f"{out}: prediction or validation failed; see the messages above")
    return summary


def attached_runs(root: str | Path | None = None) -> tuple[Path, list[Path]]:
    """(the input folder, the run folders (config.json + model.keras) attached under it)."""
    from carvana.config import CONFIG_FILE, MODEL_FILE

    inputs = Path(root) if root else kaggle_root() / "input"
    runs = sorted(
        c.parent
        for s in _sources(inputs)
        for c in s.rglob(CONFIG_FILE)
        if (c.parent / MODEL_FILE).is_file()
    )
    return inputs, runs


def _no_run(inputs: Path, runs: list[Path], wanted: str) -> FileNotFoundError:
    from carvana.config import CONFIG_FILE, MODEL_FILE

    found = ", ".join(str(r) for r in runs) or "none"
    return FileNotFoundError(
        f"{inputs}: need {wanted} run folder ({CONFIG_FILE} + {MODEL_FILE}) from a train "
        f"kernel; found {found}. Add the train kernel to kernel_sources, or set CARVANA_RUN "
        "to pick runs (comma-separated parts of their paths)"
    )


def find_runs(root: str | Path | None = None, names: list[str] | tuple = ()) -> list[Path]:
    """The attached run folders a predict kernel uses: for each name, the one run whose path
    under /kaggle/input contains it; with no names, every attached run (at least one)."""
    inputs, runs = attached_runs(root)
    if not names:
        if not runs:
            raise _no_run(inputs, runs, "at least one")
        return runs
    chosen = []
    for name in names:
        matching = [r for r in runs if name in r.relative_to(inputs).as_posix()]
        if len(matching) != 1:
            raise _no_run(inputs, runs, f"exactly one {name!r} matching")
        chosen.append(matching[0])
    return list(dict.fromkeys(chosen))


def find_run(root: str | Path | None = None, name: str = "") -> Path:
    """The one run folder (config.json + model.keras) a predict kernel got through
    kernel_sources (`name`: part of its path, when several are attached)."""
    inputs, runs = attached_runs(root)
    if name:
        runs = [r for r in runs if name in r.relative_to(inputs).as_posix()]
    if len(runs) != 1:
        raise _no_run(inputs, runs, f"exactly one{f' {name!r} matching' if name else ''}")
    return runs[0]
