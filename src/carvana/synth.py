"""A synthetic, Kaggle-shaped Carvana dataset: cars on a turntable in a grey studio.

Each car is a few convex solids (lower body, cabin, four wheel cylinders) rotated to the 16
turntable angles and projected with a slight elevation. The mask is the union of the projected
solids' hulls and the image's car pixels are composited through that same mask, so image and
mask agree exactly; the soft floor shadow lies outside the mask, as in the real data.
No TensorFlow here.
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

MARKER = "SYNTHETIC.md"
ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed member timestamps: byte-identical zips for a seed
JPEG_QUALITY = 90
ELEVATION = math.radians(12)  # camera slightly above the car, so the roof and floor show
SHIFT = 4  # sub-pixel bits for cv2 polygon filling
OUTPUTS = (
    "train",
    "train_masks",
    "test",
    "train_masks.csv",
    "metadata.csv",
    "sample_submission.csv",
)

COLOURS = {  # RGB body colours, weighted roughly like a used-car lot
    "white": (236, 236, 232),
    "silver": (178, 182, 186),
    "grey": (104, 108, 112),
    "black": (28, 28, 30),
    "red": (168, 24, 28),
    "blue": (30, 62, 140),
    "navy": (22, 30, 64),
    "green": (40, 84, 52),
    "beige": (190, 172, 140),
    "orange": (214, 104, 30),
}
COLOUR_WEIGHTS = (0.2, 0.18, 0.14, 0.16, 0.1, 0.08, 0.05, 0.03, 0.03, 0.03)
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


# -- geometry ---------------------------------------------------------------------------------
def _octagon(length: float, width: float, chamfer: float) -> np.ndarray:
    """Footprint of a box with cut corners, (8, 2) in car coordinates (x forward, y left)."""
    lx, wy, c = length / 2, width / 2, chamfer
    return np.array(
        [(lx, -wy + c), (lx, wy - c), (lx - c, wy), (-lx + c, wy),
         (-lx, wy - c), (-lx, -wy + c), (-lx + c, -wy), (lx - c, -wy)]
    )  # fmt: skip


def _prism(bottom: np.ndarray, top: np.ndarray, z0: float, z1: float) -> np.ndarray:
    """A convex solid between two footprints: (16, 3) vertices, bottom ring then top ring."""
    return np.concatenate(
        [np.column_stack([bottom, np.full(len(bottom), z0)]),
         np.column_stack([top, np.full(len(top), z1)])]
    )  # fmt: skip


def _cylinder(cx: float, cy: float, cz: float, radius: float, width: float, n: int) -> np.ndarray:
    """A wheel: two discs in the x-z plane at y = cy and y = cy - width (towards the centre)."""
    t = np.linspace(0, 2 * math.pi, n, endpoint=False)
    ring = np.column_stack([cx + radius * np.cos(t), np.zeros(n), cz + radius * np.sin(t)])
    inner = cy - math.copysign(width, cy)
    outer = ring.copy()
    outer[:, 1] = cy
    ring[:, 1] = inner
    return np.concatenate([outer, ring])


def _faces(verts: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Side faces and top of a prism from `_prism`: (outward unit normal, vertex indices)."""
    ring = len(verts) // 2
    centre = verts.mean(axis=0)
    faces = []
    for i in range(ring):
        j = (i + 1) % ring
        index = np.array([i, j, ring + j, ring + i])  # bottom edge i->j, then top edge j->i
        quad = verts[index]
        normal = np.cross(quad[1] - quad[0], quad[3] - quad[0])
        if normal @ (quad.mean(axis=0) - centre) < 0:
            normal = -normal
        faces.append((normal / np.linalg.norm(normal), index))
    faces.append((np.array([0.0, 0.0, 1.0]), np.arange(ring, 2 * ring)))
    return faces


class _Car:
    """One synthetic car: dimensions in metres, colours, and its solids in car coordinates."""

    def __init__(self, rng: np.random.Generator):
        kind = rng.choice(["sedan", "hatch", "suv"], p=[0.45, 0.2, 0.35])
        self.kind = str(kind)
        suv = self.kind == "suv"
        self.length = rng.uniform(4.4, 5.0) if self.kind != "hatch" else rng.uniform(3.9, 4.3)
        self.width = rng.uniform(1.75, 1.95)
        self.radius = rng.uniform(0.34, 0.40) if suv else rng.uniform(0.30, 0.34)
        clearance = self.radius * (rng.uniform(0.75, 0.95) if suv else rng.uniform(0.5, 0.7))
        body_top = clearance + (rng.uniform(0.65, 0.8) if suv else rng.uniform(0.5, 0.62))
        roof = body_top + (rng.uniform(0.6, 0.72) if suv else rng.uniform(0.42, 0.52))
        cab_len = self.length * (rng.uniform(0.55, 0.68) if suv else rng.uniform(0.42, 0.52))
        cab_shift = -self.length * (0.08 if suv else rng.uniform(0.02, 0.1))
        if self.kind == "hatch":
            cab_shift = -(self.length - cab_len) / 2 + 0.25
        name = rng.choice(list(COLOURS), p=COLOUR_WEIGHTS)
        self.colour = np.array(COLOURS[str(name)], dtype=np.float64)
        self.colour *= rng.uniform(0.92, 1.06)
        self.glass = np.array([44, 52, 62], dtype=np.float64) * rng.uniform(0.8, 1.2)
        self.rim = np.array([170, 172, 176], dtype=np.float64) * rng.uniform(0.6, 1.1)
        self.tyre = np.array([30, 30, 32], dtype=np.float64)

        foot = _octagon(self.length, self.width, 0.35)
        self.body = _prism(foot, foot * [0.97, 0.94], clearance, body_top)
        cab_bottom = _octagon(cab_len, self.width * 0.9, 0.2) + [cab_shift, 0]
        cab_top = _octagon(cab_len * 0.62, self.width * 0.78, 0.15) + [
            cab_shift - 0.04 * cab_len,
            0,
        ]
        self.cabin = _prism(cab_bottom, cab_top, body_top, roof)
        self.body_faces, self.cabin_faces = _faces(self.body), _faces(self.cabin)
        self.wheelbase = self.length * rng.uniform(0.58, 0.64)
        self.tyre_width = rng.uniform(0.2, 0.26)
        self.height = roof


def _pose(yaw: float):
    """Rotation about the vertical axis, then the camera's elevation: car -> camera coordinates."""
    c, s = math.cos(yaw), math.sin(yaw)
    ce, se = math.cos(ELEVATION), math.sin(ELEVATION)
    yaw_m = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    # Camera axes: x right, depth along +y, screen-up mixes z and depth by the elevation.
    cam = np.array([[1, 0, 0], [0, ce, -se], [0, se, ce]])
    return cam @ yaw_m


class _Renderer:
    """Draws cars at one image size; the studio background and floor are computed once."""

    def __init__(self, size: tuple[int, int]):
        h, w = size
        self.h, self.w = h, w
        rows = np.linspace(0.0, 1.0, h)[:, None]
        horizon = 0.5
        wall = 238 - 18 * rows
        floor = 206 + 26 * (rows - horizon) / (1 - horizon)
        # A soft step where the studio wall meets the floor, like the real photos.
        blend = 1 / (1 + np.exp(-(rows - horizon) * 120))
        grey = wall * (1 - blend) + floor * blend
        cols = np.linspace(-1.0, 1.0, w)[None, :]
        vignette = 1 - 0.05 * cols**2
        base = grey * vignette
        self.background = (base[..., None] * [1.0, 1.0, 1.01]).clip(0, 255).astype(np.float32)
        self.background_u8 = self.background.astype(np.uint8)
        self.ground = 0.80 * h  # image row of the turntable centre on the floor

    def scale(self, car: _Car) -> float:
        """Pixels per metre: the car fills ~80% of the width side-on and stays inside the frame."""
        return min(0.80 * self.w / car.length, 0.42 * self.h / car.height)

    def render(self, car: _Car, angle: int) -> tuple[np.ndarray, np.ndarray]:
        """RGB uint8 image and uint8 0/1 mask of a car at turntable angle 1..16 (1: front)."""
        import cv2

        h, w = self.h, self.w
        yaw = -math.pi / 2 + (angle - 1) * 2 * math.pi / 16
        rot = _pose(yaw)
        s = self.scale(car)
        light = np.array([-0.45, -0.55, 0.7])
        light /= np.linalg.norm(light)

        def project(points: np.ndarray) -> np.ndarray:
            cam = points @ rot.T
            return np.column_stack([w / 2 + s * cam[:, 0], self.ground - s * cam[:, 2]])

        def fixed(uv: np.ndarray) -> np.ndarray:
            return np.round(uv * (1 << SHIFT)).astype(np.int32)

        mask = np.zeros((h, w), np.uint8)
        layer = np.zeros((h, w, 3), np.uint8)

        def hull(uv: np.ndarray) -> np.ndarray:
            return cv2.convexHull(fixed(uv))

        def fill(poly: np.ndarray, colour, on_mask: bool) -> None:
            value = tuple(float(c) for c in np.clip(colour, 0, 255))
            cv2.fillConvexPoly(layer, poly, value, cv2.LINE_8, SHIFT)
            if on_mask:
                cv2.fillConvexPoly(mask, poly, 1, cv2.LINE_8, SHIFT)

        def shade(normal: np.ndarray, colour: np.ndarray) -> np.ndarray:
            n = normal @ rot.T
            return colour * (0.55 + 0.5 * max(0.0, float(n @ light)))

        def solid_faces(faces):
            """Faces of a convex solid that point towards the camera."""
            return [(n, q) for n, q in faces if (n @ rot.T)[1] < -1e-6]

        # Wheels: hubs at +-wheelbase/2, flush with the body sides.
        wheels = []
        for x in (car.wheelbase / 2, -car.wheelbase / 2):
            for y in (car.width / 2 - 0.02, -car.width / 2 + 0.02):
                wheels.append(_cylinder(x, y, car.radius, car.radius, car.tyre_width, 24))
        wheels.sort(key=lambda v: -float((v.mean(axis=0) @ rot.T)[1]))  # far ones first
        for verts in wheels:
            uv = project(verts)
            fill(hull(uv), car.tyre, True)

        for verts, faces, glass in (
            (car.body, car.body_faces, False),
            (car.cabin, car.cabin_faces, True),
        ):
            colour = car.colour
            uv = project(verts)
            fill(hull(uv), colour * 0.6, True)
            for normal, index in solid_faces(faces):
                is_roof = normal[2] > 0.99
                quv = uv[index]
                fill(hull(quv), shade(normal, colour), False)
                if glass and not is_roof:
                    # Glass inset inside the face leaves the pillars in body colour.
                    centre = quv.mean(axis=0)
                    pane = centre + (quv - centre) * [0.86, 0.78]
                    fill(hull(pane), shade(normal, car.glass) * 1.1, False)
                elif not glass and abs(normal[0]) > 0.99:
                    self._lamps(fill, project, verts[index], normal, shade)

        # Outer faces of the near wheels go over the body, as seen through the wheel arches.
        for verts in wheels:
            outer = verts[: len(verts) // 2]
            normal = np.array([0.0, math.copysign(1.0, outer[0, 1]), 0.0])
            if (normal @ rot.T)[1] < -0.05:
                uv = project(outer)
                centre = uv.mean(axis=0)
                fill(hull(uv), car.tyre * 1.2, True)
                fill(hull(centre + (uv - centre) * 0.62), shade(normal, car.rim), False)

        # The shadow: the footprint on the floor, blurred at low resolution, outside the mask.
        foot = np.column_stack([car.body[:8, :2] * [1.08, 1.15], np.zeros(8)])
        uv = project(foot)
        small = max(1, int(round(w / 160)))
        shadow = np.zeros((h // small + 1, w // small + 1), np.float32)
        cv2.fillConvexPoly(shadow, cv2.convexHull(fixed(uv / small)), 1.0, cv2.LINE_8, SHIFT)
        sigma = max(0.8, 0.025 * w / small)
        shadow = cv2.GaussianBlur(shadow, (0, 0), sigma)
        shadow = cv2.resize(shadow, (w, h), interpolation=cv2.INTER_LINEAR)[:h, :w]
        image = self.background_u8.copy()
        rows = np.flatnonzero(shadow.max(axis=1) > 1e-3)
        cols = np.flatnonzero(shadow.max(axis=0) > 1e-3)
        if rows.size and cols.size:  # darken only the shadow's box: most of the frame is bare
            box = np.s_[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
            dim = cv2.merge([1 - 0.45 * shadow[box]] * 3)
            image[box] = cv2.multiply(self.background[box], dim, dtype=cv2.CV_8U)
        cv2.copyTo(layer, mask, image)  # ~100x faster than np.copyto with a broadcast mask
        return image, mask

    @staticmethod
    def _lamps(fill, project, quad, normal, shade) -> None:
        """Head lamps and grille on the front face, red lamps on the rear face."""
        p00, p10, p11, p01 = quad  # bottom edge i->j, then top edge j->i

        def patch(a0, a1, b0, b1):
            def at(a, b):
                bottom = p00 + (p10 - p00) * a
                top = p01 + (p11 - p01) * a
                return bottom + (top - bottom) * b

            return np.array([at(a0, b0), at(a1, b0), at(a1, b1), at(a0, b1)])

        front = normal[0] > 0
        lamp = np.array([235, 232, 215]) if front else np.array([170, 20, 24])
        for a0, a1 in ((0.04, 0.26), (0.74, 0.96)):
            uv = project(patch(a0, a1, 0.6, 0.85))
            fill(np.round(uv * (1 << SHIFT)).astype(np.int32), shade(normal, lamp), False)
        if front:
            uv = project(patch(0.3, 0.7, 0.35, 0.8))
            fill(np.round(uv * (1 << SHIFT)).astype(np.int32), np.array([25, 25, 28]), False)


def render_car(
    size: tuple[int, int] = rle.ORIGINAL_SHAPE, seed: int = 0, angle: int = 5
) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic car photo (RGB uint8) and its 0/1 mask at `size` (h, w), angle 1..16."""
    if not 1 <= angle <= len(ANGLES):
        raise ValueError(f"angle must be 1..{len(ANGLES)}, got {angle}")
    return _Renderer(size).render(_Car(np.random.default_rng(seed)), angle)


# -- files ------------------------------------------------------------------------------------
def _jpeg(image: np.ndarray) -> bytes:
    import cv2

    ok, data = cv2.imencode(".jpg", image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise RuntimeError("OpenCV could not encode a JPEG")
    return data.tobytes()


def _gif(mask: np.ndarray) -> bytes:
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
    renderer = _Renderer((h, w))
    writer = _Writer(out, zipped)
    try:
        rows = ["img,rle_mask"]
        for car_id in train_ids:
            car = _Car(rng)
            for angle in ANGLES:
                image, mask = renderer.render(car, int(angle))
                name = f"{car_id}_{angle}"
                writer.file("train", f"{name}.jpg", _jpeg(image))
                writer.file("train_masks", f"{name}_mask.gif", _gif(mask))
                rows.append(f"{name}.jpg,{rle.encode(mask)}")
        writer.csv("train_masks.csv", "\n".join(rows) + "\n")

        names = []
        for car_id in test_ids:
            car = _Car(rng)
            for angle in ANGLES[: test_images - len(names)]:
                image, _ = renderer.render(car, int(angle))
                names.append(f"{car_id}_{angle}.jpg")
                writer.file("test", names[-1], _jpeg(image))
        # Kaggle's sample submission gives every image the same placeholder run.
        writer.csv("sample_submission.csv", "img,rle_mask\n" + "".join(f"{n},1 1\n" for n in names))
        writer.csv("metadata.csv", _metadata(rng, sorted(train_ids + test_ids)))
    finally:
        writer.close()
    return out


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
