"""The test-set run: one shard of the test images -> RLE rows in a csv.gz, resumable.

`predict` drives the engine (carvana.inference.predict_ensemble) over the test set with one
run or an ensemble of several (their full-size maps averaged), at the given threshold or the
runs' tuned one (carvana.thresholds.run_threshold): rows reach `<out>.partial` while the run
goes, `<out>.partial.json` (a `ResumeState`) records what the rows depend on (`resume_key`:
the models' content, the run folders, threshold, TTA, shard, limit) and the bad images found, and `<out>.lock` keeps a second run off the same output.
An interrupted run resumes with the same command; other settings are refused, never mixed in.
At the end the partial file becomes `out` and is validated against the test set.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from carvana.config import CONFIG_FILE, MODEL_FILE, PredictConfig, TrainConfig
from carvana.files import DataError, atomic_write
from carvana.inference import predict_ensemble
from carvana.submission import SubmissionWriter, image_shape, validate
from carvana.thresholds import run_threshold


def shard_names(names: Iterable[str], shard: tuple[int, int], limit: int = 0) -> list[str]:
    """Shard i of n: every n-th name of the sorted list from the i-th; then the first `limit`."""
    i, n = shard
    chosen = sorted(names)[i::n]
    return chosen[:limit] if limit > 0 else chosen


def load_run(run_dir: Path):
    """(model, TrainConfig) of a run folder."""
    from carvana.models import load_model

    return load_model(run_dir), TrainConfig.load(run_dir)


def _sibling(out: Path, suffix: str) -> Path:
    return out.with_name(out.name + suffix)


# -- what the rows depend on --------------------------------------------------------------------
def file_sha256(path: Path) -> str | None:
    """Hex sha256 of a file's content (None when it does not exist)."""
    if not path.is_file():
        return None
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def run_fingerprint(run_dir: Path) -> dict:
    """A run folder as predictions depend on it: where it is, its settings, its model's bytes."""
    return {
        "run": str(Path(run_dir).resolve()),
        "config_sha256": file_sha256(Path(run_dir) / CONFIG_FILE),
        "model_sha256": file_sha256(Path(run_dir) / MODEL_FILE),
    }


# What a resume key saved before a setting was keyed stands for: rows made without the filter.
KEYED_BEFORE = {"guided": False}


def resume_key(run_dirs: list[Path], pconfig: PredictConfig) -> dict:
    """Everything the rows of a run depend on; a list of runs, so an ensemble keys the same way."""
    return {
        "runs": [run_fingerprint(r) for r in run_dirs],
        "threshold": pconfig.threshold,
        "tta": pconfig.tta,
        "guided": pconfig.guided,
        "shard": list(pconfig.shard),
        "limit": pconfig.limit,
    }


def key_differences(saved: dict, now: dict) -> list[str]:
    """What differs between two resume keys, in words ("limit 0 -> 10", ...)."""
    runs_then, runs_now = saved.get("runs", []), now["runs"]
    found = [] if len(runs_then) == len(runs_now) else [f"runs {len(runs_then)} -> {len(runs_now)}"]
    for then, current in zip(runs_then, runs_now, strict=False):  # counts compared above
        if then.get("run") != current["run"]:
            found.append(f"run folder differs ({then.get('run')} -> {current['run']})")
        for what, name in (("config_sha256", CONFIG_FILE), ("model_sha256", MODEL_FILE)):
            if then.get(what) != current[what]:
                found.append(f"{name} content differs in {current['run']}")
    for setting in ("threshold", "tta", "guided", "shard", "limit"):
        then = saved.get(setting, KEYED_BEFORE.get(setting))
        if then != now[setting]:
            found.append(f"{setting} {then} -> {now[setting]}")
    return found


@dataclass
class ResumeState:
    """`<out>.partial.json`: the key of the rows in `<out>.partial`, the bad images written as
    empty rows (recorded before their rows land), and whether all rows are written."""

    path: Path
    key: dict
    bad: dict[str, str] = field(default_factory=dict)
    finished: bool = False

    @classmethod
    def load(cls, path: Path) -> ResumeState:
        """The state saved at `path`; a ValueError naming it when it is not a readable one."""
        try:
            saved = json.loads(path.read_text())
            state = cls(path, saved["key"], dict(saved["bad"]), bool(saved["finished"]))
            if not isinstance(state.key, dict):
                raise TypeError("key is not an object")
            return state
        except (OSError, ValueError, KeyError, TypeError) as err:
            partial = path.with_name(path.name.removesuffix(".json"))
            raise ValueError(
                f"{path}: not a readable resume state ({type(err).__name__}: {err}); delete it "
                f"and {partial.name} beside it to start over"
            ) from None

    def save(self) -> None:
        """Write the state atomically (a crash leaves the old one or the new one)."""
        text = json.dumps({"key": self.key, "bad": self.bad, "finished": self.finished}, indent=1)
        atomic_write(self.path, lambda tmp: Path(tmp).write_text(text + "\n"))

    def finish(self) -> None:
        """Record that every row is written (the partial file is about to become `out`)."""
        self.finished = True
        self.save()


def _resume_state(out: Path, key: dict) -> ResumeState:
    """The state to go on from: the saved one when its key matches, else a fresh one; work in
    progress from other settings (or without its state) is refused, never dropped."""
    partial, path = _sibling(out, ".partial"), _sibling(out, ".partial.json")
    saved = ResumeState.load(path) if path.exists() else None
    if partial.exists() and saved is None:
        raise ValueError(f"{partial}: no {path.name} beside it; delete the partial file")
    if saved is not None and saved.key != key:
        if partial.exists():
            raise ValueError(
                f"{partial}: work in progress from other settings: "
                f"{'; '.join(key_differences(saved.key, key))}. Finish it with its settings, "
                f"use another --out, or delete {partial.name} and {path.name} to start over"
            )
        saved = None  # nothing written with those settings is left to keep
    if saved is None or not (partial.exists() or (saved.finished and out.exists())):
        return ResumeState(path, key)
    saved.finished = saved.finished and not partial.exists()
    return saved


class OutputLock:
    """`<out>.lock`, held (flock) by the one run writing `out`, with its pid inside; the lock
    of a process that died is free, so its file is simply taken over."""

    def __init__(self, out: Path):
        self.out, self.path = out, _sibling(out, ".lock")
        self._fd: int | None = None

    def __enter__(self) -> OutputLock:
        while self._fd is None:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                pid = os.read(fd, 32).decode(errors="replace").strip() or "?"
                os.close(fd)
                raise ValueError(
                    f"{self.out}: in use by process {pid} (another predict writes it); "
                    "wait for it to end or use another --out"
                ) from None
            try:  # the holder before us may have removed the file we opened: lock the new one
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        self.path.unlink(missing_ok=True)  # while still held: a waiting run re-checks the inode
        os.close(self._fd)
        self._fd = None


# -- writing the rows ---------------------------------------------------------------------------
class _PartialRows:
    """Rows into `<out>.partial`, resumed when it exists; a bad image goes into the state
    before its empty row can reach the file, so a resumed run still counts it."""

    def __init__(self, out: Path, names: list[str], state: ResumeState):
        self.path, self.state = _sibling(out, ".partial"), state
        gz = out.name.endswith(".gz")
        if self.path.exists():
            self.writer, self.done = SubmissionWriter.resume(self.path, set(names), gz=gz)
        else:
            self.writer, self.done = SubmissionWriter(self.path, gz=gz), []
        self._saved_bad = len(state.bad)

    def write(self, name: str, text: str, bad: str | None = None) -> None:
        """Queue one row; `bad` is the reason an image's row is empty."""
        if bad is not None:
            self.state.bad[name] = bad
        self.writer.write(name, text)

    def flush(self) -> None:
        """Save the state when new bad images came, then hand the rows to the OS."""
        if len(self.state.bad) != self._saved_bad:
            self.state.save()
            self._saved_bad = len(self.state.bad)
        self.writer.flush()

    def close(self) -> None:
        """Flush and close the file (interrupted too: the rows so far are kept)."""
        self.flush()
        self.writer.close()


def _read_test_set(data, names: Iterable[str], errors: dict[str, str]) -> Iterator:
    for name in names:
        try:
            yield name, data.read_test_bytes(name)
        except (DataError, OSError) as err:
            errors[name] = str(err)
            yield name, b""


def _progress(total: int, initial: int, out: Path, enabled: bool):
    from tqdm import tqdm

    return tqdm(
        total=total,
        initial=initial,
        unit="img",
        disable=not enabled,
        file=sys.stderr,
        desc=f"predict {out.name}",
        dynamic_ncols=True,
        smoothing=0.1,
    )


def _predict_rows(data, run_dirs: list[Path], todo: list[str], rows: _PartialRows, pconfig, bar):
    """Predict `todo` into rows; returns (images predicted, seconds without loading the models)."""
    members = [load_run(r) for r in run_dirs]
    began = time.perf_counter()
    errors: dict[str, str] = {}
    predicted = 0
    items = _read_test_set(data, todo, errors)
    for name, text in predict_ensemble(members, items, pconfig, True, errors):
        bad = None if text is not None else errors.get(name, "unreadable")
        if bad is not None:
            bar.write(f"bad image {name}: {bad}", file=sys.stderr)
        rows.write(name, text or "", bad)
        predicted += 1
        bar.update(1)
        if predicted % pconfig.batch_size == 0:
            rows.flush()
    return predicted, time.perf_counter() - began


def _write_out(data, run_dirs, out, names, state, pconfig, progress) -> tuple[int, int, float]:
    """Write every row into the partial file, then make it `out`: (predicted, resumed, s)."""
    state.save()
    rows = _PartialRows(out, names, state)
    done = set(rows.done)
    todo = [n for n in names if n not in done]
    bar = _progress(len(names), len(done), out, progress)
    predicted, seconds = 0, 0.0
    try:
        if todo:
            predicted, seconds = _predict_rows(data, run_dirs, todo, rows, pconfig, bar)
    finally:  # interrupted too: the rows computed so far are kept for the resume
        rows.close()
        bar.close()
    if rows.writer.rows != len(names):
        raise RuntimeError(f"{rows.path}: {rows.writer.rows} rows for {len(names)} images")
    state.finish()
    os.replace(rows.path, out)
    return predicted, len(done), seconds


def predict(
    data,
    run_dir,
    out: Path,
    pconfig: PredictConfig,
    allow_bad_images: bool = False,
    progress: bool = True,
) -> dict:
    """Predict this shard of the test set into `out` (gzip CSV) with a run folder, or with the
    ensemble of a list of them, resuming `<out>.partial` when present; validate the result.
    "ok" is false when bad images (unless allowed) or problems."""
    run_dirs = [Path(run_dir)] if isinstance(run_dir, (str, Path)) else list(map(Path, run_dir))
    out = Path(out)
    if not run_dirs:
        raise ValueError("predict needs at least one run folder")
    for folder in run_dirs:
        TrainConfig.load(folder)  # a clear error before anything is written
    threshold, source = run_threshold(run_dirs, pconfig.threshold)
    pconfig = pconfig.replace(threshold=threshold)
    names = shard_names(data.test_names(), pconfig.shard, pconfig.limit)
    if not names:
        raise DataError(
            f"{data.root}: shard {pconfig.shard[0]}/{pconfig.shard[1]} has no test images"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    with OutputLock(out):
        state = _resume_state(out, resume_key(run_dirs, pconfig))
        predicted = resumed = 0
        seconds = 0.0
        if not state.finished:
            predicted, resumed, seconds = _write_out(
                data, run_dirs, out, names, state, pconfig, progress
            )
        problems = validate(out, expected_names=names, shape=image_shape(data))
        state.path.unlink(missing_ok=True)
    wanted = set(names)
    bad = {k: v for k, v in state.bad.items() if k in wanted}
    summary = {
        "ok": not problems and (allow_bad_images or not bad),
        "path": out,
        "rows": len(names),
        "predicted": predicted,
        "resumed": resumed,
        "bad_images": sorted(bad),
        "bad_reasons": bad,
        "problems": problems,
        "seconds": round(time.perf_counter() - began, 2),
        "images_per_s": round(predicted / seconds, 2) if seconds > 0 else 0.0,
        "runs": [str(r) for r in run_dirs],
        "threshold": threshold,
        "threshold_source": source,
    }
    if progress:
        _print_summary(summary, allow_bad_images)
    return summary


def _print_summary(summary: dict, allow_bad_images: bool) -> None:
    from carvana.submission import report_problems

    print(
        f"{summary['path']}: {summary['rows']} rows ({summary['predicted']} predicted now, "
        f"{summary['resumed']} resumed) in {summary['seconds']:.1f} s, "
        f"{summary['images_per_s']:.1f} img/s; {len(summary['runs'])} run(s), threshold "
        f"{summary['threshold']} ({summary['threshold_source']})"
    )
    bad = summary["bad_images"]
    if bad:
        allowed = "allowed by --allow-bad-images" if allow_bad_images else "exit status 1"
        print(f"{len(bad)} bad image(s) written as empty masks ({allowed}):", file=sys.stderr)
        for name in bad[:50]:
            print(f"  {name}: {summary['bad_reasons'][name]}", file=sys.stderr)
        if len(bad) > 50:
            print(f"  ... and {len(bad) - 50} more", file=sys.stderr)
    report_problems(summary["path"], summary["problems"])
