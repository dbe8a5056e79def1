"""Input pipeline: geometry, binary masks, caching, augmentation alignment, lazy keras_cv."""

import struct
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from carvana.config import TrainConfig
from carvana.files import CarvanaData, DataError
from carvana.inputs import (
    crop_to_image,
    decode_image,
    get_dataset,
    named_data_errors,
    shrink_mask,
)

CONFIG = TrainConfig(image_size=(32, 48), original_size=(128, 192), batch_size=8)


class CountingData:
    """A CarvanaData that counts image reads, or refuses them."""

    def __init__(self, root, refuse=False):
        self.data, self.refuse, self.reads = CarvanaData(root), refuse, 0

    def read_train_bytes(self, image_id):
        if self.refuse:
            raise AssertionError("the cache should have been used")
        self.reads += 1
        return self.data.read_train_bytes(image_id)

    def __getattr__(self, name):  # everything else (read_mask, where files are) as data's
        return getattr(self.data, name)


def test_shrink_mask_keeps_masks_binary_by_coverage():
    mask = np.zeros((4, 4), np.uint8)
    mask[0:2, 0:2] = 1  # top-left block: fully covered
    mask[0, 2] = 1  # top-right block: 1/4 covered -> background
    mask[2:4, 2] = 1  # bottom-right block: 1/2 covered -> car
    config = TrainConfig(image_size=(2, 2), original_size=(4, 4))
    out = shrink_mask(mask, config)
    assert out.shape == (2, 2, 1) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[..., 0], [[1, 0], [0, 1]])


def test_soft_targets_keep_each_pixels_car_share():
    mask = np.zeros((4, 4), np.uint8)
    mask[0:2, 0:2] = 1  # share 1
    mask[0, 2] = 1  # share 1/4: 63.75 -> 64
    mask[2:4, 2] = 1  # share 1/2: 127.5 -> 128 (round half to even)
    config = TrainConfig(image_size=(2, 2), original_size=(4, 4), soft_targets=True)
    out = shrink_mask(mask, config)
    assert out.shape == (2, 2, 1) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[..., 0], [[255, 64], [0, 128]])


def test_soft_training_dataset_gives_shares_that_survive_augmentation(synth_dirs):
    data = CarvanaData(synth_dirs["folders"])
    ids = data.train_ids()[:8]
    soft = CONFIG.replace(soft_targets=True)
    ((_, plain),) = get_dataset(data, ids, soft, training=False, cache=None)
    plain = plain.numpy()
    for i, image_id in enumerate(ids):  # validation order is the ids' order
        expected = shrink_mask(data.read_mask(image_id), soft)[..., 0] / 255
        np.testing.assert_allclose(plain[i, :, :48, 0], expected, atol=1e-6)
    # The synthetic cars' edges cut model pixels: shares strictly between 0 and 1 exist.
    assert ((plain > 0) & (plain < 1)).mean() > 0.005
    ((_, augmented),) = get_dataset(data, ids, soft.replace(batch_size=8), training=True)
    augmented = augmented.numpy()
    assert 0.0 <= augmented.min() and augmented.max() <= 1.0
    assert ((augmented > 0) & (augmented < 1)).mean() > 0.005
    with pytest.raises(ValueError, match="soft_targets off"):
        get_dataset(data, ids, soft, training=True, augmenter="stock")


@pytest.mark.parametrize("layout", ["folders", "zipped"])
def test_validation_dataset_geometry_and_masks(synth_dirs, layout):
    data = CarvanaData(synth_dirs[layout])
    ids = data.train_ids()[:10]
    batches = list(get_dataset(data, ids, CONFIG, training=False, cache=None))
    images = np.concatenate([x.numpy() for x, _ in batches])
    masks = np.concatenate([y.numpy() for _, y in batches])
    assert [int(x.shape[0]) for x, _ in batches] == [8, 2]
    assert images.shape == (10, 32, 64, 3) and masks.shape == (10, 32, 64, 1)
    assert images.dtype == np.float32 and images.max() <= 255 and images.max() > 100
    assert set(np.unique(masks)) == {0.0, 1.0}
    # Padding (right of column 48) is black background; the order is the ids' order.
    assert not images[:, :, 48:].any() and not masks[:, :, 48:].any()
    for i, image_id in enumerate(ids):
        np.testing.assert_array_equal(
            masks[i, :, :48], shrink_mask(data.read_mask(image_id), CONFIG)
        )
        expected = decode_image(tf.constant(data.read_train_bytes(image_id)), CONFIG).numpy()
        np.testing.assert_array_equal(images[i], expected)
    assert crop_to_image(images, CONFIG).shape == (10, 32, 48, 3)


def test_encoder_scale_padding_reaches_the_dataset(synth_dirs):
    # 32x48 at encoder_scale 2 pads to 64x64, not to the 32x64 of scale 1: the decoder is
    # shared between configs, so it must be keyed on the padded size too.
    data = CarvanaData(synth_dirs["folders"])
    ids = data.train_ids()[:2]
    list(get_dataset(data, ids, CONFIG, training=False, cache=None))  # scale 1 first
    scaled = CONFIG.replace(model="mobilenet", refine=True, encoder_scale=2)
    x, y = next(iter(get_dataset(data, ids, scaled, training=False, cache=None)))
    assert x.shape[1:] == (64, 64, 3) and y.shape[1:] == (64, 64, 1)
    assert not x.numpy()[:, 32:].any() and not y.numpy()[:, :, 48:].any()


def test_cache_decodes_once_in_memory_and_in_a_file(synth_dirs, tmp_path):
    ids = CarvanaData(synth_dirs["folders"]).train_ids()[:12]
    counting = CountingData(synth_dirs["folders"])
    dataset = get_dataset(counting, ids, CONFIG, training=True, cache="")
    first = [y.numpy().sum() for _ in range(3) for _, y in dataset]
    assert counting.reads == len(ids)
    assert len(first) == 3 * 2
    cache = str(tmp_path / "cache")
    list(get_dataset(CountingData(synth_dirs["folders"]), ids, CONFIG, False, cache=cache))
    refusing = CountingData(synth_dirs["folders"], refuse=True)
    again = list(get_dataset(refusing, ids, CONFIG, training=False, cache=cache))
    assert sum(int(x.shape[0]) for x, _ in again) == len(ids)


def _shapes_batch(n=8, h=32, w=64, seed=0):
    """Grey images whose brightness is the mask: asymmetric shapes, so flips show."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, h, w, 1), np.float32)
    for i in range(n):
        top, left = rng.integers(4, 10), rng.integers(4, 16)
        masks[i, top : top + 14, left : left + 30] = 1
        masks[i, top : top + 6, left + 20 : left + 30] = 0  # notch: top-right
    return np.repeat(masks, 3, axis=-1) * 255.0, masks


def _misaligned(car: np.ndarray, mask: np.ndarray) -> float:
    """Fraction of pixels where image and mask disagree, away from the mask's edge (bilinear
    image vs nearest mask resampling may differ by a pixel there)."""
    import cv2

    mask = (mask > 0.5).astype(np.uint8)
    kernel = np.ones((3, 3), np.uint8)
    edge = cv2.dilate(mask, kernel) != cv2.erode(mask, kernel)
    return float(np.mean((car != mask.astype(bool)) & ~edge))


@pytest.mark.parametrize("augmenter", ["fused", "stock", "fused-soft"])
def test_augmentation_keeps_image_and_mask_aligned(augmenter):
    from carvana import augment

    images, masks = _shapes_batch()
    soft = augmenter == "fused-soft"
    if soft:
        layers = augment.fused_augmenter(7, soft_masks=True)
    else:
        layers = {"fused": augment.fused_augmenter, "stock": augment.stock_augmenter}[augmenter](7)
    fn = tf.function(lambda x, y: augment.augment_batch(x, y, layers, soft))
    moved = 0
    for _ in range(3):
        out_x, out_y = (t.numpy() for t in fn(tf.constant(images), tf.constant(masks)))
        assert out_x.shape == images.shape and out_y.shape == masks.shape
        if soft:  # bilinear: shares between 0 and 1 along the edges
            assert 0 <= out_y.min() and out_y.max() <= 1 and ((out_y > 0) & (out_y < 1)).any()
        else:
            assert set(np.unique(out_y)) <= {0.0, 1.0}
        car = out_x.mean(axis=-1) > 127.5
        for i in range(len(images)):
            off = _misaligned(car[i], out_y[i, ..., 0])
            assert off < 0.003, f"image and mask disagree on {off:.1%} of pixels"
            moved += np.mean(out_y[i] != masks[i]) > 0.02
        # The check itself catches a mirrored mask.
        assert _misaligned(car[0], out_y[0, :, ::-1, 0]) > 0.05
    assert moved >= 6  # the geometry really changed most samples


def test_augment_strength_0_leaves_only_flips():
    from carvana import augment

    images, masks = _shapes_batch()
    layers = augment.fused_augmenter(7, strength=0.0)
    flipped = 0
    for _ in range(3):
        batch = augment.augment_batch(tf.constant(images), tf.constant(masks), layers)
        out_x, out_y = (t.numpy() for t in batch)
        for i in range(len(images)):
            mirrored = np.array_equal(out_y[i], masks[i, :, ::-1])
            assert mirrored or np.array_equal(out_y[i], masks[i])
            # Bilinear at an exact (mirrored) grid: the image comes back within rounding.
            source = images[i, :, ::-1] if mirrored else images[i]
            assert np.abs(out_x[i] - source).max() <= 1.0
            flipped += mirrored and not np.array_equal(masks[i], masks[i, :, ::-1])
    assert flipped >= 2  # the flips still happen


@pytest.mark.parametrize("strength", [0.0, 0.5, 2.0])
def test_augment_strength_scales_every_range_but_the_flips(strength):
    from carvana import augment

    geometry, colour = augment.fused_augmenter(7, strength=strength)
    assert geometry.flip == 0.5
    assert (geometry.shift, geometry.zoom, geometry.degrees) == pytest.approx(
        (0.05 * strength, 0.1 * strength, 5.0 * strength)
    )
    assert (colour.brightness, colour.contrast, colour.hue) == pytest.approx(
        (0.1 * strength, 0.15 * strength, 0.05 * strength)
    )


def test_training_dataset_is_augmented_and_binary(synth_dirs):
    data = CarvanaData(synth_dirs["folders"])
    ids = data.train_ids()[:16]
    plain = get_dataset(data, ids, CONFIG.replace(augment=False), training=True)
    augmented = get_dataset(data, ids, CONFIG, training=True)
    (px, _), (ax, ay) = next(iter(plain)), next(iter(augmented))
    assert ax.shape == px.shape == (8, 32, 64, 3) and ay.shape == (8, 32, 64, 1)
    assert set(np.unique(ay.numpy())) <= {0.0, 1.0}
    assert 0.0 <= float(tf.reduce_min(ax)) and float(tf.reduce_max(ax)) <= 255.0
    # Same seed: the same first batch of ids, so any difference is the augmentation.
    assert not np.array_equal(ax.numpy(), px.numpy())


def test_bad_requests_are_refused(synth_dirs):
    data = CarvanaData(synth_dirs["folders"])
    with pytest.raises(ValueError, match="no images"):
        get_dataset(data, [], CONFIG, training=False)
    with pytest.raises(ValueError, match="augment_strength 1 only"):
        get_dataset(
            data,
            data.train_ids()[:2],
            CONFIG.replace(augment_strength=0.5),
            training=True,
            augmenter="stock",
        )
    with pytest.raises(ValueError, match="choose one of fused, stock"):
        get_dataset(data, data.train_ids()[:2], CONFIG, training=True, augmenter="albumentations")


def test_prediction_path_never_imports_keras_cv():
    code = (
        "import sys, carvana.inputs, carvana.models, carvana.evaluate, carvana.predict\n"
        "assert 'keras_cv' not in sys.modules, 'keras_cv imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


# -- every pair checked on the way in; a bad file is named --------------------------------------
def _claim_size(jpeg: bytes, height: int, width: int) -> bytes:
    at = max(jpeg.find(b"\xff\xc0"), jpeg.find(b"\xff\xc2"))
    return jpeg[: at + 5] + struct.pack(">HH", height, width) + jpeg[at + 9 :]


def _first_error(data, ids) -> str:
    """The message of the error iterating the dataset raises, as a user would see it."""
    with pytest.raises((DataError, tf.errors.OpError)) as caught:
        with named_data_errors():
            for _ in get_dataset(data, ids, CONFIG, training=True, cache=""):
                pass
    assert caught.type is DataError, caught.value
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_a_mask_of_another_size_stops_training_with_its_name(synth_copy):
    root = synth_copy("folders")
    data = CarvanaData(root)
    ids = data.train_ids()[:6]
    gif = root / "train_masks" / f"{ids[3]}_mask.gif"
    Image.fromarray(np.zeros((64, 96), np.uint8), mode="L").save(gif)
    message = _first_error(data, ids)
    assert f"{ids[3]}_mask.gif: mask is 96x64 but its image is 192x128" in message


@pytest.mark.parametrize("damage", ["truncated", "garbage", "absurd size"])
def test_a_corrupt_train_image_stops_training_with_its_name(synth_copy, damage):
    root = synth_copy("folders")
    data = CarvanaData(root)
    ids = data.train_ids()[:6]
    path = root / "train" / f"{ids[4]}.jpg"
    jpeg = path.read_bytes()
    broken = {
        "truncated": jpeg[: len(jpeg) // 2],
        "garbage": b"this is not a jpeg",
        "absurd size": _claim_size(jpeg, 65000, 65000),
    }[damage]
    path.write_bytes(broken)
    message = _first_error(data, ids)
    assert f"{ids[4]}.jpg" in message and "JPEG" in message


def test_opencv_warp_matches_tensorflows_projective_transform():
    import cv2

    from carvana import augment

    h, w = 24, 40
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    images = np.stack([xx, 2 * yy, xx + yy], axis=-1)[None].repeat(4, axis=0)
    masks = ((xx - 20) ** 2 / 100 + (yy - 12) ** 2 / 36 < 1).astype(np.float32)[None, ..., None]
    masks = masks.repeat(4, axis=0)
    layer = augment.RandomGeometry(seed=3)
    transforms = layer.get_random_transformation_batch(4, images=tf.constant(images)).numpy()
    for batch, interpolation, cv_flag in (
        (images, "BILINEAR", cv2.INTER_LINEAR),
        (masks, "NEAREST", cv2.INTER_NEAREST),
    ):
        expected = tf.raw_ops.ImageProjectiveTransformV3(
            images=batch,
            transforms=transforms,
            output_shape=[h, w],
            fill_value=0.0,
            interpolation=interpolation,
            fill_mode="CONSTANT",
        ).numpy()
        got = augment.warp_affine(batch, transforms, cv_flag)
        assert got.shape == batch.shape
        # OpenCV's bilinear weights are 5-bit fixed point: off by at most 1/32 of a pixel's
        # step, and the steepest channel here rises by 2 a pixel.
        np.testing.assert_allclose(got, expected, atol=2 / 32 + 1e-4)


def test_colour_affine_maps_pixels_and_clips():
    from carvana import augment

    images = np.array([[[[10.0, 20.0, 30.0], [250.0, 0.0, 100.0]]]], np.float32)
    swap_and_brighten = np.array([[0, 1, 0, 5], [1, 0, 0, 5], [0, 0, 2, 5]], np.float32)
    got = augment.color_affine(images, swap_and_brighten[None])
    np.testing.assert_allclose(got, [[[[25.0, 15.0, 65.0], [5.0, 255.0, 205.0]]]])
