"""Edge refinement of upscaled probability maps: a guided filter steered by the photo.

A model at 128x192 places the car's edge to within one of its pixels, ten full-size pixels wide;
bilinear upscaling draws a smooth edge through that band wherever the photo's edge really is.
The guided filter (He, Sun and Tang, "Guided Image Filtering", ECCV 2010) fits the map, in every
window, as a linear function of the grey photo: where the window holds an edge of the photo, the
map's edge moves onto it; where the photo is flat, the map is only smoothed. It runs on the JPEG
decoded at half size (DCT scaling makes that decode cheap), then the result is upscaled.

Measured on 8 held-out real cars (benchmarks/quality.py runs, `carvana evaluate`), MobileNetV2
U-Net at 128x192: +0.0018 full-resolution Dice (0.9807 -> 0.9825) for ~11 ms of one core per
1918x1280 image, the guide's decode included (benchmarks/predict.py).
"""

from __future__ import annotations

import threading

import cv2
import numpy as np

GUIDE_READ = cv2.IMREAD_REDUCED_GRAYSCALE_2  # the guide: the photo decoded grey at 1/2 size
# The window's radius in guide pixels (16 at full size): the best at 128x192 (of 2-16) and at
# 160x240 (of 3-10), but never more than 2 of the model's pixels: a finer model's edge needs
# less help.
RADIUS = 8
MAX_MODEL_PIXELS = 2
EPS = 1e-4  # regularisation on grey values 0..1: the filter follows edges of contrast >~ 0.01
_scratch = threading.local()


def guide_image(jpeg: bytes, reuse: bool = False) -> np.ndarray | None:
    """The grey photo as float32 0..1 at half size (`reuse`: in a per-thread array the
    next call overwrites); None when OpenCV cannot read it."""
    grey = cv2.imdecode(np.frombuffer(jpeg, np.uint8), GUIDE_READ)
    if grey is None:
        return None
    out = scratch("guide", grey.shape) if reuse else None
    return np.multiply(grey, np.float32(1 / 255), out=out, dtype=np.float32)


def scratch(name: str, shape: tuple[int, ...], dtype=np.float32) -> np.ndarray:
    """A per-thread array kept for reuse across images (its contents are stale)."""
    # A fresh 2.4 MB array per image and step costs ~600 page faults each time (profiled: ~15%
    # of prediction's CPU time went to the kernel; the filter's temporaries tripled its time).
    arrays = _scratch.__dict__.setdefault("arrays", {})
    key = (name, shape, np.dtype(dtype))
    if key not in arrays:
        arrays[key] = np.empty(shape, dtype)
    return arrays[key]


def guided_filter(
    guide: np.ndarray, src: np.ndarray, radius: int, eps: float = EPS, out=None
) -> np.ndarray:
    """He et al.'s grey guided filter of float32 `src` by float32 `guide` (same shape), with a
    (2*radius+1)^2 box window, into `out` (may be `src`; a fresh float32 array when None)."""
    size, shape = (2 * radius + 1, 2 * radius + 1), guide.shape

    def mean(x, into):
        return cv2.boxFilter(x, -1, size, dst=scratch(into, shape), borderType=cv2.BORDER_REFLECT)

    tmp = scratch("tmp", shape)
    mean_i, mean_p = mean(guide, "mean_i"), mean(src, "mean_p")
    var_i = mean(np.multiply(guide, guide, out=tmp), "var_i")
    var_i -= np.multiply(mean_i, mean_i, out=tmp)
    var_i += eps
    cov = mean(np.multiply(guide, src, out=tmp), "cov")
    cov -= np.multiply(mean_i, mean_p, out=tmp)
    a = np.divide(cov, var_i, out=cov)
    b = np.subtract(mean_p, np.multiply(a, mean_i, out=tmp), out=mean_p)
    out = np.multiply(mean(a, "var_i"), guide, out=out)
    out += mean(b, "mean_i")
    return out


def guide_radius(model_height: int, guide_height: int) -> int:
    """The filter's radius in guide pixels: RADIUS, at most MAX_MODEL_PIXELS of the model's."""
    return max(1, min(RADIUS, round(MAX_MODEL_PIXELS * guide_height / model_height)))


def refined_levels(
    probs: tuple[np.ndarray, ...], size: tuple[int, int], jpeg: bytes
) -> np.ndarray | None:
    """The models' uint8 maps*255 (each at its model's size) -> their mean, guided-filtered by
    the photo, as full-size levels in upscale_levels' convention: uint8 0..255 for one model,
    for k models a uint16 sum (k times the refined mean's level), so `levels > k * floor(t*255)`
    is still the mask at t. The window is sized for the coarsest map. None when OpenCV cannot
    read the JPEG."""
    guide = guide_image(jpeg, reuse=True)
    if guide is None:
        return None
    shape = guide.shape
    mean, up = scratch("mean", shape), scratch("guide_up", shape, np.uint8)
    for i, prob in enumerate(probs):
        cv2.resize(prob, shape[::-1], dst=up, interpolation=cv2.INTER_LINEAR)
        if i == 0:
            np.copyto(mean, up)
        else:
            mean += up
    mean *= 1 / (255 * len(probs))
    coarsest = min(prob.shape[0] for prob in probs)
    refined = guided_filter(guide, mean, guide_radius(coarsest, shape[0]), out=mean)
    # Back to uint8 levels at the guide's size (a quarter of the pixels), then upscaled.
    refined *= 255
    refined += 0.5
    levels = np.clip(refined, 0, 255, out=refined).astype(np.uint8)
    full = cv2.resize(levels, (int(size[1]), int(size[0])), interpolation=cv2.INTER_LINEAR)
    return full if len(probs) == 1 else np.multiply(full, len(probs), dtype=np.uint16)
