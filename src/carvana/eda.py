"""Exploratory report on the competition data: a markdown file with PNG figures.

Figures are drawn on matplotlib `Figure` objects with the Agg canvas, never through pyplot, so
no display is needed and no global backend is changed. No TensorFlow here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from carvana import rle
from carvana.files import ANGLES, CarvanaData, angle, car_id, image_id
from carvana.markdown import frame_table

HEAD_ROWS = 5
RLE_PREVIEW = 40  # characters of an RLE string shown in the table head
OVERLAY = np.array([255, 0, 140], dtype=np.float32)  # mask colour over the samples
GRID_WIDTH = 480  # sample thumbnails are downscaled to at most this many pixels wide


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _bar_chart(counts, title: str, xlabel: str, path: Path, horizontal: bool = False) -> None:
    fig = _figure(8, max(3.0, 0.28 * len(counts) + 1) if horizontal else 3.5)
    ax = fig.add_subplot()
    labels = [str(k) for k in counts.index]
    if horizontal:
        ax.barh(labels[::-1], counts.values[::-1], color="#4c72b0")
        ax.set_xlabel("cars")
        ax.set_ylabel(xlabel)
    else:
        ax.bar(labels, counts.values, color="#4c72b0")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("cars")
        ax.tick_params(axis="x", labelrotation=90 if len(labels) > 12 else 0)
    from matplotlib.ticker import MaxNLocator

    (ax.xaxis if horizontal else ax.yaxis).set_major_locator(MaxNLocator(integer=True))
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)


def mask_coverage(data: CarvanaData, table) -> np.ndarray:
    """Fraction of car pixels per row of the merged table; RLE when present, else the GIFs."""
    from tqdm.auto import tqdm

    h, w = data.image_size()
    codes = table["rle_mask"].tolist()
    from_csv = sum(isinstance(c, str) for c in codes)
    source = "train_masks.csv" if from_csv == len(codes) else "mask GIFs"
    coverage = np.empty(len(codes))
    rows = zip(table["img"].tolist(), codes, strict=True)
    for i, (img, code) in enumerate(
        tqdm(rows, total=len(codes), desc=f"coverage from {source}", unit="mask")
    ):
        if isinstance(code, str):
            # The sum of the run lengths, without decoding; validate bounds every value first.
            coverage[i] = int(rle.validate(code, (h, w))[:, 1].sum()) / (h * w)
        else:
            mask = data.read_mask(image_id(img))
            coverage[i] = float(np.count_nonzero(mask)) / mask.size
    return coverage


def _coverage_section(table, coverage, out: Path) -> list[str]:
    import pandas as pd

    frame = pd.DataFrame({"angle": table["img"].map(angle), "coverage": coverage})
    angles = sorted(frame["angle"].unique())
    fig = _figure(9, 4)
    ax = fig.add_subplot()
    ax.boxplot([frame.loc[frame["angle"] == a, "coverage"] for a in angles], showfliers=True)
    ax.set_xticks(range(1, len(angles) + 1), angles)
    ax.set_xlabel("angle")
    ax.set_ylabel("fraction of pixels that are car")
    ax.set_title("Car coverage per angle")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "coverage_by_angle.png")
    stats = frame.groupby("angle")["coverage"].agg(["count", "mean", "std", "min", "max"])
    stats = stats.reset_index().round(4)
    return [
        "## Car coverage",
        "",
        f"Fraction of mask pixels over {len(frame)} training masks: mean "
        f"{frame['coverage'].mean():.4f}, min {frame['coverage'].min():.4f}, "
        f"max {frame['coverage'].max():.4f}.",
        "",
        "![coverage per angle](coverage_by_angle.png)",
        "",
        frame_table(stats),
        "",
    ]


def _pick_samples(ids: list[str], samples: int) -> list[str]:
    """Up to `samples` image ids spread over the cars, each at a different angle."""
    by_car: dict[str, list[str]] = {}
    for i in ids:
        by_car.setdefault(car_id(i), []).append(i)
    cars = sorted(by_car)
    picked = []
    for k in range(min(samples, len(ids))):
        angles = by_car[cars[(k * len(cars)) // max(1, samples) % len(cars)]]
        wanted = ANGLES[(k * 3) % len(ANGLES)]
        match = [i for i in angles if i.endswith(f"_{wanted}")]
        choice = match[0] if match else angles[k % len(angles)]
        if choice not in picked:
            picked.append(choice)
    return picked


def _samples_section(data: CarvanaData, ids: list[str], out: Path) -> list[str]:
    import cv2

    if not ids:
        return []
    cols = min(4, len(ids))
    rows = -(-len(ids) // cols)
    h, w = data.image_size()
    fig = _figure(3.6 * cols, 3.6 * rows * h / w + 0.4 * rows)
    for k, sample in enumerate(ids):
        image, mask = data.read_pair(sample)
        scale = min(1.0, GRID_WIDTH / image.shape[1])
        if scale < 1.0:
            size = (round(image.shape[1] * scale), round(image.shape[0] * scale))
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
            mask = cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST)
        shown = image.astype(np.float32)
        on = mask.astype(bool)
        shown[on] = 0.7 * shown[on] + 0.3 * OVERLAY
        shown = shown.astype(np.uint8)
        # A solid outline shows where the mask's edge sits on the car's edge.
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(shown, contours, -1, tuple(int(c) for c in OVERLAY), 1)
        ax = fig.add_subplot(rows, cols, k + 1)
        ax.imshow(shown)
        ax.set_title(f"{sample}  ({on.mean():.1%} car)", fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out / "samples.png")
    return [
        "## Samples",
        "",
        "Training images with their mask overlaid in magenta (outline: the mask's edge).",
        "",
        "![samples with masks](samples.png)",
        "",
    ]


def _metadata_section(data: CarvanaData, table, out: Path) -> list[str]:
    lines = ["## Makes and years", ""]
    cars = table.drop_duplicates("id")
    if data.metadata_path is None:
        return lines + [f"No metadata.csv in {data.root}: makes and years are unknown.", ""]
    if cars["make"].isna().all():
        return lines + [f"{data.metadata_path} has no rows for the training cars.", ""]
    makes = cars["make"].fillna("(unknown)").value_counts()
    years = cars["year"].dropna().astype(int).value_counts().sort_index()
    _bar_chart(makes.head(30), "Training cars per make", "make", out / "makes.png", True)
    _bar_chart(years, "Training cars per model year", "year", out / "years.png")
    import pandas as pd

    make_table = pd.DataFrame({"make": makes.index, "cars": makes.values})
    year_table = pd.DataFrame({"year": years.index, "cars": years.values})
    return lines + [
        f"{len(makes)} makes and {len(years)} model years over {len(cars)} training cars"
        f" (years {years.index.min()}-{years.index.max()}).",
        "",
        "![makes](makes.png)",
        "",
        frame_table(make_table),
        "",
        "![years](years.png)",
        "",
        frame_table(year_table),
        "",
    ]


def run_eda(data: CarvanaData, out: Path, samples: int = 8) -> Path:
    """Write report.md and its PNG figures about `data` into `out`; return the report's path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table = data.merged_table()  # warns when metadata.csv is missing; the report says so too
    h, w = data.image_size()
    ids = [image_id(i) for i in table["img"]]
    per_car = table.groupby("id").size()
    angles = sorted(table["img"].map(angle).unique())
    tests = len(data.test_names()) if data.test is not None else None
    head = table.head(HEAD_ROWS).copy()
    head["rle_mask"] = head["rle_mask"].map(
        lambda s: s if not isinstance(s, str) or len(s) <= RLE_PREVIEW else s[:RLE_PREVIEW] + "…"
    )
    lines = [
        "# Carvana data: exploratory report",
        "",
        f"Data: `{data.root}`",
        "",
        "## Counts",
        "",
        f"- cars: {len(per_car)} ({int((per_car == len(ANGLES)).sum())} with all "
        f"{len(ANGLES)} angles)",
        f"- training images: {len(table)}",
        f"- angles: {len(angles)} ({', '.join(angles)})",
        f"- test images: {tests if tests is not None else 'none (no test set in this folder)'}",
        f"- image size: {w} x {h} (width x height)",
        f"- train_masks.csv: {'yes' if data.train_masks_csv_path else 'no (masks read from GIFs)'}",
        "",
        "## Merged table (head)",
        "",
        frame_table(head),
        "",
    ]
    lines += _metadata_section(data, table, out)
    coverage = mask_coverage(data, table)
    lines += _coverage_section(table, coverage, out)
    import pandas as pd

    pd.DataFrame({"img": table["img"], "coverage": coverage.round(6)}).to_csv(
        out / "coverage.csv", index=False
    )
    lines += _samples_section(data, _pick_samples(ids, samples), out)
    report = out / "report.md"
    report.write_text("\n".join(lines))
    return report
