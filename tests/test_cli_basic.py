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


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["train", "--out", "r", "--batch-size", "0"], "setting batch_size must be at least 1"),
        (["train", "--out", "r", "--epochs", "0"], "setting epochs must be at least 1"),
        (["train", "--out", "r", "--val-fraction", "1.5"], "setting val_fraction must be in"),
        (["predict", "--run", "r", "--workers", "0"], "setting workers must be between 1"),
        (["predict", "--run", "r", "--shard", "4/4"], "setting shard must be i/n"),
        (["predict", "--run", "r", "--limit", "-1"], "setting limit must be 0 (all) or more"),
    ],
)
def test_out_of_range_settings_are_one_line(
    synth_dirs, tmp_path, capsys, monkeypatch, args, fragment
):
    monkeypatch.delenv("CARVANA_DEBUG", raising=False)
    monkeypatch.chdir(tmp_path)
    assert main([*args, "--data", str(synth_dirs["folders"])]) == 2
    _assert_one_line_error(capsys, fragment)


@pytest.mark.parametrize("args", [["--batch-size", "x"], ["--image-size", "0x5"]])
def test_unparsable_settings_are_argparse_errors(capsys, args):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--out", "r", *args])
    assert exit_info.value.code == 2
    assert "argument --" in capsys.readouterr().err


def test_tensorflow_start_up_lines_are_held_back(synth_dirs, tmp_path):
    import os
    import subprocess

    env = {
        k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "CARVANA_DEBUG")
    }
    command = [sys.executable, "-m", "carvana.cli", "predict", "--data", str(synth_dirs["folders"])]
    run = subprocess.run(
        [*command, "--run", str(tmp_path / "none"), "--shard", "4/4"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        "carvana: error: setting shard must be i/n with 0 <= i < n, got '4/4'"
    ]


@pytest.mark.slow
def test_train_through_the_cli_then_resume_with_an_asked_default(synth_dirs, tmp_path, capsys):
    from carvana.config import TrainConfig

    run = tmp_path / "run"
    base = ["train", "--data", str(synth_dirs["folders"]), "--out", str(run), "--model", "cnn"]
    tiny = ["--image-size", "32x48", "--epochs", "1", "--max-cars", "3", "--augment", "off"]
    assert main([*base, *tiny, "--batch-size", "8"]) == 0
    assert "best validation Dice" in capsys.readouterr().out
    saved = TrainConfig.load(run)
    assert (saved.model, saved.image_size, saved.batch_size, saved.augment) == (
        "cnn",
        (32, 48),
        8,
        False,
    )
    # The default batch size, asked for explicitly, differs from the run's: refused, not ignored.
    assert main([*base, *tiny, "--batch-size", "16"]) == 2
    assert "batch_size" in capsys.readouterr().err
