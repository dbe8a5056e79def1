"""The synthetic dataset: deterministic, Kaggle-shaped, masks and CSV in agreement."""

import hashlib
import zipfile

import numpy as np
import pandas as pd
import pytest

from carvana import rle
from carvana.files import ANGLES, CarvanaData, decode_mask
from carvana.synth import synthesize
from carvana.synth_car import Car, Renderer, render_car


def _digest(root):
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize("zipped", [False, True])
def test_same_seed_gives_identical_bytes(tmp_path, zipped):
    kw = dict(train_cars=2, test_images=3, size=(48, 64), seed=7, zipped=zipped)
    a, b = synthesize(tmp_path / "a", **kw), synthesize(tmp_path / "b", **kw)
    assert _digest(a) == _digest(b)
    other = synthesize(tmp_path / "c", **{**kw, "seed": 8})
    assert _digest(other) != _digest(a)


def test_a_drawing_depends_only_on_car_angle_and_size():
    # synthesize reuses one Renderer for every image: nothing may carry over between drawings.
    cars = [Car(np.random.default_rng(seed)) for seed in (1, 2)]
    shared = Renderer((40, 56))
    first = {(i, a): shared.render(car, a) for i, car in enumerate(cars) for a in (1, 5, 12)}
    for (i, a), (image, mask) in reversed(list(first.items())):
        fresh_image, fresh_mask = Renderer((40, 56)).render(cars[i], a)
        assert np.array_equal(image, fresh_image) and np.array_equal(mask, fresh_mask)
    assert not np.array_equal(first[0, 1][1], first[0, 5][1])
    assert not np.array_equal(first[0, 5][1], first[1, 5][1])
    image, mask = render_car((40, 56), seed=3, angle=7)
    again = render_car((40, 56), seed=3, angle=7)
    assert np.array_equal(image, again[0]) and np.array_equal(mask, again[1])


def test_folder_layout_names_and_sizes(synth_dirs):
    root = synth_dirs["folders"]
    data = CarvanaData(root)
    ids = data.train_ids()
    cars = sorted({i.rsplit("_", 1)[0] for i in ids})
    assert len(cars) == 6 and len(ids) == 6 * 16
    assert all(len(c) == 12 and int(c, 16) >= 0 for c in cars)
    assert sorted(p.name for p in (root / "train").iterdir()) == [f"{i}.jpg" for i in ids]
    assert sorted(p.name for p in (root / "train_masks").iterdir()) == [
        f"{i}_mask.gif" for i in ids
    ]
    assert data.image_size() == (128, 192)
    image, mask = data.read_pair(ids[0])
    assert image.shape == (128, 192, 3) and image.dtype == np.uint8
    assert mask.shape == (128, 192) and set(np.unique(mask)) == {0, 1}
    test = data.test_names()
    assert len(test) == 12
    assert {t.rsplit("_", 1)[0] for t in test}.isdisjoint(cars)
    assert [t.rsplit("_", 1)[1] for t in test] == [f"{a}.jpg" for a in ANGLES[:12]]


def test_csv_equals_gifs(synth_dirs):
    data = CarvanaData(synth_dirs["folders"])
    table = data.train_masks_table()
    assert list(table["img"]) == [f"{i}.jpg" for i in data.train_ids()]
    for name, code in zip(table["img"], table["rle_mask"], strict=True):
        mask = data.read_mask(name[:-4])
        assert rle.encode(mask) == code
        assert np.array_equal(rle.decode(code, mask.shape), mask)


def test_masks_look_like_cars(synth_dirs):
    data = CarvanaData(synth_dirs["folders"])
    table = data.train_masks_table()
    h, w = data.image_size()
    coverage = table["rle_mask"].map(lambda s: rle.parse(s)[:, 1].sum() / (h * w))
    assert coverage.between(0.05, 0.6).all()
    # Turntable: a side view (05) covers more of the frame than the front view (01).
    angle = table["img"].str[-6:-4]
    assert coverage[angle == "05"].mean() > 1.3 * coverage[angle == "01"].mean()
    # A light studio around the car, dark tyres and glass on it; the car stays inside the frame.
    for image_id in data.train_ids()[::5]:
        image, mask = data.read_pair(image_id)
        assert np.percentile(image[mask == 0], 1) > 110
        assert np.percentile(image[mask == 1], 5) < 60
        assert mask[0].sum() == mask[-1].sum() == mask[:, 0].sum() == mask[:, -1].sum() == 0


def test_gif_is_a_palette_image_read_back_as_0_1(synth_dirs):
    from PIL import Image

    path = next((synth_dirs["folders"] / "train_masks").iterdir())
    with Image.open(path) as image:
        assert image.format == "GIF" and image.mode == "P"
    assert set(np.unique(decode_mask(path.read_bytes()))) == {0, 1}


def test_metadata_and_sample_submission(synth_dirs):
    data = CarvanaData(synth_dirs["folders"])
    meta = data.metadata()
    assert list(meta.columns) == ["id", "year", "make", "model", "trim1", "trim2"]
    cars = {i.rsplit("_", 1)[0] for i in data.train_ids()}
    test_cars = {t.rsplit("_", 1)[0] for t in data.test_names()}
    assert set(meta["id"]) == cars | test_cars
    assert meta["year"].between(2000, 2025).all() and meta["make"].notna().all()
    sample = data.sample_submission()
    assert list(sample["img"]) == data.test_names()
    for code in sample["rle_mask"]:
        rle.validate(code, data.image_size())


def test_zip_members(synth_dirs):
    root = synth_dirs["zipped"]
    assert sorted(p.name for p in root.iterdir() if p.suffix == ".zip") == sorted(
        ["train.zip", "train_masks.zip", "test.zip", "train_masks.csv.zip", "metadata.csv.zip",
         "sample_submission.csv.zip"]
    )  # fmt: skip
    folders = synth_dirs["folders"]
    for name in ("train", "train_masks", "test"):
        with zipfile.ZipFile(root / f"{name}.zip") as archive:
            files = [m for m in archive.namelist() if not m.endswith("/")]
            assert all(m.startswith(f"{name}/") for m in archive.namelist())
            assert sorted(files) == sorted(f"{name}/{p.name}" for p in (folders / name).iterdir())
            assert all(i.date_time == (1980, 1, 1, 0, 0, 0) for i in archive.infolist())
    for name in ("train_masks.csv", "metadata.csv", "sample_submission.csv"):
        with zipfile.ZipFile(root / f"{name}.zip") as archive:
            assert archive.namelist() == [name]
            assert archive.read(name) == (folders / name).read_bytes()
    assert pd.read_csv(root / "train_masks.csv.zip").shape == (96, 2)


def test_refuses_a_folder_it_did_not_make(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not empty"):
        synthesize(tmp_path, train_cars=1, test_images=0, size=(32, 48))
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_rerun_replaces_its_own_output(tmp_path):
    synthesize(tmp_path, train_cars=2, test_images=4, size=(32, 48), zipped=True)
    synthesize(tmp_path, train_cars=1, test_images=2, size=(32, 48))
    data = CarvanaData(tmp_path)
    assert not (tmp_path / "train.zip").exists()
    assert len(data.train_ids()) == 16 and len(data.test_names()) == 2


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="at least 16x16"):
        synthesize(tmp_path / "x", size=(8, 8))
    with pytest.raises(ValueError, match="train_cars"):
        synthesize(tmp_path / "y", train_cars=0)
    with pytest.raises(ValueError, match="angle must be 1..16, got 17"):
        render_car((32, 48), angle=17)
