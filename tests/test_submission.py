"""Submission files: crash-tolerant writer/reader, validation of every defect, merge of shards."""

import gzip
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from carvana import cli, rle
from carvana.files import CarvanaData
from carvana.submission import (
    SubmissionWriter,
    TruncatedError,
    expected_ids,
    iter_lines,
    merge,
    read_rows,
    report_problems,
    validate,
)

SHAPE = (4, 5)  # 20 pixels
NAMES = [f"car_{i:02d}.jpg" for i in range(1, 7)]


def write_csv(path, lines, gz=True):
    text = "".join(line + "\n" for line in lines).encode()
    path.write_bytes(gzip.compress(text) if gz else text)
    return path


def good_lines():
    return ["img,rle_mask"] + [f"{n},{i + 1} 2 {i + 10} 3" for i, n in enumerate(NAMES)]


# -- writer and reader --------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".csv.gz", ".csv"])
def test_writer_round_trip_and_rows_readable_after_each_flush(tmp_path, suffix):
    path = tmp_path / f"sub{suffix}"
    writer = SubmissionWriter(path)
    writer.write("a.jpg", "1 2")
    writer.flush()
    # Still open (no gzip trailer): a reader sees the flushed row, strict mode sees the cut.
    assert list(read_rows(path, strict=False)) == [("a.jpg", "1 2")]
    if suffix == ".csv.gz":
        with pytest.raises(TruncatedError, match="ends early"):
            list(read_rows(path))
    writer.write("b.jpg", "")
    writer.close()
    assert list(read_rows(path)) == [("a.jpg", "1 2"), ("b.jpg", "")]
    if suffix == ".csv.gz":
        with gzip.open(path, "rt") as f:  # a standard single-member gzip file
            assert f.read() == "img,rle_mask\na.jpg,1 2\nb.jpg,\n"


def test_resume_after_a_cut_at_any_byte_keeps_exactly_the_complete_rows(tmp_path):
    path = tmp_path / "sub.csv.gz.partial"
    rows = [(f"img_{i:03d}.jpg", " ".join(str(v) for v in range(1, 2 * i + 3))) for i in range(30)]
    writer = SubmissionWriter(path, gz=True)
    flushed_at = []  # (file size after the flush, rows flushed so far)
    for i, (name, text) in enumerate(rows, 1):
        writer.write(name, text)
        if i % 4 == 0:
            writer.flush()
            flushed_at.append((path.stat().st_size, i))
    writer.close()
    whole = path.read_bytes()
    for cut in list(range(0, len(whole), 7)) + [len(whole) - 1]:
        path.write_bytes(whole[:cut])
        resumed, done = SubmissionWriter.resume(path, gz=True)
        resumed.write("late.jpg", "5 5")
        resumed.close()
        kept = list(read_rows(path))  # clean again: strict reading succeeds
        assert kept[:-1] == rows[: len(done)], f"cut at {cut}: not a prefix of whole rows"
        assert kept[-1] == ("late.jpg", "5 5")
        must_have = max([n for size, n in flushed_at if size <= cut], default=0)
        assert len(done) >= must_have, f"cut at {cut}: lost flushed rows"


def test_resume_plain_csv_cut_mid_row_and_keeps_only_wanted_rows_once(tmp_path):
    path = tmp_path / "sub.csv.partial"
    path.write_text("img,rle_mask\na.jpg,1 2\nb.jpg,3 4\na.jpg,1 2\nc.jpg,5 6\nd.jpg,7")
    writer, done = SubmissionWriter.resume(path, wanted={"a.jpg", "c.jpg", "d.jpg"}, gz=False)
    writer.close()
    assert done == ["a.jpg", "c.jpg"]  # b unwanted, the second a a duplicate, d cut mid-row
    assert path.read_text() == "img,rle_mask\na.jpg,1 2\nc.jpg,5 6\n"


def test_reader_joins_gzip_members_and_strict_mode_rejects_corrupt_data(tmp_path):
    path = tmp_path / "multi.csv.gz"
    path.write_bytes(gzip.compress(b"img,rle_mask\na.jpg,1 1\n") + gzip.compress(b"b.jpg,2 2\n"))
    assert list(read_rows(path)) == [("a.jpg", "1 1"), ("b.jpg", "2 2")]
    data = bytearray(path.read_bytes())
    data[15:25] = b"\xff" * 10
    path.write_bytes(bytes(data))
    with pytest.raises(TruncatedError):
        list(iter_lines(path))


# -- validate -----------------------------------------------------------------------------------
def test_validate_accepts_a_good_file_gzip_or_plain(tmp_path):
    for gz in (True, False):
        path = write_csv(tmp_path / f"ok{gz}.csv", good_lines(), gz=gz)
        assert validate(path, expected_names=NAMES, shape=SHAPE) == []


@pytest.mark.parametrize(
    "edit, expected",
    [
        (lambda ls: ["image,rle"] + ls[1:], ["line 1: header must be img,rle_mask"]),
        (lambda ls: ls[:3] + ls[4:], ["missing id car_03.jpg"]),
        (lambda ls: ls + ["stranger.jpg,1 1"], ["line 8 (stranger.jpg): unknown id"]),
        (lambda ls: ls + [ls[2]], ["line 8 (car_02.jpg): duplicate id, first on line 3"]),
        (
            lambda ls: ls[:4] + ["car_04.jpg,1 2 3"] + ls[5:],
            ["line 5 (car_04.jpg): bad RLE", "odd"],
        ),
        (lambda ls: ls[:2] + ["car_02.jpg,9 1 3 1"] + ls[3:], ["line 3 (car_02.jpg)", "not after"]),
        (lambda ls: ls[:6] + ["car_06.jpg,1 5 4 2"] + ls[7:], ["line 7 (car_06.jpg)", "overlaps"]),
        (lambda ls: ls[:5] + ["car_05.jpg,18 4"] + ls[6:], ["line 6 (car_05.jpg)", "beyond"]),
        (lambda ls: ls[:1] + ["car_01.jpg,0 3"] + ls[2:], ["line 2 (car_01.jpg)", "not positive"]),
        (
            lambda ls: ls[:1] + ["car_01.jpg,1 x"] + ls[2:],
            ["line 2 (car_01.jpg)", "value 2 'x' is not a plain number"],
        ),
        (lambda ls: ls[:2] + ["car_02.jpg"] + ls[3:], ["line 3: expected 2 fields", "missing id"]),
    ],
    ids=[
        "header",
        "missing",
        "unknown",
        "duplicate",
        "odd",
        "descending",
        "overlap",
        "out-of-bounds",
        "zero-start",
        "not-a-number",
        "field-count",
    ],
)
def test_validate_names_each_defect_with_its_line(tmp_path, edit, expected):
    path = write_csv(tmp_path / "bad.csv.gz", edit(good_lines()))
    problems = validate(path, expected_names=NAMES, shape=SHAPE)
    text = "\n".join(problems)
    for fragment in expected:
        assert fragment in text, text
    assert len(problems) == len([f for f in expected if f.startswith(("line", "missing"))])


def test_validate_reports_a_truncated_file_and_an_empty_one(tmp_path):
    whole = gzip.compress("".join(line + "\n" for line in good_lines()).encode())
    cut = tmp_path / "cut.csv.gz"
    cut.write_bytes(whole[: len(whole) - 10])
    problems = validate(cut, expected_names=NAMES, shape=SHAPE)
    assert any("truncated" in p for p in problems), problems
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    problems = validate(empty, expected_names=NAMES, shape=SHAPE)
    assert problems[0] == "empty file: no header" and len(problems) == 1 + len(NAMES)


def test_validate_against_data_uses_sample_submission_and_image_size(synth_dirs, tmp_path):
    data = CarvanaData(synth_dirs["zipped"])
    names = expected_ids(data)
    assert names == data.test_names() and len(names) == 12
    h, w = data.image_size()
    path = tmp_path / "sub.csv.gz"
    with SubmissionWriter(path) as writer:
        for name in names:
            writer.write(name, f"1 {h * w}")
    assert validate(path, data) == []
    with SubmissionWriter(path) as writer:
        for name in names:
            writer.write(name, f"2 {h * w}")  # one pixel too far at this size
    problems = validate(path, data)
    assert len(problems) == 12 and "beyond the 128x192 mask" in problems[0]


def test_report_problems_prints_first_fifty_and_the_count(capsys):
    report_problems("s.csv", [f"line {i}: bad" for i in range(60)])
    out, err = capsys.readouterr()
    assert out == "" and "s.csv: line 49: bad" in err and "line 50:" not in err
    assert "10 more" in err and "60 problem(s)" in err
    report_problems("s.csv", [])
    assert capsys.readouterr().out == "s.csv: OK\n"


BAD_RLE_ROWS = [
    # (rle_mask, what the problem line says); a 4x5 image has 20 pixels
    ("4611686018427387905 4611686018427387905", "pair 1: start 4611686018427387905 (19 digits)"),
    ("9 4611686018427387905", "pair 1: length 4611686018427387905 (19 digits)"),
    ("99999999999999999999  1", "is beyond any mask"),  # OverflowError before
    ("1\t2", "value 1 '1\\t2' is not a plain number"),
    ("+1 2", "value 1 '+1' is not a plain number"),
    ("1_0 2", "value 1 '1_0' is not a plain number"),
    ("\u0661 2", "value 1 '\u0661' is not a plain number"),
    ("1 2 ", "trailing space"),
    ("21 1", "pair 1: start 21 is beyond the 4x5 mask (20 pixels)"),
    ("19 3", "last run ends at pixel 21, beyond the 4x5 mask"),
]


@pytest.mark.parametrize("code,message", BAD_RLE_ROWS, ids=[c[:20] for c, _ in BAD_RLE_ROWS])
def test_validate_names_the_row_of_every_bad_rle(tmp_path, code, message):
    lines = good_lines()
    lines[3] = f"{NAMES[2]},{code}"
    path = tmp_path / "s.csv"
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    problems = validate(path, expected_names=NAMES, shape=SHAPE)
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"line 4 ({NAMES[2]}): bad RLE for a 5x4 image: ")
    assert message in problems[0]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 2**64), max_size=6), st.sampled_from([" ", "  ", "\t"]))
def test_validate_never_raises_on_any_numbers(tmp_path_factory, values, sep):
    path = tmp_path_factory.mktemp("v") / "s.csv"
    path.write_text(f"img,rle_mask\n{NAMES[0]},{sep.join(map(str, values))}\n")
    problems = validate(path, expected_names=NAMES[:1], shape=SHAPE)
    assert all(p.startswith(f"line 2 ({NAMES[0]}): bad RLE") for p in problems)


def test_validate_accepts_a_real_size_mask_encoding(tmp_path):
    mask = np.zeros(rle.ORIGINAL_SHAPE, np.uint8)
    mask[100:900, 300:1500] = 1
    mask[-1, -5:] = 1  # a run ending on the last pixel
    path = tmp_path / "s.csv.gz"
    with SubmissionWriter(path) as writer:
        writer.write("a_01.jpg", rle.encode(mask))
        writer.write("a_02.jpg", "")  # the empty mask
    assert validate(path, expected_names=["a_01.jpg", "a_02.jpg"]) == []


# -- merge --------------------------------------------------------------------------------------
def shard_files(tmp_path, parts):
    lines = good_lines()
    paths = []
    for i, rows in enumerate(parts):
        paths.append(write_csv(tmp_path / f"part{i}.csv.gz", [lines[0]] + [lines[r] for r in rows]))
    return paths


def test_merge_joins_disjoint_shards_atomically(tmp_path):
    paths = shard_files(tmp_path, [[1, 4], [2, 5], [3, 6]])
    out = tmp_path / "merged.csv.gz"
    result = merge(paths, out)
    assert result["rows"] == 6
    assert sorted(read_rows(out)) == sorted(tuple(line.split(",")) for line in good_lines()[1:])
    assert validate(out, expected_names=NAMES, shape=SHAPE) == []
    assert not list(tmp_path.glob("*.tmp"))


def test_merge_rejects_overlap_naming_both_files(tmp_path):
    paths = shard_files(tmp_path, [[1, 2], [2, 3]])
    out = tmp_path / "merged.csv.gz"
    with pytest.raises(ValueError, match=r"car_02.jpg: in both .*part0.* and .*part1"):
        merge(paths, out)
    assert not out.exists() and not list(tmp_path.glob("*.tmp"))


def test_merge_with_data_checks_completeness(synth_dirs, tmp_path):
    data = CarvanaData(synth_dirs["folders"])
    names = data.test_names()
    parts = []
    for i in range(2):
        with SubmissionWriter(tmp_path / f"p{i}.csv.gz") as writer:
            for name in names[i::2]:
                writer.write(name, "1 1")
        parts.append(writer.path)
    out = tmp_path / "all.csv.gz"
    with pytest.raises(ValueError, match=r"lack 6 of 12 test ids"):
        merge(parts[:1], out, data=data)
    assert not out.exists()
    assert merge(parts, out, data=data)["rows"] == 12
    assert validate(out, data) == []


def test_merge_rejects_a_truncated_part(tmp_path):
    (path,) = shard_files(tmp_path, [[1, 2, 3]])
    path.write_bytes(path.read_bytes()[:-12])
    with pytest.raises(ValueError, match="part0.csv.gz: gzip stream ends early"):
        merge([path], tmp_path / "out.csv.gz")


# -- command line -------------------------------------------------------------------------------
def test_cli_validate_and_merge_exit_codes(synth_dirs, tmp_path, capsys):
    data_dir = synth_dirs["folders"]
    names = CarvanaData(data_dir).test_names()
    good = tmp_path / "good.csv.gz"
    with SubmissionWriter(good) as writer:
        for name in names:
            writer.write(name, "1 10")
    assert cli.main(["validate", str(good), "--data", str(data_dir)]) == 0
    bad = tmp_path / "bad.csv.gz"
    with SubmissionWriter(bad) as writer:
        for name in names[1:]:
            writer.write(name, "10 1 5 1")
    assert cli.main(["validate", str(bad), "--data", str(data_dir)]) == 1
    err = capsys.readouterr().err
    assert "missing id " + names[0] in err and "line 2 (" + names[1] + ")" in err
    out = tmp_path / "merged.csv.gz"
    assert cli.main(["merge", str(good), str(bad), "--out", str(out)]) == 2
    assert "shards must be disjoint" in capsys.readouterr().err
    assert cli.main(["merge", str(good), "--out", str(out), "--data", str(data_dir)]) == 0


VALIDATE_CASES = {
    "empty sample_submission.csv": ("folders", "sample_submission.csv", b"", "sample_submission.csv: empty file (no header line)"),
    "truncated sample_submission.csv.zip": ("zipped", "sample_submission.csv.zip", 60, "sample_submission.csv.zip: not a readable zip archive (truncated or corrupt)"),
    "truncated test.zip": ("zipped", "test.zip", 3000, "test.zip: not a readable zip archive (truncated or corrupt)"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(VALIDATE_CASES))
def test_cli_validate_bad_data_is_one_line(synth_copy, tmp_path, capsys, monkeypatch, case):
    monkeypatch.delenv("CARVANA_DEBUG", raising=False)
    layout, name, damage, message = VALIDATE_CASES[case]
    root = synth_copy(layout)
    sub = write_csv(tmp_path / "s.csv.gz", good_lines())
    path = root / name
    path.write_bytes(damage if isinstance(damage, bytes) else path.read_bytes()[:damage])
    if name == "test.zip":  # validate reads the ids from the test set, not the sample file
        (root / "sample_submission.csv.zip").unlink()
    assert cli.main(["validate", str(sub), "--data", str(root)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"carvana: error: {path}: "), err
    assert message in err[0]


def test_submission_module_does_not_import_tensorflow():
    code = "import sys, carvana.submission; sys.exit('tensorflow' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
