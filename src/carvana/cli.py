"""The `carvana` command: one thin sub-command per verb; the work lives in the stage modules.

Stage modules are imported inside each handler so that `carvana --help` and the light verbs
(synth, eda, validate, merge) never load TensorFlow.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# No TensorFlow in either: the parser and --help stay fast.
from carvana.config import PredictConfig, TrainConfig, parse_size
from carvana.flags import add_arguments, cli_fields, given_settings

TENSORFLOW_COMMANDS = ("train", "evaluate", "predict", "dry-run")
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, PermissionError)


def _data_dir(value: str | None) -> Path:
    from carvana.files import DataError, default_data_dir

    if value:
        return Path(value)
    found = default_data_dir()
    if found is None:
        raise DataError("no --data given and no Kaggle input folder found; pass --data DIR")
    return found


def _data(args):
    from carvana.files import CarvanaData

    return CarvanaData(_data_dir(args.data), hq=getattr(args, "hq", False))


def _size(text: str) -> tuple[int, int]:

    try:
        return parse_size(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _add_data(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data",
        help="competition data: a folder of Kaggle's zips or of unzipped folders "
        "(default: the Kaggle input folder when it exists)",
    )


# -- handlers -------------------------------------------------------------------------------
def cmd_synth(args) -> int:
    from carvana.synth import synthesize

    w, h = args.size
    out = synthesize(
        args.out,
        train_cars=args.train_cars,
        test_images=args.test_images,
        size=(h, w),
        seed=args.seed,
        zipped=args.zipped,
    )
    print(f"synthetic Carvana data written to {out}")
    return 0


def cmd_eda(args) -> int:
    from carvana.eda import run_eda

    report = run_eda(_data(args), Path(args.out), samples=args.samples)
    print(f"EDA report: {report}")
    return 0


def cmd_train(args) -> int:
    from carvana.train import train

    asked = given_settings(args, TrainConfig)
    summary = train(
        _data(args), TrainConfig(**asked), Path(args.out), resume=not args.fresh, asked=set(asked)
    )
    print(f"run folder: {args.out}  best validation Dice: {summary['best_val_dice']:.4f}")
    return 0


def cmd_evaluate(args) -> int:
    from carvana.evaluate import evaluate

    runs = [Path(r) for r in args.run]
    result = evaluate(
        _data(args),
        runs,
        Path(args.out),
        worst=args.worst,
        threshold=args.threshold,
        tta=getattr(args, "tta", False),
        guided=getattr(args, "guided", True),
    )
    print(
        f"full-resolution mean Dice {result['dice']:.4f} at threshold {result['threshold']} "
        f"({result['threshold_source']}; {result['dice_at_0.5']:.4f} at 0.5), pixel accuracy "
        f"{result['accuracy']:.4f}  report: {result['report']}"
    )
    return 0


def cmd_compare(args) -> int:
    from carvana.evaluate import compare

    print(compare([Path(r) for r in args.runs], out=Path(args.out) if args.out else None))
    return 0


def cmd_predict(args) -> int:
    from carvana.predict import predict

    config = PredictConfig(**given_settings(args, PredictConfig))
    runs = [Path(r) for r in args.run]
    summary = predict(
        _data(args), runs, Path(args.out), config, allow_bad_images=args.allow_bad_images
    )
    return 0 if summary["ok"] else 1


def cmd_merge(args) -> int:
    from carvana.submission import merge

    data = _data(args) if (args.data or _has_default_data()) else None
    merge([Path(p) for p in args.parts], Path(args.out), data=data)
    print(f"merged {len(args.parts)} part(s) into {args.out}")
    return 0


def cmd_validate(args) -> int:
    from carvana.submission import report_problems, validate

    problems = validate(Path(args.submission), _data(args))
    report_problems(args.submission, problems)
    return 1 if problems else 0


def cmd_kernels(args) -> int:
    from carvana import kernel_build

    if args.action == "build":
        names = args.names or None
        built = kernel_build.build(names, username=args.username, accelerator=args.accelerator)
        for path in built:
            print(f"built {path}")
        return 0
    from carvana import kaggle_api

    name = args.names[0]
    if args.action == "push":
        print(kaggle_api.push_kernel(name, username=args.username, accelerator=args.accelerator))
    elif args.action == "status" and args.wait:
        state = kaggle_api.wait_for_kernel(name, username=args.username, interval=args.interval)
        return 0 if state == "complete" else 1
    elif args.action == "status":
        print(kaggle_api.kernel_status(name, username=args.username))
    elif args.action == "logs":
        print(kaggle_api.kernel_logs(name, username=args.username), end="")
    elif args.action == "output":
        folder = Path(args.path) if args.path else Path("kernel-output") / name
        files = kaggle_api.kernel_output(name, folder, username=args.username, everything=args.all)
        for path in files:
            print(path)
        what = "" if args.all else " (run folder without checkpoint/, summaries, submissions)"
        print(f"downloaded {len(files)} file(s) of {name} into {folder}/{what}")
    return 0


def cmd_submit(args) -> int:
    from carvana import kaggle_submit

    data = _data(args) if args.data else None
    print(kaggle_submit.submit(Path(args.file), args.message, data=data, force=args.force))
    return 0


def cmd_submissions(args) -> int:
    from carvana import kaggle_submit

    print(kaggle_submit.list_submissions(last=args.last))
    return 0


def cmd_weights(args) -> int:
    from carvana import kaggle_api

    print(kaggle_api.upload_weights(args.file, username=args.username))
    return 0


def cmd_dry_run(args) -> int:
    from carvana.dry_run import dry_run

    dry_run(Path(args.out), quick=args.quick)
    return 0


def _has_default_data() -> bool:
    from carvana.files import default_data_dir

    return default_data_dir() is not None


# -- parser ---------------------------------------------------------------------------------
def _add_data_verbs(sub) -> None:
    """Sub-commands that make or look at data: synth, eda."""
    p = sub.add_parser("synth", help="write a synthetic Kaggle-shaped dataset")
    p.add_argument("out", help="output folder")
    p.add_argument("--train-cars", type=int, default=4, help="training cars (16 images each)")
    p.add_argument("--test-images", type=int, default=16, help="test images")
    p.add_argument(
        "--size",
        type=_size,
        default=(1918, 1280),
        metavar="WxH",
        help="image size, width x height (default 1918x1280)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--zipped", action="store_true", help="write Kaggle's zip layout")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("eda", help="exploratory report (markdown + PNG figures)")
    _add_data(p)
    p.add_argument("--out", required=True, help="report folder")
    p.add_argument("--samples", type=int, default=8, help="images in the overlay grid")
    p.set_defaults(func=cmd_eda)


def _add_model_verbs(sub) -> None:
    """Sub-commands of the model stages: train, evaluate, compare, predict, dry-run."""

    p = sub.add_parser("train", help="train a model into a run folder")
    _add_data(p)
    p.add_argument("--out", required=True, help="run folder (config.json, model.keras, ...)")
    add_arguments(p, TrainConfig)
    p.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="full-resolution Dice of a run on its validation cars")
    _add_data(p)
    p.add_argument(
        "--run",
        required=True,
        action="append",
        help="run folder made by train; several: their ensemble, on the validation cars they share",
    )
    p.add_argument("--out", required=True, help="report folder")
    p.add_argument("--worst", type=int, default=6, help="worst images shown as panels")
    kept = ("threshold", "tta", "guided")
    others = [f.name for f in cli_fields(PredictConfig) if f.name not in kept]
    add_arguments(p, PredictConfig, skip=others)
    p.set_defaults(threshold=None)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("compare", help="comparison table of several evaluated runs")
    p.add_argument("runs", nargs="+", help="run folders")
    p.add_argument("--out", help="write the table to this markdown file too")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("predict", help="stream the test set into a submission csv.gz")
    _add_data(p)
    p.add_argument(
        "--run",
        required=True,
        action="append",
        help="run folder made by train; several: their ensemble (mean of the full-size maps)",
    )
    p.add_argument("--out", default="submission/submission.csv.gz")
    add_arguments(p, PredictConfig)
    p.add_argument(
        "--allow-bad-images",
        action="store_true",
        help="exit 0 even when some test images could not be read",
    )
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("dry-run", help="the whole round trip on a small synthetic dataset")
    p.add_argument("--out", default="dry-run", help="working folder")
    p.add_argument("--quick", action="store_true", help="smallest settings (used by the tests)")
    p.set_defaults(func=cmd_dry_run)


def _add_submission_verbs(sub) -> None:
    """Sub-commands for submission files and Kaggle: merge, validate, submit, submissions, kernels, weights."""
    p = sub.add_parser("merge", help="join shard files into one submission")
    p.add_argument("parts", nargs="+", help="shard submission files")
    p.add_argument("--out", required=True)
    _add_data(p)
    p.set_defaults(func=cmd_merge)

    p = sub.add_parser("validate", help="check a submission file against the test set")
    p.add_argument("submission")
    _add_data(p)
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("submit", help="check and submit a file to the competition")
    p.add_argument("file")
    p.add_argument("-m", "--message", required=True)
    _add_data(p)
    p.add_argument(
        "--force",
        action="store_true",
        help="submit without checking that every test image is there exactly once",
    )
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("submissions", help="list your submissions and scores")
    p.add_argument("-n", dest="last", type=int, help="only the newest N (default: all)")
    p.set_defaults(func=cmd_submissions)

    p = sub.add_parser("kernels", help="build, push and follow the Kaggle kernels")
    p.add_argument("action", choices=("build", "push", "status", "logs", "output"))
    p.add_argument("names", nargs="*", help="kernel names (build: default all)")
    p.add_argument("--username", help="Kaggle user name for kernel ids (default: credentials)")
    p.add_argument(
        "--accelerator",
        metavar="NAME",
        help="build/push: Kaggle machine_shape instead of kernel-metadata.json's "
        "(default NvidiaTeslaT4, 2x T4)",
    )
    p.add_argument("--wait", action="store_true", help="status: poll until complete or error")
    p.add_argument("--interval", type=float, default=30.0, help="status --wait: seconds per poll")
    p.add_argument("-p", "--path", help="output: download folder (default kernel-output/NAME)")
    p.add_argument(
        "--all", action="store_true", help="output: every file, checkpoint/ and reports included"
    )
    p.set_defaults(func=cmd_kernels)

    p = sub.add_parser("weights", help="upload MobileNetV2's ImageNet weights for the kernels")
    p.add_argument("action", choices=("upload",))
    p.add_argument(
        "file", nargs="?", help="the no-top .h5 file (default: the one in ~/.keras/models/)"
    )
    p.add_argument("--username", help="Kaggle user name (default: credentials)")
    p.set_defaults(func=cmd_weights)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `carvana` command."""
    parser = argparse.ArgumentParser(
        prog="carvana", description="Carvana Image Masking Challenge: data to scored submission."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_data_verbs, _add_model_verbs, _add_submission_verbs):
        add(sub)
    return parser


def _import_tensorflow_quietly() -> None:
    """Import TensorFlow with its C++ start-up lines held back (they go straight to file
    descriptor 2, before TF_CPP_MIN_LOG_LEVEL is read); shown when the import fails."""
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with tempfile.TemporaryFile() as held:
            os.dup2(held.fileno(), 2)
            try:
                import tensorflow  # noqa: F401
            except BaseException:
                os.dup2(saved, 2)
                held.seek(0)
                sys.stderr.write(held.read().decode(errors="replace"))
                raise
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `carvana` command; user errors exit 2 with one line."""
    # TensorFlow's C++ start-up log is noise to a user; their own setting wins.
    quiet = os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2") in ("2", "3")
    args = build_parser().parse_args(argv)
    if quiet and args.command in TENSORFLOW_COMMANDS and "tensorflow" not in sys.modules:
        _import_tensorflow_quietly()
    if args.command == "kernels" and args.action != "build" and len(args.names) != 1:
        build_parser().error(f"kernels {args.action} needs exactly one kernel name")
    try:
        return args.func(args)
    except USER_ERRORS as err:
        if os.environ.get("CARVANA_DEBUG"):
            raise
        print(f"carvana: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("carvana: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
