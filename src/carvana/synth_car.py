"""Drawing one synthetic car: its solids, turntable pose, shading, mask and floor shadow.

Each car is a few convex solids (lower body, cabin, four wheel cylinders) rotated to the 16
turntable angles and projected with a slight elevation. The mask is the union of the projected
solids' hulls and the image's car pixels are composited through that same mask, so image and
mask agree exactly; the soft floor shadow lies outside the mask, as in the real data.
`carvana.synth` writes these drawings out as a dataset. No TensorFlow here.
"""

from __future__ import annotations

import math

import numpy as np

from carvana import rle
from carvana.files import ANGLES

ELEVATION = math.radians(12)  # camera slightly above the car, so the roof and floor show
SHIFT = 4  # sub-pixel bits for cv2 polygon filling
LIGHT = np.array([-0.45, -0.55, 0.7]) / np.linalg.norm([-0.45, -0.55, 0.7])
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


def _on_face(quad: np.ndarray, a: float, b: float) -> np.ndarray:
    """The point a along a face's bottom edge and b of the way up, for a face quad from `_faces`."""
    p00, p10, p11, p01 = quad  # bottom edge i->j, then top edge j->i
    bottom = p00 + (p10 - p00) * a
    top = p01 + (p11 - p01) * a
    return bottom + (top - bottom) * b


def _patch(quad: np.ndarray, a0: float, a1: float, b0: float, b1: float) -> np.ndarray:
    """The part [a0, a1] x [b0, b1] of a face quad, as its four corners (4, 3)."""
    corners = ((a0, b0), (a1, b0), (a1, b1), (a0, b1))
    return np.array([_on_face(quad, a, b) for a, b in corners])


class Car:
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

    def wheels(self) -> list[np.ndarray]:
        """The four wheel cylinders: hubs at +-wheelbase/2, flush with the body sides."""
        return [
            _cylinder(x, y, self.radius, self.radius, self.tyre_width, 24)
            for x in (self.wheelbase / 2, -self.wheelbase / 2)
            for y in (self.width / 2 - 0.02, -self.width / 2 + 0.02)
        ]


def _pose(yaw: float) -> np.ndarray:
    """Rotation about the vertical axis, then the camera's elevation: car -> camera coordinates."""
    c, s = math.cos(yaw), math.sin(yaw)
    ce, se = math.cos(ELEVATION), math.sin(ELEVATION)
    yaw_m = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    # Camera axes: x right, depth along +y, screen-up mixes z and depth by the elevation.
    cam = np.array([[1, 0, 0], [0, ce, -se], [0, se, ce]])
    return cam @ yaw_m


def _fixed(uv: np.ndarray) -> np.ndarray:
    """Pixel coordinates as cv2's fixed-point polygon vertices (SHIFT fractional bits)."""
    return np.round(uv * (1 << SHIFT)).astype(np.int32)


def _hull(uv: np.ndarray) -> np.ndarray:
    """The fixed-point convex hull of pixel coordinates, ready for `_Canvas.fill`."""
    import cv2

    return cv2.convexHull(_fixed(uv))


# -- drawing ----------------------------------------------------------------------------------
class _Canvas:
    """One car drawing in progress: the pose, the colour layer and the mask it fills."""

    def __init__(self, size: tuple[int, int], ground: float, scale: float, angle: int):
        h, w = size
        self.rot = _pose(-math.pi / 2 + (angle - 1) * 2 * math.pi / 16)
        self.centre, self.ground, self.scale = w / 2, ground, scale
        self.mask = np.zeros((h, w), np.uint8)
        self.layer = np.zeros((h, w, 3), np.uint8)

    def project(self, points: np.ndarray) -> np.ndarray:
        """Car-coordinate points (n, 3) -> image (x, y) pixel coordinates (n, 2)."""
        cam = points @ self.rot.T
        return np.column_stack(
            [self.centre + self.scale * cam[:, 0], self.ground - self.scale * cam[:, 2]]
        )

    def depth(self, vector: np.ndarray) -> float:
        """Camera depth of a car-coordinate point or direction; negative is towards the camera."""
        return float((vector @ self.rot.T)[1])

    def shade(self, normal: np.ndarray, colour: np.ndarray) -> np.ndarray:
        """`colour` lit from the studio light on a face with this outward normal."""
        n = normal @ self.rot.T
        return colour * (0.55 + 0.5 * max(0.0, float(n @ LIGHT)))

    def fill(self, poly: np.ndarray, colour, on_mask: bool = False) -> None:
        """Paint a fixed-point convex polygon on the layer, and on the mask if `on_mask`."""
        import cv2

        value = tuple(float(c) for c in np.clip(colour, 0, 255))
        cv2.fillConvexPoly(self.layer, poly, value, cv2.LINE_8, SHIFT)
        if on_mask:
            cv2.fillConvexPoly(self.mask, poly, 1, cv2.LINE_8, SHIFT)


def _draw_solid(canvas: _Canvas, car: Car, verts: np.ndarray, faces, glass: bool) -> None:
    """A body or cabin: its silhouette, the faces towards the camera, windows or lamps."""
    uv = canvas.project(verts)
    canvas.fill(_hull(uv), car.colour * 0.6, on_mask=True)
    for normal, index in faces:
        if canvas.depth(normal) >= -1e-6:  # faces away from the camera
            continue
        quv = uv[index]
        canvas.fill(_hull(quv), canvas.shade(normal, car.colour))
        if glass and normal[2] <= 0.99:  # every cabin face but the roof
            # Glass inset inside the face leaves the pillars in body colour.
            centre = quv.mean(axis=0)
            pane = centre + (quv - centre) * [0.86, 0.78]
            canvas.fill(_hull(pane), canvas.shade(normal, car.glass) * 1.1)
        elif not glass and abs(normal[0]) > 0.99:
            _draw_lamps(canvas, verts[index], normal)


def _draw_lamps(canvas: _Canvas, quad: np.ndarray, normal: np.ndarray) -> None:
    """Head lamps and grille on the front face, red lamps on the rear face."""
    front = normal[0] > 0
    lamp = np.array([235, 232, 215]) if front else np.array([170, 20, 24])
    for a0, a1 in ((0.04, 0.26), (0.74, 0.96)):
        uv = canvas.project(_patch(quad, a0, a1, 0.6, 0.85))
        canvas.fill(_fixed(uv), canvas.shade(normal, lamp))
    if front:
        uv = canvas.project(_patch(quad, 0.3, 0.7, 0.35, 0.8))
        canvas.fill(_fixed(uv), np.array([25, 25, 28]))


def _draw_wheel_fronts(canvas: _Canvas, car: Car, wheels: list[np.ndarray]) -> None:
    """Outer faces of the near wheels (tyre and rim), over the body as seen through the arches."""
    for verts in wheels:
        outer = verts[: len(verts) // 2]
        normal = np.array([0.0, math.copysign(1.0, outer[0, 1]), 0.0])
        if canvas.depth(normal) < -0.05:
            uv = canvas.project(outer)
            centre = uv.mean(axis=0)
            canvas.fill(_hull(uv), car.tyre * 1.2, on_mask=True)
            canvas.fill(_hull(centre + (uv - centre) * 0.62), canvas.shade(normal, car.rim))


class Renderer:
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

    def scale(self, car: Car) -> float:
        """Pixels per metre: the car fills ~80% of the width side-on and stays inside the frame."""
        return min(0.80 * self.w / car.length, 0.42 * self.h / car.height)

    def render(self, car: Car, angle: int) -> tuple[np.ndarray, np.ndarray]:
        """RGB uint8 image and uint8 0/1 mask of a car at turntable angle 1..16 (1: front)."""
        import cv2

        canvas = _Canvas((self.h, self.w), self.ground, self.scale(car), angle)
        wheels = car.wheels()
        wheels.sort(key=lambda v: -canvas.depth(v.mean(axis=0)))  # far ones first
        for verts in wheels:
            canvas.fill(_hull(canvas.project(verts)), car.tyre, on_mask=True)
        _draw_solid(canvas, car, car.body, car.body_faces, glass=False)
        _draw_solid(canvas, car, car.cabin, car.cabin_faces, glass=True)
        _draw_wheel_fronts(canvas, car, wheels)
        image = self._studio_with_shadow(canvas, car)
        cv2.copyTo(canvas.layer, canvas.mask, image)  # ~100x faster than np.copyto with a mask
        return image, canvas.mask

    def _studio_with_shadow(self, canvas: _Canvas, car: Car) -> np.ndarray:
        """The background with the car's soft floor shadow: its footprint, blurred small."""
        import cv2

        h, w = self.h, self.w
        foot = np.column_stack([car.body[:8, :2] * [1.08, 1.15], np.zeros(8)])
        uv = canvas.project(foot)
        small = max(1, int(round(w / 160)))  # blur at low resolution: much cheaper, same look
        shadow = np.zeros((h // small + 1, w // small + 1), np.float32)
        cv2.fillConvexPoly(shadow, _hull(uv / small), 1.0, cv2.LINE_8, SHIFT)
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
        return image


def render_car(
    size: tuple[int, int] = rle.ORIGINAL_SHAPE, seed: int = 0, angle: int = 5
) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic car photo (RGB uint8) and its 0/1 mask at `size` (h, w), angle 1..16."""
    if not 1 <= angle <= len(ANGLES):
        raise ValueError(f"angle must be 1..{len(ANGLES)}, got {angle}")
    return Renderer(size).render(Car(np.random.default_rng(seed)), angle)
