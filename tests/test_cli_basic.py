"""The light CLI verbs (synth, eda) through carvana.cli.main, and user errors without tracebacks."""

import sys

import pytest

from carvana.cli import main
from carvana.files import CarvanaData


def test_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "usage: carvana" in out
    for verb in ("synth", "eda", "train", "predict", "dry-run"):
        assert verb in out


@pytest.mark.parametrize("verb", ["synth", "eda"])
def test_verb_help(capsys, verb):
    with pytest.raises(SystemExit) as exit_info:
        main([verb, "--help"])
    assert exit_info.value.code == 0
    assert f"usage: carvana {verb}" in capsys.readouterr().out


def test_synth_folders_and_zips(tmp_path, capsys):
    out = tmp_path / "data"
    args = ["synth", str(out), "--train-cars", "1", "--test-images", "3", "--size", "96x64"]
    assert main(args + ["--seed", "5"]) == 0
    assert f"written to {out}" in capsys.readouterr().out
    data = CarvanaData(out)
    assert data.image_size() == (64, 96)  # --size is width x height
    assert len(data.train_ids()) == 16 and len(data.test_names()) == 3
    zipped = tmp_path / "zipped"
    assert main(["synth", str(zipped), "--zipped", "--train-cars", "1", "--size", "96x64"]) == 0
    assert (zipped / "train.zip").is_file() and (zipped / "test.zip").is_file()
    assert len(CarvanaData(zipped).test_names()) == 16


def test_eda(synth_dirs, tmp_path, capsys):
    out = tmp_path / "eda"
    args = ["eda", "--data", str(synth_dirs["zipped"]), "--out", str(out), "--samples", "2"]
    assert main(args) == 0
    assert f"EDA report: {out / 'report.md'}" in capsys.readouterr().out
    assert "- training images: 96" in (out / "report.md").read_text()
    assert (out / "samples.png").is_file() and (out / "coverage_by_angle.png").is_file()


def _assert_one_line_error(capsys, *fragments):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("carvana: error: ")
    assert "Traceback" not in err[0]
    for fragment in fragments:
        assert fragment in err[0]


def test_eda_on_an_empty_folder_is_a_user_error(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("CARVANA_DEBUG", raising=False)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["eda", "--data", str(empty), "--out", str(tmp_path / "eda")]) == 2
    _assert_one_line_error(capsys, str(empty), "no Carvana data found", "train.zip or train/")


def test_eda_without_data_is_a_user_error(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("CARVANA_DEBUG", raising=False)
    monkeypatch.setenv("CARVANA_KAGGLE_ROOT", str(tmp_path / "no-kaggle"))
    assert main(["eda", "--out", str(tmp_path / "eda")]) == 2
    _assert_one_line_error(capsys, "no --data given")


def test_synth_into_a_foreign_folder_is_a_user_error(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("CARVANA_DEBUG", raising=False)
    (tmp_path / "mine.txt").write_text("x")
    assert main(["synth", str(tmp_path), "--size", "64x48"]) == 2
    _assert_one_line_error(capsys, str(tmp_path), "not empty")
    assert (tmp_path / "mine.txt").read_text() == "x"


def test_bad_size_is_an_argparse_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["synth", str(tmp_path / "x"), "--size", "big"])
    assert exit_info.value.code == 2
    assert "size must look like" in capsys.readouterr().err


def test_light_verbs_do_not_load_tensorflow(synth_dirs, tmp_path):
    import subprocess

    code = (
        "import sys; from carvana.cli import main; "
        f"main(['eda', '--data', {str(synth_dirs['folders'])!r}, '--out', {str(tmp_path)!r}, "
        "'--samples', '1']); "
        "sys.exit(3 if 'tensorflow' in sys.modules else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0
