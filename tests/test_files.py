"""The data layer on the synthetic set: both layouts agree, bad inputs are named clearly."""

import io
import re
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from carvana.files import CarvanaData, DataError, car_id, image_id, split_by_car, spread


def _gif(array: np.ndarray) -> bytes:
    image = Image.fromarray(array.astype(np.uint8), mode="P")
    image.putpalette([0, 0, 0, 255, 255, 255] + [128, 128, 128] * 254)
    buffer = io.BytesIO()
    image.save(buffer, format="GIF", optimize=False)  # keep the palette indices as given
    return buffer.getvalue()


def _replace_member(archive_path, member, data):
    """Rewrite a zip with one member's bytes replaced (or removed when data is None)."""
    with zipfile.ZipFile(archive_path) as src:
        items = [(info, src.read(info)) for info in src.infolist()]
    with zipfile.ZipFile(archive_path, "w") as dst:
        for info, content in items:
            if info.filename == member:
                if data is None:
                    continue
                content = data
            dst.writestr(info, content)


# -- both layouts ------------------------------------------------------------------------------
def test_folders_and_zips_are_the_same_data(synth_dirs):
    folders, zipped = CarvanaData(synth_dirs["folders"]), CarvanaData(synth_dirs["zipped"])
    assert zipped.train.is_zip and not folders.train.is_zip
    assert folders.train_ids() == zipped.train_ids()
    assert folders.test_names() == zipped.test_names()
    assert folders.image_size() == zipped.image_size() == (128, 192)
    pd.testing.assert_frame_equal(folders.merged_table(), zipped.merged_table())
    pd.testing.assert_frame_equal(folders.metadata(), zipped.metadata())
    pd.testing.assert_frame_equal(folders.sample_submission(), zipped.sample_submission())
    for i in folders.train_ids()[::9]:
        a, b = folders.read_pair(i), zipped.read_pair(i)
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    for name in folders.test_names()[::5]:
        assert np.array_equal(folders.read_test_image(name), zipped.read_test_image(name))


def test_merged_table_columns_and_join(synth_dirs):
    table = CarvanaData(synth_dirs["folders"]).merged_table()
    assert list(table.columns) == [
        "id", "img", "mask_file", "rle_mask", "year", "make", "model", "trim1", "trim2"
    ]  # fmt: skip
    assert len(table) == 96 and table["id"].nunique() == 6
    assert (table["img"].map(car_id) == table["id"]).all()
    assert (table["mask_file"] == table["img"].str.replace(".jpg", "_mask.gif")).all()
    assert table["rle_mask"].str.len().gt(0).all() and table["make"].notna().all()
    # Every car has one make/year across its 16 angles.
    assert (table.groupby("id")[["make", "year"]].nunique() == 1).all().all()


def test_ids():
    assert car_id("0cdf5b5d0ce1_01.jpg") == "0cdf5b5d0ce1"
    assert image_id("0cdf5b5d0ce1_01.jpg") == "0cdf5b5d0ce1_01"
    assert image_id("train_masks/0cdf5b5d0ce1_01_mask.gif") == "0cdf5b5d0ce1_01"


# -- split ---------------------------------------------------------------------------------------
def test_split_by_car_keeps_cars_whole_and_is_deterministic(synth_dirs):
    ids = CarvanaData(synth_dirs["folders"]).train_ids()
    train, val = split_by_car(ids, val_fraction=0.34, seed=3)
    train_cars, val_cars = {car_id(i) for i in train}, {car_id(i) for i in val}
    assert train_cars.isdisjoint(val_cars) and len(val_cars) == 2 and len(train_cars) == 4
    assert sorted(train + val) == sorted(ids) and len(val) == 32
    assert split_by_car(ids, 0.34, seed=3) == (train, val)
    assert split_by_car(list(reversed(ids)), 0.34, seed=3)[1] == list(reversed(val))
    others = {frozenset(car_id(i) for i in split_by_car(ids, 0.34, seed=s)[1]) for s in range(8)}
    assert len(others) > 1  # the seed matters


def test_split_edges():
    ids = [f"{c}_{a:02d}" for c in ("aaa", "bbb") for a in range(1, 17)]
    train, val = split_by_car(ids, 0.01, seed=0)
    assert len(val) == 16 and len(train) == 16  # at least one validation car
    assert split_by_car(ids, 0.0, seed=0) == (ids, [])
    with pytest.raises(ValueError, match="val_fraction must be in \\[0, 1\\), got 1.5"):
        split_by_car(ids, 1.5)


# -- bad inputs ----------------------------------------------------------------------------------
def test_corrupt_jpeg_is_named(synth_copy):
    root = synth_copy("folders")
    data = CarvanaData(root)
    victim = data.train_ids()[3]
    path = root / "train" / f"{victim}.jpg"
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DataError, match=re.escape(str(path)) + ": not a readable JPEG"):
        data.read_image(victim)
    with pytest.raises(DataError, match="not a readable JPEG"):
        data.read_pair(victim)
    data.read_pair(data.train_ids()[4])  # its neighbours still read


def test_corrupt_jpeg_in_zip_is_named(synth_copy):
    root = synth_copy("zipped")
    victim = CarvanaData(root).train_ids()[0]
    _replace_member(root / "train.zip", f"train/{victim}.jpg", b"\xff\xd8garbage")
    data = CarvanaData(root)
    with pytest.raises(DataError, match=re.escape(f"train.zip:train/{victim}.jpg: not a readable")):
        data.read_image(victim)


def test_image_without_mask(synth_copy):
    root = synth_copy("folders")
    data = CarvanaData(root)
    victim = data.train_ids()[5]
    (root / "train_masks" / f"{victim}_mask.gif").unlink()
    data = CarvanaData(root)
    with pytest.raises(DataError, match=f"{victim}.jpg: image has no mask .*{victim}_mask.gif"):
        data.read_mask(victim)
    with pytest.raises(DataError, match=f"1 training image\\(s\\) without a mask, e.g. .*{victim}"):
        data.merged_table()


def test_mask_of_another_size(synth_copy):
    root = synth_copy("zipped")
    victim = CarvanaData(root).train_ids()[7]
    member = f"train_masks/{victim}_mask.gif"
    _replace_member(root / "train_masks.zip", member, _gif(np.ones((64, 96))))
    data = CarvanaData(root)
    with pytest.raises(DataError, match=f"{member}: mask is 96x64 but its image is 192x128"):
        data.read_pair(victim)


@pytest.mark.parametrize("kind", ["gif 0/2", "grey 0/255"])
def test_mask_values_other_than_0_1(synth_copy, kind):
    root = synth_copy("folders")
    data = CarvanaData(root)
    victim = data.train_ids()[2]
    path = root / "train_masks" / f"{victim}_mask.gif"
    mask = data.read_mask(victim)
    if kind == "gif 0/2":  # palette indices shifted
        path.write_bytes(_gif(mask * 2))
        found = "[0, 2]"
    else:  # a greyscale 0/255 image saved in the mask's place
        buffer = io.BytesIO()
        Image.fromarray(mask * 255, mode="L").save(buffer, format="PNG")
        path.write_bytes(buffer.getvalue())
        found = "[0, 255]"
    message = f"{path}: mask values must be 0/1, found {found}"
    with pytest.raises(DataError, match=re.escape(message)):
        data.read_mask(victim)
    with pytest.raises(DataError, match="mask values must be 0/1"):
        data.read_pair(victim)


@pytest.mark.parametrize(
    "bad,message",
    [
        ("12 7 3", "odd number"),
        ("5 x", "value 2 'x' is not a plain number"),
        ("40000 10", "pair 1: start 40000 is beyond the 128x192 mask \\(24576 pixels\\)"),
        ("4611686018427387905 4611686018427387905", "pair 1: start 4611686018427387905 \\(19"),
        ("1\t5", "value 1 '1\\\\t5' is not a plain number"),
    ],
)
def test_malformed_rle_row_names_the_line(synth_copy, bad, message):
    root = synth_copy("folders")
    path = root / "train_masks.csv"
    lines = path.read_text().splitlines()
    img = lines[4].split(",")[0]
    lines[4] = f"{img},{bad}"  # the 5th line of the file
    path.write_text("\n".join(lines) + "\n")
    data = CarvanaData(root)
    with pytest.raises(DataError, match=f"train_masks.csv: line 5 \\({img}\\): bad RLE: {message}"):
        data.train_masks_table()
    with pytest.raises(DataError, match="line 5"):
        data.merged_table()


def test_missing_metadata_warns_and_table_is_built(synth_copy, tmp_path):
    root = synth_copy("zipped")
    (root / "metadata.csv.zip").unlink()
    data = CarvanaData(root)
    with pytest.warns(UserWarning, match="no metadata.csv"):
        assert data.metadata() is None
    with pytest.warns(UserWarning, match="no metadata.csv"):
        table = data.merged_table()
    assert len(table) == 96 and table["make"].isna().all() and table["rle_mask"].notna().all()

    from carvana.eda import run_eda

    with pytest.warns(UserWarning, match="no metadata.csv"):
        report = run_eda(data, tmp_path / "eda", samples=2)
    assert "metadata" in report.read_text().lower()


def test_folder_without_carvana_files(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(DataError, match="no Carvana data found; looked for train.zip or train/"):
        CarvanaData(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        CarvanaData(tmp_path / "nowhere")


def test_missing_parts_are_named(synth_copy):
    root = synth_copy("folders")
    shutil.rmtree(root / "test")
    (root / "sample_submission.csv").unlink()
    data = CarvanaData(root)
    with pytest.raises(DataError, match="no test found"):
        data.test_names()
    with pytest.raises(DataError, match="no sample_submission.csv"):
        data.sample_submission()
    assert len(data.train_ids()) == 96


# -- zip members ---------------------------------------------------------------------------------
def _add_members(archive_path, members: dict):
    with zipfile.ZipFile(archive_path, "a") as archive:
        for name, data in members.items():
            archive.writestr(name, data)


def test_macos_resource_files_and_hidden_files_are_ignored(synth_copy):
    root = synth_copy("zipped")
    data = CarvanaData(root)
    names, first = data.test_names(), data.test_names()[0]
    image = data.read_test_image(first)
    junk = b"\x00\x05\x16\x07 mac resource fork"
    _add_members(
        root / "test.zip",
        {
            f"__MACOSX/test/._{first}": junk,
            "__MACOSX/test/._zzzz_01.jpg": junk,
            "test/._zzzz_02.jpg": junk,
            "test/.hidden_03.jpg": junk,
            ".DS_Store": junk,
            "test/.thumbs/yyyy_01.jpg": junk,
        },
    )
    data = CarvanaData(root)
    assert data.test_names() == names
    assert np.array_equal(data.read_test_image(first), image)


def test_hidden_files_in_a_folder_are_ignored(synth_copy):
    root = synth_copy("folders")
    names = CarvanaData(root).test_names()
    (root / "test" / f"._{names[0]}").write_bytes(b"resource fork")
    (root / "test" / ".x_01.jpg").write_bytes(b"hidden")
    assert CarvanaData(root).test_names() == names


def test_two_members_for_one_image_is_an_error_naming_both(synth_copy):
    root = synth_copy("zipped")
    first = CarvanaData(root).test_names()[0]
    _add_members(root / "test.zip", {f"{first}": b"a second copy at the zip root"})
    data = CarvanaData(root)
    message = f"test.zip: two members for one image: test/{first} and {first}"
    with pytest.raises(DataError, match=re.escape(message)):
        data.test_names()


def test_members_of_other_folders_are_not_images(synth_copy):
    root = synth_copy("zipped")
    data = CarvanaData(root)
    train = data.train_ids()
    _add_members(root / "train.zip", {"backup/zzzz_01.jpg": b"x", "train/sub/zzzz_02.jpg": b"x"})
    assert CarvanaData(root).train_ids() == train


def test_members_at_the_zip_root_are_accepted(synth_copy):
    root = synth_copy("zipped")
    data = CarvanaData(root)
    names, image = data.test_names(), data.read_test_image(data.test_names()[0])
    with zipfile.ZipFile(root / "test.zip") as src:
        items = [(Path(i.filename).name, src.read(i)) for i in src.infolist() if not i.is_dir()]
    with zipfile.ZipFile(root / "test.zip", "w") as dst:
        for name, content in items:
            dst.writestr(name, content)
    data = CarvanaData(root)
    assert data.test_names() == names
    assert np.array_equal(data.read_test_image(names[0]), image)


def test_hq_zip_members_are_under_their_own_folder(synth_copy):
    root = synth_copy("zipped")
    with zipfile.ZipFile(root / "train.zip") as src:
        items = [(i.filename.replace("train/", "train_hq/"), src.read(i)) for i in src.infolist()]
    with zipfile.ZipFile(root / "train_hq.zip", "w") as dst:
        for name, content in items:
            dst.writestr(name, content)
    data = CarvanaData(root, hq=True)
    assert data.train_ids() == CarvanaData(root).train_ids()
    assert data.read_image(data.train_ids()[0]).shape == (128, 192, 3)


# -- corrupt archives and files -----------------------------------------------------------------
ZIPS = {
    "train.zip": lambda d: d.train_ids(),
    "train_masks.zip": lambda d: d.read_mask(d.train_ids()[0]),
    "test.zip": lambda d: d.test_names(),
    "train_masks.csv.zip": lambda d: d.train_masks_table(),
    "metadata.csv.zip": lambda d: d.metadata(),
    "sample_submission.csv.zip": lambda d: d.sample_submission(),
}


@pytest.mark.parametrize("damage", ["truncated", "corrupt"])
@pytest.mark.parametrize("name", list(ZIPS))
def test_truncated_or_corrupt_zip_is_one_clear_error(synth_copy, name, damage):
    root = synth_copy("zipped")
    path = root / name
    raw = bytearray(path.read_bytes())
    if damage == "truncated":
        raw = raw[: len(raw) // 2]
    else:  # the directory intact, the first member's data overwritten
        raw[40:240] = bytes(200)
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError) as caught:
        data = CarvanaData(root)
        ZIPS[name](data)
        if name == "train.zip":
            data.read_image(data.train_ids()[0])
        elif name == "test.zip":
            data.read_test_image(data.test_names()[0])
    message = str(caught.value)
    assert str(path) in message and "\n" not in message
    assert re.search("not a readable zip|cannot read|not a readable|corrupt|CSV", message), message


def test_a_zip_of_several_csv_files_is_named(synth_copy):
    root = synth_copy("zipped")
    _add_members(root / "metadata.csv.zip", {"notes.csv": b"a,b\n1,2\n"})
    with pytest.raises(DataError, match=r"metadata.csv.zip: holds 2 files \(metadata.csv, notes"):
        CarvanaData(root).metadata()


def test_macos_resource_file_beside_a_csv_is_ignored(synth_copy):
    root = synth_copy("zipped")
    expected = CarvanaData(root).sample_submission()
    _add_members(root / "sample_submission.csv.zip", {"__MACOSX/._sample_submission.csv": b"x"})
    pd.testing.assert_frame_equal(CarvanaData(root).sample_submission(), expected)


@pytest.mark.parametrize("name", ["sample_submission.csv", "train_masks.csv", "metadata.csv"])
def test_empty_csv_is_named(synth_copy, name):
    root = synth_copy("folders")
    (root / name).write_bytes(b"")
    data = CarvanaData(root)
    read = {
        "sample_submission.csv": data.sample_submission,
        "train_masks.csv": data.train_masks_table,
        "metadata.csv": data.metadata,
    }[name]
    with pytest.raises(DataError, match=re.escape(f"{root / name}: empty file")):
        read()


def test_truncated_jpeg_header_is_named(synth_copy):
    root = synth_copy("folders")
    data = CarvanaData(root)
    first = root / "train" / f"{data.train_ids()[0]}.jpg"
    first.write_bytes(first.read_bytes()[:20])
    with pytest.raises(DataError, match=re.escape(f"{first}: not a readable JPEG header")):
        data.image_size()
    with pytest.raises(DataError, match=re.escape(f"{first}: not a readable JPEG")):
        data.read_pair(data.train_ids()[0])


@pytest.mark.parametrize(
    "count, expected",
    [
        (0, list(range(10))),
        (10, list(range(10))),
        (12, list(range(10))),
        (1, [0]),
        (2, [0, 5]),
        (3, [0, 3, 6]),
        (4, [0, 2, 5, 7]),
    ],
)
def test_spread_picks_evenly_spaced_items(count, expected):
    assert spread(list(range(10)), count) == expected
