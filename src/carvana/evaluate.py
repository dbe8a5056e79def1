"""Evaluation at the competition's resolution, and a comparison table of several runs.

`evaluate` predicts a run's validation cars with the same streaming engine as the test-set
prediction (carvana.predict.predict_masks: model-size probabilities upsampled with cv2
INTER_LINEAR to the original size, thresholded at 0.5), scores each image with rle.dice, and
writes a markdown report with Dice per angle and panels of the worst images; the figures also
go to RUN_DIR/evaluation.json, which `compare` reads.
"""

from __future__ import annotations

import heapq
import json
import time
from pathlib import Path

import numpy as np

from carvana import rle
from carvana.config import PredictConfig, TrainConfig
from carvana.files import ANGLES, DataError, car_id
from carvana.files import angle as angle_of
from carvana.markdown import markdown_table

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


def evaluate(data, run_dir: Path, out: Path, worst: int = 6, batch_size: int = 16) -> dict:
    """Full-resolution mean Dice and pixel accuracy of a run on its validation cars; writes
    out/report.md, out/worst_*.png and run_dir/evaluation.json. Returns dice, accuracy, report,
    per_angle, images, worst."""
    from carvana.inference import predict_masks
    from carvana.models import count_params, load_model

    run_dir, out = Path(run_dir), Path(out)
    config = TrainConfig.load(run_dir)
    if not config.val_cars:
        raise ValueError(
            f"{run_dir / 'config.json'}: the run has no validation cars (val_fraction 0); "
            "train with --val-fraction > 0 to evaluate"
        )
    cars = set(config.val_cars)
    ids = [i for i in data.train_ids() if car_id(i) in cars]
    missing = cars - {car_id(i) for i in ids}
    if missing:
        raise DataError(
            f"{data.root}: validation car(s) of {run_dir} not in this dataset: "
            f"{', '.join(sorted(missing)[:5])}"
        )
    model = load_model(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    pconfig = PredictConfig(batch_size=batch_size, workers=2)
    items = ((f"{i}.jpg", data.read_train_bytes(i)) for i in ids)

    began = time.perf_counter()
    rows, lowest = [], []  # lowest: heap of (-dice, id, predicted mask), the `worst` kept
    for name, pred in predict_masks(model, config, items, pconfig):
        image_id = name[: -len(".jpg")]
        if pred is None:
            raise DataError(f"{data.train.where(name)}: not a readable JPEG image")
        true = data.read_mask(image_id)
        if true.shape != pred.shape:
            raise DataError(
                f"{data.masks.where(data.mask_name(image_id))}: mask is {true.shape[1]}x"
                f"{true.shape[0]} but its image is {pred.shape[1]}x{pred.shape[0]}"
            )
        dice = rle.dice(pred, true)
        rows.append({"id": image_id, "dice": dice, "accuracy": float(np.mean(pred == true))})
        if worst > 0:
            heapq.heappush(lowest, (-dice, image_id, pred))
            if len(lowest) > worst:
                heapq.heappop(lowest)
    seconds = time.perf_counter() - began

    dice = float(np.mean([r["dice"] for r in rows]))
    accuracy = float(np.mean([r["accuracy"] for r in rows]))
    per_angle = {}
    for angle in ANGLES:
        scores = [r["dice"] for r in rows if angle_of(r["id"]) == angle]
        if scores:
            per_angle[angle] = {"dice": float(np.mean(scores)), "images": len(scores)}

    for stale in out.glob("worst_*.png"):  # panels of an earlier evaluation into this folder
        stale.unlink()
    panels = []
    for rank, (neg, image_id, pred) in enumerate(sorted(lowest, reverse=True), 1):
        path = out / f"worst_{rank:02d}_{image_id}.png"
        image, true = data.read_pair(image_id)
        save_panel(image, true, pred, f"{image_id}: Dice {-neg:.4f}", path)
        panels.append({"id": image_id, "dice": -neg, "panel": path.name})

    report = out / REPORT_FILE
    result = {
        "run": str(run_dir),
        "model": config.model,
        "dice": dice,
        "accuracy": accuracy,
        "images": len(rows),
        "cars": len(cars),
        "threshold": pconfig.threshold,
        "original_size": list(config.original_size),
        "image_size": list(config.image_size),
        "params": count_params(model),
        "per_angle": per_angle,
        "worst": panels,
        "seconds": round(seconds, 2),
        "report": str(report),
    }
    report.write_text(_report(result, rows))
    for target in (run_dir / EVALUATION_FILE, out / EVALUATION_FILE):
        target.write_text(json.dumps({**result, "per_image": rows}, indent=1) + "\n")
    return {**result, "report": report}


def _report(result: dict, rows: list[dict]) -> str:
    h, w = result["original_size"]
    sh, sw = result["image_size"]
    lines = [
        f"# Evaluation of `{result['run']}`",
        "",
        f"Model `{result['model']}` ({result['params']:,} parameters), input {sh}x{sw}, "
        f"probabilities upsampled to {h}x{w} (cv2 bilinear) and thresholded at "
        f"{result['threshold']}; {result['images']} images of {result['cars']} validation "
        f"car(s), {result['seconds']:.1f} s.",
        "",
        f"- **Mean Dice at full resolution: {result['dice']:.5f}**",
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
