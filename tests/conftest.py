"""Shared fixtures: one tiny synthetic Carvana dataset per session, as folders and as zips."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

SYNTH_KW = dict(train_cars=6, test_images=12, size=(128, 192), seed=0)


@pytest.fixture(scope="session")
def synth_dirs(tmp_path_factory) -> dict[str, Path]:
    """{"folders": Path, "zipped": Path}: 6 training cars x 16 angles, 12 test images, 128x192."""
    from carvana.synth import synthesize

    base = tmp_path_factory.mktemp("synth")
    return {
        "folders": synthesize(base / "folders", **SYNTH_KW),
        "zipped": synthesize(base / "zipped", zipped=True, **SYNTH_KW),
    }


@pytest.fixture
def synth_copy(synth_dirs, tmp_path):
    """A function giving a private, mutable copy of the synthetic dataset ("folders"/"zipped")."""

    def copy(layout: str = "folders") -> Path:
        target = tmp_path / f"data-{layout}"
        shutil.copytree(synth_dirs[layout], target)
        return target

    return copy
