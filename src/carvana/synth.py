"""Writing the synthetic Kaggle-shaped Carvana dataset: folders or zips, CSVs and metadata.

The cars themselves are drawn by `carvana.synth_car`; this module picks car ids, renders every
train car at all 16 angles and the test cars at the first angles, and writes JPEGs, GIF masks,
train_masks.csv, metadata.csv and sample_submission.csv in Kaggle's layout. The same seed gives
byte-identical files. No TensorFlow here.
"""

from __future__ import annotations

import io
import math
import shutil
import zipfile
from pathlib import Path

import numpy as np

from carvana import rle
from carvana.files import ANGLES
from carvana.synth_car import Car, Renderer, render_car

__all__ = ["MARKER", "render_car", "synthesize"]

MARKER = "SYNTHETIC.md"
ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed member timestamps: byte-identical zips for a seed
JPEG_QUALITY = 90
OUTPUTS = (
    "train",
    "train_masks",
    "test",
    "train_masks.csv",
    "metadata.csv",
    "sample_submission.csv",
)
MAKES = {  # make -> models; years and trims drawn separately
    "Acura": ("MDX", "TLX", "RDX"),
    "Audi": ("A4", "Q5", "A6"),
    "BMW": ("3 Series", "X3", "5 Series"),
    "Chevrolet": ("Malibu", "Equinox", "Cruze", "Tahoe"),
    "Ford": ("Fusion", "Escape", "Focus", "Explorer"),
    "Honda": ("Civic", "Accord", "CR-V"),
    "Hyundai": ("Elantra", "Sonata", "Santa Fe"),
    "Jeep": ("Grand Cherokee", "Cherokee", "Wrangler"),
    "Nissan": ("Altima", "Rogue", "Sentra"),
    "Toyota": ("Camry", "Corolla", "RAV4", "Highlander"),
    "Volkswagen": ("Jetta", "Passat", "Tiguan"),
}
TRIMS1 = ("Base", "LX", "EX", "SE", "SEL", "Sport", "Limited", "Premium", "Touring", "S")
TRIMS2 = ("", "", "w/Tech Pkg", "FWD", "AWD", "4WD", "Hybrid", "Turbo")


def _jpeg(image: np.ndarray) -> bytes:
    """An RGB uint8 image as Kaggle-like JPEG bytes."""
    import cv2

    ok, data = cv2.imencode(".jpg", image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise RuntimeError("OpenCV could not encode a JPEG")
    return data.tobytes()


def _gif(mask: np.ndarray) -> bytes:
    """A 0/1 mask as a black/white palette GIF, like Kaggle's train_masks."""
    from PIL import Image

    image = Image.fromarray(mask, mode="P")
    image.putpalette([0, 0, 0, 255, 255, 255])
    buffer = io.BytesIO()
    image.save(buffer, format="GIF", optimize=False)
    return buffer.getvalue()


class _Writer:
    """Writes each output either as a folder/CSV or as Kaggle's zip of it."""

    def __init__(self, out: Path, zipped: bool):
        self.out, self.zipped = out, zipped
        self._zips: dict[str, zipfile.ZipFile] = {}

    def _member(self, archive: zipfile.ZipFile, name: str, data: bytes, compress: int) -> None:
        info = zipfile.ZipInfo(name, date_time=ZIP_TIME)
        info.compress_type = compress
        info.external_attr = (0o40755 << 16) | 0x10 if name.endswith("/") else 0o644 << 16
        archive.writestr(info, data)

    def file(self, folder: str, name: str, data: bytes) -> None:
        """One image or mask, into folder/ or folder.zip as folder/name."""
        if not self.zipped:
            (self.out / folder).mkdir(exist_ok=True)
            (self.out / folder / name).write_bytes(data)
            return
        archive = self._zips.get(folder)
        if archive is None:
            archive = zipfile.ZipFile(self.out / f"{folder}.zip", "w")
            self._member(archive, f"{folder}/", b"", zipfile.ZIP_STORED)
            self._zips[folder] = archive
        self._member(archive, f"{folder}/{name}", data, zipfile.ZIP_STORED)

    def csv(self, name: str, text: str) -> None:
        """A CSV file, or name.zip holding it."""
        data = text.encode()
        if not self.zipped:
            (self.out / name).write_bytes(data)
            return
        with zipfile.ZipFile(self.out / f"{name}.zip", "w") as archive:
            self._member(archive, name, data, zipfile.ZIP_DEFLATED)

    def close(self) -> None:
        """Finish the zips."""
        for archive in self._zips.values():
            archive.close()
        self._zips.clear()


def _prepare(out: Path) -> None:
    """Make `out`, refusing a non-empty folder that synth did not make; clear a previous run."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out}: exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    if any(out.iterdir()) and not (out / MARKER).is_file():
        raise FileExistsError(
            f"{out}: folder is not empty and was not made by `carvana synth`; "
            "choose a new or empty folder"
        )
    for name in OUTPUTS:
        for path in (out / name, out / f"{name}.zip"):
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()


def _car_ids(rng: np.random.Generator, n: int, taken: set[str]) -> list[str]:
    """`n` new 12-hex-digit car ids not in `taken` (which they are added to)."""
    ids: list[str] = []
    while len(ids) < n:
        new = rng.bytes(6).hex()
        if new not in taken:
            taken.add(new)
            ids.append(new)
    return ids


def synthesize(
    out,
    train_cars: int = 4,
    test_images: int = 16,
    size: tuple[int, int] = rle.ORIGINAL_SHAPE,
    seed: int = 0,
    zipped: bool = False,
) -> Path:
    """Write a synthetic Carvana dataset (folders, or Kaggle's zips) to `out`; return `out`."""
    h, w = (int(v) for v in size)
    if h < 16 or w < 16:
        raise ValueError(f"image size must be at least 16x16, got {w}x{h} (WxH)")
    if train_cars < 1 or test_images < 0:
        raise ValueError(
            f"need at least 1 training car and no negative test count, got "
            f"train_cars={train_cars}, test_images={test_images}"
        )
    out = Path(out)
    _prepare(out)
    (out / MARKER).write_text(
        f"# Synthetic Carvana data\n\nWritten by `carvana synth` (seed {seed}, {w}x{h}, "
        f"{train_cars} training cars, {test_images} test images). Not real data.\n"
    )
    rng = np.random.default_rng(seed)
    taken: set[str] = set()
    train_ids = sorted(_car_ids(rng, train_cars, taken))
    test_ids = sorted(_car_ids(rng, math.ceil(test_images / len(ANGLES)), taken))
    renderer = Renderer((h, w))
    writer = _Writer(out, zipped)
    try:
        # The rng is shared and drawn in this order (train cars, test cars, metadata), which
        # is what makes a seed reproduce the same bytes.
        _write_train(writer, renderer, rng, train_ids)
        _write_test(writer, renderer, rng, test_ids, test_images)
        writer.csv("metadata.csv", _metadata(rng, sorted(train_ids + test_ids)))
    finally:
        writer.close()
    return out


def _write_train(writer: _Writer, renderer: Renderer, rng: np.random.Generator, ids) -> None:
    """Every train car at all 16 angles: JPEGs, GIF masks and train_masks.csv."""
    rows = ["img,rle_mask"]
    for car_id in ids:
        car = Car(rng)
        for angle in ANGLES:
            image, mask = renderer.render(car, int(angle))
            name = f"{car_id}_{angle}"
            writer.file("train", f"{name}.jpg", _jpeg(image))
            writer.file("train_masks", f"{name}_mask.gif", _gif(mask))
            rows.append(f"{name}.jpg,{rle.encode(mask)}")
    writer.csv("train_masks.csv", "\n".join(rows) + "\n")


def _write_test(
    writer: _Writer, renderer: Renderer, rng: np.random.Generator, ids, count: int
) -> None:
    """`count` test JPEGs (each car's angles in order, the last car cut short) and the sample."""
    names: list[str] = []
    for car_id in ids:
        car = Car(rng)
        for angle in ANGLES[: count - len(names)]:
            image, _ = renderer.render(car, int(angle))
            names.append(f"{car_id}_{angle}.jpg")
            writer.file("test", names[-1], _jpeg(image))
    # Kaggle's sample submission gives every image the same placeholder run.
    writer.csv("sample_submission.csv", "img,rle_mask\n" + "".join(f"{n},1 1\n" for n in names))


def _metadata(rng: np.random.Generator, ids: list[str]) -> str:
    """metadata.csv text: id,year,make,model,trim1,trim2 with plausible values."""
    lines = ["id,year,make,model,trim1,trim2"]
    makes = sorted(MAKES)
    for car_id in ids:
        make = makes[rng.integers(len(makes))]
        model = MAKES[make][rng.integers(len(MAKES[make]))]
        year = int(rng.integers(2007, 2018))
        trim1 = TRIMS1[rng.integers(len(TRIMS1))]
        trim2 = TRIMS2[rng.integers(len(TRIMS2))]
        lines.append(f"{car_id},{year},{make},{model},{trim1},{trim2}")
    return "\n".join(lines) + "\n"
