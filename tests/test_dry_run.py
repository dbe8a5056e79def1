"""`carvana dry-run --quick`: every stage runs and the round trip ends in a valid submission."""

import json
from pathlib import Path

import pytest

from carvana.cli import main
from carvana.files import CarvanaData
from carvana.submission import validate


@pytest.mark.slow
def test_dry_run_writes_every_artifact_and_a_valid_submission(tmp_path, capsys):
    out = tmp_path / "dry"
    assert main(["dry-run", "--quick", "--out", str(out)]) == 0

    printed = capsys.readouterr().out
    for stage in range(1, 9):
        assert f"[{stage}/8]" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["dice"]) == {"cnn", "mobilenet"}
    assert all(0.0 <= d <= 1.0 for d in summary["dice"].values())
    data = CarvanaData(out / "input")
    assert summary["submission_rows"] == len(data.test_names())
    assert validate(out / "submission.csv.gz", data) == []
    for path in [summary["eda_report"], summary["comparison"], *summary["kernels"]]:
        assert Path(path).exists(), path
    assert len(summary["kernels"]) == 3
    assert "| cnn" in (out / "comparison.md").read_text()
