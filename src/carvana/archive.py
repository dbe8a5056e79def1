"""Reading single files from a zip archive or a folder, and decoding JPEG, GIF and CSV.

Members are read straight from the zips (nothing is extracted), one file at a time, so memory
stays bounded however large the archive. No TensorFlow here.
"""

from __future__ import annotations

import io
import os
import threading
import zipfile
import zlib
from functools import cached_property
from pathlib import Path

import numpy as np

# What a damaged zip raises: a cut central directory, a bad CRC, a cut or garbled deflate stream.
ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, OSError)


class DataError(ValueError):
    """Competition data that is missing or malformed; the message names the file or row."""


def _hidden(member: str) -> bool:
    """A macOS resource fork (`__MACOSX/`, `._x`), `.DS_Store` or other hidden file or folder."""
    return any(part.startswith(".") or part == "__MACOSX" for part in member.split("/"))


def _open_zip(path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except ZIP_ERRORS as err:
        raise DataError(
            f"{path}: not a readable zip archive (truncated or corrupt): {err}"
        ) from None


class FileStore:
    """A flat collection of files (one suffix) in a folder or a zip archive, read by base name.

    A zip's members count when they sit in the folder the zip is named after (`train.zip`:
    `train/x.jpg`, as Kaggle packs them) or at its root; hidden and macOS resource files never.
    """

    def __init__(self, path: Path, suffix: str):
        self.path = Path(path)
        self.suffix = suffix
        self.is_zip = self.path.suffix == ".zip"
        self.folder = self.path.stem  # train.zip -> train/, train_hq.zip -> train_hq/
        self._handle: tuple[int, zipfile.ZipFile] | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"FileStore({str(self.path)!r})"

    @cached_property
    def _members(self) -> dict[str, str]:
        if not self.is_zip:
            return {
                e.name: e.name
                for e in os.scandir(self.path)
                if e.name.endswith(self.suffix) and not _hidden(e.name) and e.is_file()
            }
        with _open_zip(self.path) as archive:
            found = archive.namelist()
        members: dict[str, str] = {}
        for member in found:
            folder, _, name = member.rpartition("/")
            if not name.endswith(self.suffix) or folder not in ("", self.folder) or _hidden(member):
                continue
            if name in members:
                raise DataError(
                    f"{self.path}: two members for one image: {members[name]} and {member}"
                )
            members[name] = member
        return members

    def names(self) -> list[str]:
        """Sorted base names of the files."""
        return sorted(self._members)

    def __contains__(self, name: str) -> bool:
        return name in self._members

    def _archive(self) -> zipfile.ZipFile:
        # One handle per process, shared by threads (ZipFile serialises member reads on its
        # own lock): tf.data runs generators on ever-new threads, and re-opening a 100k-member
        # zip re-parses its whole directory. A handle inherited through fork would share its
        # file offset with the parent, hence the pid.
        with self._lock:
            if self._handle is None or self._handle[0] != os.getpid():
                self._handle = (os.getpid(), _open_zip(self.path))
            return self._handle[1]

    def where(self, name: str) -> str:
        """Human-readable location of a member, for error messages."""
        return (
            f"{self.path}:{self._members.get(name, name)}" if self.is_zip else str(self.path / name)
        )

    def read(self, name: str) -> bytes:
        """Bytes of one file, by base name."""
        member = self._members.get(name)
        if member is None:
            raise DataError(f"{self.where(name)}: no such file")
        if self.is_zip:
            try:
                return self._archive().read(member)
            except ZIP_ERRORS as err:
                raise DataError(f"{self.where(name)}: cannot read from zip: {err}") from None
        return (self.path / member).read_bytes()


def decode_jpeg(data: bytes, where: str = "image") -> np.ndarray:
    """Decode JPEG bytes into an RGB uint8 array, or raise DataError naming `where`."""
    import cv2

    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data else None
    if image is None:
        raise DataError(f"{where}: not a readable JPEG image (corrupt or truncated)")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def decode_mask(data: bytes, where: str = "mask") -> np.ndarray:
    """Decode a GIF (or PNG) mask into a uint8 array of 0/1, or raise DataError naming `where`."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            mask = np.array(image.convert("L") if image.mode not in ("P", "L", "1") else image)
    except (UnidentifiedImageError, OSError) as err:
        raise DataError(f"{where}: not a readable mask image: {err}") from None
    mask = mask.astype(np.uint8)
    if mask.max(initial=0) > 1:  # np.unique only on failure: it sorts (20 ms at 1918x1280)
        values = np.unique(mask)
        raise DataError(f"{where}: mask values must be 0/1, found {values[:10].tolist()}")
    return mask


def jpeg_size(data: bytes, where: str = "image") -> tuple[int, int]:
    """(height, width) from a JPEG's header without decoding the pixels; DataError naming
    `where` when the header cannot be read or claims a size beyond PIL's decompression-bomb
    limit (~89 Mpx: a damaged header, not a photo)."""
    from PIL import Image, JpegImagePlugin

    try:
        # Not Image.open: its bomb check would raise before telling the size it saw.
        with JpegImagePlugin.JpegImageFile(io.BytesIO(data)) as image:
            width, height = image.size
    except (OSError, SyntaxError, ValueError) as err:
        raise DataError(
            f"{where}: not a readable JPEG header (corrupt or truncated): {err}"
        ) from None
    if width * height > (Image.MAX_IMAGE_PIXELS or 2**62):
        raise DataError(f"{where}: not a readable JPEG image: its header claims {width}x{height}")
    return height, width


def read_csv(path: Path, **kwargs):
    """A CSV file, plain or as the one file of a zip, as a DataFrame; DataError naming the file
    when it is empty, not CSV, or a damaged zip (a zip's macOS resource files are ignored)."""
    import pandas as pd

    try:
        if path.suffix != ".zip":
            return pd.read_csv(path, **kwargs)
        with _open_zip(path) as archive:
            names = [n for n in archive.namelist() if not n.endswith("/") and not _hidden(n)]
            if len(names) != 1:
                listed = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
                raise DataError(f"{path}: holds {len(names)} files ({listed}); expected one CSV")
            with archive.open(names[0]) as member:
                return pd.read_csv(member, **kwargs)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: empty file (no header line)") from None
    except ZIP_ERRORS as err:
        raise DataError(
            f"{path}: not a readable zip archive (truncated or corrupt): {err}"
        ) from None
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        message = " ".join(str(err).split())  # pandas' messages may span lines
        raise DataError(f"{path}: not a readable CSV file: {message}") from None
