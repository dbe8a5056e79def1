"""Evaluation at the competition's resolution, and a comparison table of several runs.

`evaluate` predicts a run's validation cars (or an ensemble's shared ones) with the same
streaming engine as the test-set prediction (carvana.inference: model-size probabilities
upsampled with cv2 INTER_LINEAR to the original size, the runs' maps averaged, thresholded at
the run's tuned threshold unless one is given), scores each image's Dice and pixel accuracy
from histograms of its map (carvana.thresholds.image_scores, so Dice at 0.5 comes too), and
writes a markdown report with Dice per angle and panels of the worst images; the figures also
go to RUN_DIR/evaluation.json (one run), which `compare` reads.
"""

from __future__ import annotations

import heapq
import json
import time
from pathlib import Path

import numpy as np

from carvana.config import PredictConfig, TrainConfig
from carvana.files import ANGLES, DataError, car_id
from carvana.files import angle as angle_of
from carvana.markdown import markdown_table
from carvana.thresholds import DEFAULT_THRESHOLD, image_scores, level, run_threshold

EVALUATION_FILE = "evaluation.json"
REPORT_FILE = "report.md"
TARGET_DICE = 0.98  # compare: epochs until validation Dice (model resolution) reaches this


def save_panel(
    image: np.ndarray, true: np.ndarray, pred: np.ndarray, title: str, path: Path, width: int = 480
) -> Path:
    """PNG of input / true mask / predicted mask / errors, each shrunk to about `width`."""
    import cv2
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scale = max(1, round(image.shape[1] / width))
    size = (max(1, image.shape[1] // scale), max(1, image.shape[0] // scale))
    small = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    true_s = cv2.resize(true * 255, size, interpolation=cv2.INTER_AREA)
    pred_s = cv2.resize(pred * 255, size, interpolation=cv2.INTER_AREA)
    # Errors: red = predicted car on background, blue = missed car.
    errors = np.stack([pred_s, np.minimum(pred_s, true_s), true_s], axis=-1)
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.2))
    for ax, shown, name in zip(
        axes,
        (small, true_s, pred_s, errors),
        ("input", "true mask", "predicted mask", "errors (red: extra, blue: missed)"),
        strict=True,
    ):
        ax.imshow(shown, cmap="gray", vmin=0, vmax=255)
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def validation_ids(data, run_dirs: list[Path]) -> list[str]:
    """Image ids of the validation cars the runs share (an ensemble is scored on the cars none
    of its runs trained on); every one of them must be in `data`."""
    cars = None
    for run_dir in run_dirs:
        config = TrainConfig.load(run_dir)
        if not config.val_cars:
            raise ValueError(
                f"{Path(run_dir) / 'config.json'}: the run has no validation cars (val_fraction "
                "0); train with --val-fraction > 0 to evaluate"
            )
        cars = set(config.val_cars) if cars is None else cars & set(config.val_cars)
    if not cars:
        raise ValueError(
            f"{', '.join(map(str, run_dirs))}: the runs share no validation car; train them "
            "with the same --seed and --val-fraction to evaluate them as an ensemble"
        )
    ids = [i for i in data.train_ids() if car_id(i) in cars]
    missing = cars - {car_id(i) for i in ids}
    if missing:
        raise DataError(
            f"{data.root}: validation car(s) of {', '.join(map(str, run_dirs))} not in this "
            f"dataset: {', '.join(sorted(missing)[:5])}"
        )
    return ids


def true_mask(data, image_id: str, shape: tuple[int, ...]) -> np.ndarray:
    """The training mask of `image_id`, checked to have the predicted map's shape."""
    true = data.read_mask(image_id)
    if true.shape != tuple(shape):
        raise DataError(
            f"{data.masks.where(data.mask_name(image_id))}: mask is {true.shape[1]}x"
            f"{true.shape[0]} but its image is {shape[1]}x{shape[0]}"
        )
    return true


def _score_images(data, members, ids, cuts, batch_size: int, worst: int, tta: bool, guided: bool):
    """(per-image rows, the `worst` lowest as (-dice, id, level map), seconds): Dice and pixel
    accuracy at cuts[0], Dice at cuts[1] too, of the members' mean map."""
    from carvana.inference import predict_levels

    pconfig = PredictConfig(batch_size=batch_size, workers=2, tta=tta, guided=guided)
    items = ((f"{i}.jpg", data.read_train_bytes(i)) for i in ids)
    began = time.perf_counter()
    rows, lowest = [], []  # lowest: a heap of the `worst` kept
    for name, levels in predict_levels(members, items, pconfig):
        image_id = name[: -len(".jpg")]
        if levels is None:
            raise DataError(f"{data.train.where(name)}: not a readable JPEG image")
        dice, accuracy = image_scores(levels, true_mask(data, image_id, levels.shape), cuts)
        rows.append({"id": image_id, "dice": float(dice[0]), "accuracy": float(accuracy[0])})
        rows[-1]["dice_at_0.5"] = float(dice[1])
        if worst > 0:
            heapq.heappush(lowest, (-float(dice[0]), image_id, levels))
            if len(lowest) > worst:
                heapq.heappop(lowest)
    return rows, lowest, time.perf_counter() - began


def _panels(data, out: Path, lowest: list, cut: int) -> list[dict]:
    for stale in out.glob("worst_*.png"):  # panels of an earlier evaluation into this folder
        stale.unlink()
    panels = []
    for rank, (neg, image_id, levels) in enumerate(sorted(lowest, reverse=True), 1):
        path = out / f"worst_{rank:02d}_{image_id}.png"
        image, true = data.read_pair(image_id)
        pred = (levels > cut).astype(np.uint8)
        save_panel(image, true, pred, f"{image_id}: Dice {-neg:.4f}", path)
        panels.append({"id": image_id, "dice": -neg, "panel": path.name})
    return panels


def _per_angle(rows: list[dict]) -> dict:
    per_angle = {}
    for angle in ANGLES:
        scores = [r["dice"] for r in rows if angle_of(r["id"]) == angle]
        if scores:
            per_angle[angle] = {"dice": float(np.mean(scores)), "images": len(scores)}
    return per_angle


def evaluate(
    data,
    run_dir,
    out: Path,
    worst: int = 6,
    batch_size: int = 16,
    threshold: float | None = None,
    tta: bool = False,
    guided: bool = True,
) -> dict:
    """Full-resolution mean Dice and pixel accuracy of a run (or of the ensemble of a list of
    runs: their maps averaged) on its validation cars, at `threshold` (`tta`: with flips) (None: the run's tuned
    one, or the mean of the runs'); writes out/report.md, out/worst_*.png and
    out/evaluation.json (and RUN_DIR/evaluation.json for one run). Returns dice, accuracy, report,
    per_angle, images, worst, threshold, dice_at_0.5."""
    from carvana.models import count_params, load_model

    run_dirs = [Path(run_dir)] if isinstance(run_dir, (str, Path)) else list(map(Path, run_dir))
    out = Path(out)
    ids = validation_ids(data, run_dirs)
    configs = [TrainConfig.load(r) for r in run_dirs]
    members = [(load_model(r), c) for r, c in zip(run_dirs, configs, strict=True)]
    threshold, source = run_threshold(run_dirs, threshold)
    out.mkdir(parents=True, exist_ok=True)
    cuts = [len(members) * level(t) for t in (threshold, DEFAULT_THRESHOLD)]
    rows, lowest, seconds = _score_images(data, members, ids, cuts, batch_size, worst, tta, guided)
    report = out / REPORT_FILE
    result = {
        "run": str(run_dirs[0]) if len(run_dirs) == 1 else [str(r) for r in run_dirs],
        "model": "+".join(c.model for c in configs),
        "dice": float(np.mean([r["dice"] for r in rows])),
        "accuracy": float(np.mean([r["accuracy"] for r in rows])),
        "dice_at_0.5": float(np.mean([r.pop("dice_at_0.5") for r in rows])),
        "images": len(rows),
        "cars": len({car_id(i) for i in ids}),
        "threshold": threshold,
        "threshold_source": source,
        "tta": tta,
        "guided": guided,
        "original_size": list(configs[0].original_size),
        "image_size": list(configs[0].image_size),
        "params": sum(count_params(m) for m, _ in members),
        "members": [
            {"run": str(r), "model": c.model, "image_size": list(c.image_size)}
            for r, c in zip(run_dirs, configs, strict=True)
        ],
        "per_angle": _per_angle(rows),
        "worst": _panels(data, out, lowest, cuts[0]),
        "seconds": round(seconds, 2),
        "report": str(report),
    }
    report.write_text(_report(result, rows))
    # An ensemble's figures describe no one run: only its report folder gets them.
    targets = [out] if len(run_dirs) > 1 else [out, run_dirs[0]]
    for target in (folder / EVALUATION_FILE for folder in targets):
        target.write_text(json.dumps({**result, "per_image": rows}, indent=1) + "\n")
    return {**result, "report": report}


def _report(result: dict, rows: list[dict]) -> str:
    h, w = result["original_size"]
    models = ", ".join(
        f"`{m['model']}` at {m['image_size'][0]}x{m['image_size'][1]}" for m in result["members"]
    )
    what = "Model" if len(result["members"]) == 1 else "Ensemble (mean of the maps) of"
    lines = [
        f"# Evaluation of `{result['run']}`",
        "",
        f"{what} {models} ({result['params']:,} parameters), probabilities upsampled to "
        f"{h}x{w} (cv2 bilinear) and thresholded at {result['threshold']} "
        f"({result['threshold_source']}); {result['images']} images of {result['cars']} "
        f"validation car(s), {result['seconds']:.1f} s.",
        "",
        f"- **Mean Dice at full resolution: {result['dice']:.5f}**",
        f"- Mean Dice at threshold 0.5: {result['dice_at_0.5']:.5f}",
        f"- Pixel accuracy: {result['accuracy']:.5f}",
        f"- Lowest image Dice: {min(r['dice'] for r in rows):.5f}",
        "",
        "## Dice per angle",
        "",
        markdown_table(
            ["angle", "mean Dice", "images"],
            [[a, f"{v['dice']:.5f}", v["images"]] for a, v in result["per_angle"].items()],
        ),
        "",
    ]
    if result["worst"]:
        lines += ["## Worst images", "", "Input / true mask / predicted mask / errors.", ""]
        for item in result["worst"]:
            lines += [f"### {item['id']}: Dice {item['dice']:.5f}", "", f"![]({item['panel']})", ""]
    return "\n".join(lines)


def epochs_to(history: list[dict], target: float, key: str = "val_dice") -> int | None:
    """First epoch whose `key` reached `target`, or None."""
    for row in history:
        if row.get(key, -1.0) >= target:
            return int(row["epoch"])
    return None


def compare(run_dirs: list[Path], out: Path | None = None, target: float = TARGET_DICE) -> str:
    """Markdown table of runs: model, full-resolution Dice, epochs to a validation Dice target,
    seconds per epoch, parameters; written to `out` too when given."""
    from carvana.train import HISTORY_FILE, read_history

    rows = []
    for run_dir in map(Path, run_dirs):
        config = TrainConfig.load(run_dir)
        history = read_history(run_dir / HISTORY_FILE)
        key = "val_dice" if any("val_dice" in r for r in history) else "dice"
        evaluation_path = run_dir / EVALUATION_FILE
        evaluation = json.loads(evaluation_path.read_text()) if evaluation_path.exists() else {}
        params = evaluation.get("params")
        if params is None:
            from carvana.models import count_params, load_model

            params = count_params(load_model(run_dir))
        reached = epochs_to(history, target, key)
        best = max((r.get(key, float("nan")) for r in history), default=float("nan"))
        seconds = [r["seconds"] for r in history if "seconds" in r]
        rows.append(
            [
                run_dir.name,
                config.model,
                f"{evaluation['dice']:.5f}" if "dice" in evaluation else "not evaluated",
                f"{evaluation['accuracy']:.5f}" if "accuracy" in evaluation else "-",
                f"{best:.4f}",
                str(reached) if reached is not None else f"not reached in {len(history)}",
                f"{np.mean(seconds):.1f}" if seconds else "-",
                f"{params:,}",
            ]
        )
    header = [
        "run",
        "model",
        "full-res Dice",
        "pixel accuracy",
        "best val Dice (model res.)",
        f"epochs to val Dice >= {target}",
        "s/epoch",
        "parameters",
    ]
    table = markdown_table(header, rows)
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(f"# Comparison of {len(rows)} runs\n\n{table}\n")
    return table
