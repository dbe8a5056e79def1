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


@pytest.mark.parametrize("members", [1, 3])
def test_refined_levels_keep_the_ensembles_convention(members):
    guide = _step(0.2, 0.8, 32, shape=(32, 64))
    prob = np.zeros((8, 16), np.uint8)
    prob[:, 8:] = 255
    levels = refined_levels((prob,) * members, (64, 128), guide)
    assert levels.shape == (64, 128)
    assert levels.dtype == (np.uint8 if members == 1 else np.uint16)
    single = refined_levels((prob,), (64, 128), guide)
    np.testing.assert_array_equal(levels, members * single.astype(np.uint16))
    # The photo's edge (column 32 of 64) is column 64 of 128 at full size.
    car = single > 127
    assert not car[:, :62].any() and car[:, 66:].all()


def test_guide_is_the_grey_photo_at_half_size():
    image = np.zeros((50, 75, 3), np.uint8)
    image[:, 40:] = 200
    ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 100])
    assert ok
    guide = guide_image(jpeg.tobytes())
    assert guide.shape == (25, 38) and guide.dtype == np.float32
    assert guide[:, :18].max() < 0.05 and abs(float(guide[:, 22:].mean()) - 200 / 255) < 0.02
    assert guide_image(b"not a jpeg") is None
