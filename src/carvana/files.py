"""The competition's files: where they are (Kaggle's zips or unzipped folders), image ids,
the merged table, the split by car. Single files are read through `carvana.archive`. No
TensorFlow here.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from carvana import rle
from carvana.archive import (  # noqa: F401  (DataError and the decoders are part of this API)
    ZIP_ERRORS,
    DataError,
    FileStore,
    decode_jpeg,
    decode_mask,
    jpeg_size,
    read_csv,
)

COMPETITION = "carvana-image-masking-challenge"
ANGLES = tuple(f"{i:02d}" for i in range(1, 17))
TABLE_COLUMNS = ["id", "img", "mask_file", "rle_mask", "year", "make", "model", "trim1", "trim2"]


def kaggle_root() -> Path:
    """The Kaggle root (`/kaggle`), overridable with CARVANA_KAGGLE_ROOT (tests, local runs)."""
    return Path(os.environ.get("CARVANA_KAGGLE_ROOT", "/kaggle"))


def competition_dir() -> Path:
    """Where a kernel sees the competition data."""
    return kaggle_root() / "input" / COMPETITION


def working_dir() -> Path:
    """Where a kernel writes its outputs."""
    return kaggle_root() / "working"


def default_data_dir() -> Path | None:
    """The kernel's competition folder when it exists, else None (the user must pass --data)."""
    path = competition_dir()
    return path if path.is_dir() else None


def car_id(image_id: str) -> str:
    """Car id of an image id or file name: '0cdf5b5d0ce1_01.jpg' -> '0cdf5b5d0ce1'."""
    return Path(image_id).name.rsplit("_", 1)[0]


def angle(image_id: str) -> str:
    """Turntable angle '01'..'16' of an image id or file name: '0cdf5b5d0ce1_01.jpg' -> '01'."""
    return Path(image_id).name.rsplit("_", 1)[-1][:2]


def shuffled(items: list, seed: int) -> list:
    """The items in a deterministic pseudo-random order (the one split, subset and shuffle use)."""
    return [items[i] for i in np.random.default_rng(seed).permutation(len(items))]


def spread(items: list, count: int) -> list:
    """`count` items evenly spaced through the list, first included (all when count is 0 or
    not smaller than the list)."""
    if count <= 0 or count >= len(items):
        return list(items)
    return [items[i * len(items) // count] for i in range(count)]


def atomic_write(path: str | Path, write: Callable[[str], object]) -> Path:
    """Call write(tmp_path) beside `path`, then rename: readers never see a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    try:
        write(str(tmp))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def image_id(file_name: str) -> str:
    """Image id of a file name: '0cdf5b5d0ce1_01.jpg' -> '0cdf5b5d0ce1_01'."""
    name = Path(file_name).name
    return name[: -len("_mask.gif")] if name.endswith("_mask.gif") else name.rsplit(".", 1)[0]


class CarvanaData:
    """The competition files under one folder, each found as a zip or as a folder/CSV."""

    def __init__(self, root: str | Path, hq: bool = False):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"{self.root}: data folder does not exist")
        prefix = ("train_hq", "test_hq") if hq else ("train", "test")
        self.train = self._store(prefix[0], ".jpg")
        self.masks = self._store("train_masks", ".gif")
        self.test = self._store(prefix[1], ".jpg")
        self.train_masks_csv_path = self._csv("train_masks.csv")
        self.metadata_path = self._csv("metadata.csv")
        self.sample_submission_path = self._csv("sample_submission.csv")
        if not any(
            (
                self.train,
                self.test,
                self.masks,
                self.train_masks_csv_path,
                self.sample_submission_path,
            )
        ):
            raise DataError(
                f"{self.root}: no Carvana data found; looked for {prefix[0]}.zip or {prefix[0]}/, "
                f"train_masks.zip or train_masks/, {prefix[1]}.zip or {prefix[1]}/, "
                "train_masks.csv[.zip], metadata.csv[.zip], sample_submission.csv[.zip]"
            )

    def __repr__(self) -> str:
        return f"CarvanaData({str(self.root)!r})"

    def _store(self, name: str, suffix: str) -> FileStore | None:
        folder, archive = self.root / name, self.root / f"{name}.zip"
        if folder.is_dir():
            return FileStore(folder, suffix)
        if archive.is_file():
            return FileStore(archive, suffix)
        return None

    def _csv(self, name: str) -> Path | None:
        for path in (self.root / name, self.root / f"{name}.zip"):
            if path.is_file():
                return path
        return None

    def _need(self, store, what: str):
        if store is None:
            raise DataError(f"{self.root}: no {what} found (looked for {what}.zip and {what}/)")
        return store

    # -- listings -------------------------------------------------------------------------
    def train_ids(self) -> list[str]:
        """Sorted image ids of the training images ('<car>_NN')."""
        return [image_id(n) for n in self._need(self.train, "train").names()]

    def test_names(self) -> list[str]:
        """Sorted file names of the test images ('<id>.jpg'), as the submission's img column."""
        return self._need(self.test, "test").names()

    def image_size(self) -> tuple[int, int]:
        """(height, width) of the images, read from the first train (else test) JPEG header."""
        store = self.train or self._need(self.test, "test")
        if not store.names():
            raise DataError(f"{store.path}: no {store.suffix} files")
        first = store.names()[0]
        return jpeg_size(store.read(first), store.where(first))

    # -- single files -----------------------------------------------------------------------
    def read_train_bytes(self, image_id: str) -> bytes:
        """Raw JPEG bytes of a training image."""
        return self._need(self.train, "train").read(f"{image_id}.jpg")

    def read_test_bytes(self, name: str) -> bytes:
        """Raw JPEG bytes of a test image, by file name."""
        return self._need(self.test, "test").read(name)

    def read_image(self, image_id: str) -> np.ndarray:
        """A training image as RGB uint8 (height, width, 3)."""
        where = self.train.where(f"{image_id}.jpg") if self.train else image_id
        return decode_jpeg(self.read_train_bytes(image_id), where)

    def read_test_image(self, name: str) -> np.ndarray:
        """A test image as RGB uint8 (height, width, 3), by file name."""
        return decode_jpeg(self.read_test_bytes(name), self.test.where(name))

    def mask_name(self, image_id: str) -> str:
        """File name of a training image's mask."""
        return f"{image_id}_mask.gif"

    def read_mask(self, image_id: str) -> np.ndarray:
        """A training mask as uint8 (height, width) of 0/1."""
        masks = self._need(self.masks, "train_masks")
        name = self.mask_name(image_id)
        if name not in masks:
            raise DataError(
                f"{self.train.where(image_id + '.jpg') if self.train else image_id}: "
                f"image has no mask ({masks.where(name)} is missing)"
            )
        return decode_mask(masks.read(name), masks.where(name))

    def read_pair(self, image_id: str) -> tuple[np.ndarray, np.ndarray]:
        """A training image and its mask, checked to have the same size."""
        image, mask = self.read_image(image_id), self.read_mask(image_id)
        if image.shape[:2] != mask.shape:
            raise DataError(
                f"{self.masks.where(self.mask_name(image_id))}: mask is {mask.shape[1]}x"
                f"{mask.shape[0]} but its image is {image.shape[1]}x{image.shape[0]}"
            )
        return image, mask

    # -- tables -----------------------------------------------------------------------------
    def train_masks_table(self, validate: bool = True):
        """train_masks.csv as a DataFrame (img, rle_mask); every RLE checked, bad rows named."""

        path = self.train_masks_csv_path
        if path is None:
            raise DataError(f"{self.root}: no train_masks.csv or train_masks.csv.zip")
        table = read_csv(path, dtype={"img": str, "rle_mask": str}, keep_default_na=False)
        if list(table.columns[:2]) != ["img", "rle_mask"]:
            raise DataError(f"{path}: header must be img,rle_mask, got {','.join(table.columns)}")
        if validate and len(table):
            shape = self.image_size() if (self.train or self.test) else rle.ORIGINAL_SHAPE
            for row, value in enumerate(table["rle_mask"].tolist()):
                try:
                    rle.validate(value, shape)
                except rle.RLEError as err:
                    # +2: the header is line 1 and rows count from 0
                    raise DataError(
                        f"{path}: line {row + 2} ({table['img'].iat[row]}): bad RLE: {err}"
                    ) from None
        return table

    def metadata(self):
        """metadata.csv as a DataFrame, or None with a warning when it is missing."""

        if self.metadata_path is None:
            warnings.warn(
                f"{self.root}: no metadata.csv; year/make/model columns will be empty",
                stacklevel=2,
            )
            return None
        return read_csv(self.metadata_path, dtype={"id": str})

    def sample_submission(self):
        """sample_submission.csv as a DataFrame (img, rle_mask)."""

        if self.sample_submission_path is None:
            raise DataError(f"{self.root}: no sample_submission.csv or sample_submission.csv.zip")
        return read_csv(self.sample_submission_path, dtype={"img": str}, keep_default_na=False)

    def merged_table(self):
        """One row per training image: id, img, mask_file, rle_mask, year, make, model, trims."""
        import pandas as pd

        names = self._need(self.train, "train").names()
        masks = self._need(self.masks, "train_masks")
        table = pd.DataFrame({"img": names})
        table["id"] = table["img"].map(car_id)
        table["mask_file"] = [self.mask_name(image_id(n)) for n in names]
        missing = [m for m in table["mask_file"] if m not in masks]
        if missing:
            raise DataError(
                f"{len(missing)} training image(s) without a mask, e.g. "
                f"{self.train.where(missing[0][: -len('_mask.gif')] + '.jpg')} "
                f"(no {masks.where(missing[0])})"
            )
        if self.train_masks_csv_path is not None:
            table = table.merge(self.train_masks_table(), on="img", how="left")
        else:
            table["rle_mask"] = None
        meta = self.metadata()
        if meta is not None:
            table = table.merge(meta, on="id", how="left")
        for column in TABLE_COLUMNS:
            if column not in table:
                table[column] = None
        return table[TABLE_COLUMNS]


def split_by_car(
    image_ids: list[str], val_fraction: float = 0.2, seed: int = 42
) -> tuple[list[str], list[str]]:
    """Deterministic train/validation split of image ids with all angles of a car on one side."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    cars = shuffled(sorted({car_id(i) for i in image_ids}), seed)
    n_val = int(round(len(cars) * val_fraction))
    if val_fraction > 0 and len(cars) > 1:
        n_val = min(max(n_val, 1), len(cars) - 1)
    val_cars = set(cars[:n_val])
    train = [i for i in image_ids if car_id(i) not in val_cars]
    val = [i for i in image_ids if car_id(i) in val_cars]
    return train, val
