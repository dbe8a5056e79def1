"""The EDA report on the synthetic set, with and without metadata, zipped or not."""

import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from carvana import cli, rle
from carvana.eda import _pick_samples, mask_coverage, run_eda
from carvana.files import CarvanaData
from carvana.markdown import frame_table, markdown_table


def _png_size(path):
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


@pytest.mark.parametrize("layout", ["folders", "zipped"])
def test_report_with_metadata(synth_dirs, tmp_path, layout):
    data = CarvanaData(synth_dirs[layout])
    report = run_eda(data, tmp_path / "eda", samples=4)
    assert report == tmp_path / "eda" / "report.md"
    text = report.read_text()
    for line in (
        "- cars: 6 (6 with all 16 angles)",
        "- training images: 96",
        "- angles: 16 (01, 02",
        "- test images: 12",
        "- image size: 192 x 128 (width x height)",
        "## Merged table (head)",
        "| id | img | mask_file | rle_mask | year | make | model | trim1 | trim2 |",
        "over 6 training cars",
        "## Car coverage",
        "| angle | count | mean | std | min | max |",
    ):
        assert line in text, line
    for figure in ("makes.png", "years.png", "coverage_by_angle.png", "samples.png"):
        assert f"]({figure})" in text
        width, height = _png_size(tmp_path / "eda" / figure)
        assert width > 200 and height > 100
    makes = data.metadata().set_index("id").loc[sorted({i[:12] for i in data.train_ids()}), "make"]
    for make, count in makes.value_counts().items():
        assert f"| {make} | {count} |" in text


def test_report_without_metadata(synth_copy, tmp_path):
    root = synth_copy("folders")
    (root / "metadata.csv").unlink()
    shutil.rmtree(root / "test")
    with pytest.warns(UserWarning, match="no metadata.csv"):
        report = run_eda(CarvanaData(root), tmp_path / "eda", samples=3)
    text = report.read_text()
    assert f"No metadata.csv in {root}: makes and years are unknown." in text
    assert "- test images: none" in text
    assert not (tmp_path / "eda" / "makes.png").exists()
    assert (tmp_path / "eda" / "coverage_by_angle.png").is_file()
    assert (tmp_path / "eda" / "samples.png").is_file()


def test_coverage_from_csv_equals_coverage_from_gifs(synth_copy, capsys):
    root = synth_copy("folders")
    data = CarvanaData(root)
    table = data.merged_table()
    from_csv = mask_coverage(data, table)
    expected = [data.read_mask(i[:-4]).mean() for i in table["img"]]
    np.testing.assert_allclose(from_csv, expected)
    assert "coverage from train_masks.csv" in capsys.readouterr().err  # the progress bar
    (root / "train_masks.csv").unlink()
    data = CarvanaData(root)
    table = data.merged_table()
    assert table["rle_mask"].isna().all()
    np.testing.assert_allclose(mask_coverage(data, table), expected)
    assert "coverage from mask GIFs" in capsys.readouterr().err
    report = run_eda(data, root / "eda", samples=2).read_text()
    assert "train_masks.csv: no (masks read from GIFs)" in report


def test_coverage_csv_written(synth_dirs, tmp_path):
    data = CarvanaData(synth_dirs["folders"])
    run_eda(data, tmp_path, samples=1)
    coverage = pd.read_csv(tmp_path / "coverage.csv")
    table = data.train_masks_table()
    h, w = data.image_size()
    first = rle.decode(table["rle_mask"][0], (h, w)).mean()
    assert list(coverage["img"]) == list(table["img"])
    assert coverage["coverage"][0] == pytest.approx(first, abs=1e-6)


def test_pick_samples_spreads_cars_and_angles():
    ids = [f"{c:012x}_{a:02d}" for c in range(10) for a in range(1, 17)]
    picked = _pick_samples(ids, 8)
    assert len(picked) == 8 == len({p[:12] for p in picked})
    assert len({p[-2:] for p in picked}) == 8
    assert _pick_samples(ids[:3], 8) == ids[:3]


def test_markdown_table_escapes():
    frame = pd.DataFrame({"a": ["x|y", None], "b": [1.5, float("nan")]})
    assert frame_table(frame).splitlines() == [
        "| a | b |",
        "|---|---|",
        "| x\\|y | 1.5 |",
        "|  |  |",
    ]


def test_one_markdown_table_for_eda_and_evaluate():
    import carvana.evaluate

    assert markdown_table(["run", "Dice"], [["a", "0.9"], ["b|c", None]]).splitlines() == [
        "| run | Dice |",
        "|---|---|",
        "| a | 0.9 |",
        "| b\\|c |  |",
    ]
    assert not hasattr(carvana.evaluate, "_table") and not hasattr(carvana.evaluate, "_angle")


def test_coverage_rejects_an_rle_that_would_overflow(synth_dirs):
    data = CarvanaData(synth_dirs["folders"])
    table = data.merged_table().head(2).copy()
    table.loc[1, "rle_mask"] = "4611686018427387905 4611686018427387905"
    with pytest.raises(rle.RLEError, match="pair 1: start 4611686018427387905"):
        mask_coverage(data, table)
    table.loc[1, "rle_mask"] = "99999999999999999999  1"  # OverflowError before
    with pytest.raises(rle.RLEError):
        mask_coverage(data, table)


# -- the command line: one line on stderr, exit 2 -----------------------------------------------
def _cut(path, keep):
    path.write_bytes(path.read_bytes()[:keep])


EDA_CASES = {
    "truncated train.zip": ("zipped", lambda r: _cut(r / "train.zip", 5000), "train.zip: not a readable zip archive"),
    "truncated test.zip": ("zipped", lambda r: _cut(r / "test.zip", 5000), "test.zip: not a readable zip archive"),
    "truncated train_masks.zip": ("zipped", lambda r: _cut(r / "train_masks.zip", 5000), "train_masks.zip: not a readable zip archive"),
    "truncated train_masks.csv.zip": ("zipped", lambda r: _cut(r / "train_masks.csv.zip", 100), "train_masks.csv.zip: not a readable zip archive"),
    "truncated metadata.csv.zip": ("zipped", lambda r: _cut(r / "metadata.csv.zip", 100), "metadata.csv.zip: not a readable zip archive"),
    "empty train_masks.csv": ("folders", lambda r: _cut(r / "train_masks.csv", 0), "train_masks.csv: empty file (no header line)"),
    "truncated JPEG header": ("folders", lambda r: _cut(sorted((r / "train").iterdir())[0], 20), "_01.jpg: not a readable JPEG header"),
    "overflowing RLE row": ("folders", lambda r: (r / "train_masks.csv").write_text("img,rle_mask\n" + sorted(p.name for p in (r / "train").iterdir())[0] + ",4611686018427387905 4611686018427387905\n"), "bad RLE: pair 1: start 4611686018427387905 (19 digits) is beyond any mask"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(EDA_CASES))
def test_cli_eda_bad_input_is_one_line(synth_copy, tmp_path, capsys, monkeypatch, case):
    monkeypatch.delenv("CARVANA_DEBUG", raising=False)
    layout, damage, message = EDA_CASES[case]
    root = synth_copy(layout)
    damage(root)
    assert cli.main(["eda", "--data", str(root), "--out", str(tmp_path / "eda")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("carvana: error: ") and message in err[0], err
