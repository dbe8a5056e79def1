"""Edge refinement: the guided filter on hand-made maps, levels, the guide decode."""

import cv2
import numpy as np
import pytest

from carvana.edges import guide_image, guide_radius, guided_filter, refined_levels


def _step(value_left: float, value_right: float, at: int, shape=(16, 64)) -> np.ndarray:
    image = np.full(shape, value_left, np.float32)
    image[:, at:] = value_right
    return image


def test_a_flat_map_stays_flat_and_a_flat_photo_only_smooths():
    guide = _step(0.2, 0.8, 32)
    flat = np.full(guide.shape, 0.7, np.float32)
    np.testing.assert_allclose(guided_filter(guide, flat, radius=4), flat, atol=1e-5)
    # A flat photo has no edge to follow: the map is averaged twice over the 9x9 window.
    ramp = np.tile(np.linspace(0, 1, 64, dtype=np.float32), (16, 1))
    out = guided_filter(np.full_like(ramp, 0.5), ramp, radius=4)
    np.testing.assert_allclose(out[:, 10:54], ramp[:, 10:54], atol=1e-5)  # linear: unchanged


def test_the_maps_edge_moves_onto_the_photos_edge():
    guide = _step(0.2, 0.8, 32)
    # The model's edge: a soft ramp crossing 0.5 three pixels left of the photo's edge.
    x = np.arange(64, dtype=np.float32)
    prob = np.tile(1 / (1 + np.exp(-(x - 29) / 1.5)), (16, 1)).astype(np.float32)
    assert np.argmax(prob[0] > 0.5) == 30
    # A window wider than the offset sees both edges: the map's step lands on the photo's.
    refined = guided_filter(guide, prob, radius=6)
    assert np.argmax(refined[0] > 0.5) == 32
    assert (refined[:, :32] < 0.5).all() and (refined[:, 32:] > 0.5).all()


def test_radius_is_capped_by_the_models_pixel():
    assert guide_radius(model_height=128, guide_height=640) == 8
    assert guide_radius(model_height=160, guide_height=640) == 8  # 2 model pixels of 4
    assert guide_radius(model_height=320, guide_height=640) == 4
    assert guide_radius(model_height=1024, guide_height=640) == 1  # never below one pixel


def _jpeg(image: np.ndarray) -> bytes:
    ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 100])
    assert ok
    return jpeg.tobytes()


@pytest.mark.parametrize("members", [1, 3])
def test_refined_levels_keep_the_ensembles_convention(members):
    photo = _jpeg(np.uint8(255 * _step(0.2, 0.8, 64, shape=(64, 128))))  # the guide: 32x64
    # The model's edge, upscaled bilinearly, lies 8 full-size pixels left of the photo's.
    prob = np.zeros((8, 16), np.uint8)
    prob[:, 7:] = 255
    assert np.argmax(cv2.resize(prob, (128, 64), interpolation=cv2.INTER_LINEAR)[0] > 127) == 56
    levels = refined_levels((prob,) * members, (64, 128), photo)
    assert levels.shape == (64, 128)
    assert levels.dtype == (np.uint8 if members == 1 else np.uint16)
    single = refined_levels((prob,), (64, 128), photo)
    np.testing.assert_array_equal(levels, members * single.astype(np.uint16))
    # Refined, it moves most of the way to the photo's edge (column 64 at full size).
    starts = np.argmax(single > 127, axis=1)
    assert (starts == starts[0]).all() and 60 <= starts[0] <= 64


def test_guide_is_the_grey_photo_at_half_size():
    image = np.zeros((50, 75, 3), np.uint8)
    image[:, 40:] = 200
    guide = guide_image(_jpeg(image))
    assert guide.shape == (25, 38) and guide.dtype == np.float32
    assert guide[:, :18].max() < 0.05 and abs(float(guide[:, 22:].mean()) - 200 / 255) < 0.02
    np.testing.assert_array_equal(guide_image(_jpeg(image), reuse=True), guide)
    assert guide_image(b"not a jpeg") is None
    assert refined_levels((np.zeros((4, 4), np.uint8),), (8, 8), b"not a jpeg") is None
