"""carvana.runtime: version lines, GPU lines, the known-bad combinations, the tested ranges kept
in step with setup.cfg and the Kaggle constraints, and augment's message when keras_cv fails."""

import configparser
import importlib
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from carvana import runtime

ROOT = Path(__file__).resolve().parents[1]
CONSTRAINTS = sorted((ROOT / "constraints").glob("kaggle-*.txt"))
KAGGLE = {"Python": "3.12.12", "TensorFlow": "2.20.0", "Keras": "3.13.2", "keras-cv": "0.9.0"}
KAGGLE["NumPy"] = "2.0.2"


def install_requires() -> dict[str, Requirement]:
    """setup.cfg's install_requires by distribution name."""
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    lines = cfg["options"]["install_requires"].splitlines()
    reqs = [Requirement(x) for x in (line.split("#")[0].strip() for line in lines) if x]
    return {r.name.lower(): r for r in reqs}


def pins(path: Path) -> dict[str, str]:
    """A constraints file's name==version pins."""
    lines = (line.split("#")[0].strip() for line in path.read_text().splitlines())
    return dict(line.lower().split("==") for line in lines if line)


def test_release():
    assert runtime.release("3.16.0rc1") == (3, 16, 0)
    assert runtime.release("2.20.0") == (2, 20, 0) < runtime.release("2.21")
    with pytest.raises(ValueError, match="not a version: 'dev'"):
        runtime.release("dev")


def test_tested_ranges_are_setup_cfg_bounds():
    requires = install_requires()
    for dist in runtime.TESTED:
        tested = Requirement(runtime.tested_range(dist)).specifier
        assert requires[dist].specifier == tested, (dist, str(requires[dist].specifier))


def test_kaggle_pins_meet_setup_cfg_and_are_its_lower_bounds():
    assert CONSTRAINTS, "no constraints/kaggle-*.txt"
    pinned = pins(CONSTRAINTS[-1])
    requires = install_requires()
    assert {"tensorflow", "keras", "keras-cv", "numpy", "pandas"} <= set(pinned)
    for dist, version in pinned.items():
        assert requires[dist].specifier.contains(version), f"{dist}=={version} vs setup.cfg"
        lows = [s.version for s in requires[dist].specifier if s.operator == ">="]
        # The lower bound is Kaggle's release (or its minor series), not an older guess.
        assert lows and version.startswith(lows[0]), (dist, version, lows)
    assert runtime.problems(found=KAGGLE) == []


def test_installed_combination_passes_and_versions_match_the_modules():
    import keras
    import numpy

    found = runtime.versions()
    assert (found["Keras"], found["NumPy"]) == (keras.__version__, numpy.__version__)
    assert found["Python"] == ".".join(map(str, sys.version_info[:3]))
    runtime.check()


@pytest.mark.parametrize(
    "changes, augment, message",
    [
        ({"Keras": "3.12.1"}, False, r"Keras 3\.12\.1 is outside the tested range"),
        ({"Keras": "2.15.0"}, True, r"Keras 2\.15\.0 is Keras 2 \(tf\.keras\); the kit needs "),
        ({"Keras": None}, True, r"Keras is not installed; pip install 'keras>=3\.13\.2,<3\.16'"),
        ({"keras-cv": None}, True, r"augmentation is on but keras-cv is not installed"),
        (
            {"keras-cv": "0.8.2"},
            True,
            r"keras-cv 0\.8\.2 is untested; the kit needs keras-cv>=0\.9",
        ),
        ({"TensorFlow": "2.19.1"}, True, r"TensorFlow 2\.19\.1 is untested; .*tensorflow>=2\.20"),
        ({"Python": "3.9.18"}, True, r"Python 3\.9\.18 is too old"),
    ],
)
def test_known_bad_combinations_stop_with_one_line(changes, augment, message, monkeypatch):
    monkeypatch.delenv("TF_USE_LEGACY_KERAS", raising=False)
    with pytest.raises(runtime.UnsupportedEnvironment, match=message) as err:
        runtime.check(augment, found={**KAGGLE, **changes})
    assert "\n" not in str(err.value) and str(err.value).startswith("unsupported environment: ")


def test_keras_cv_only_needed_with_augmentation(monkeypatch):
    monkeypatch.delenv("TF_USE_LEGACY_KERAS", raising=False)
    runtime.check(augment=False, found={**KAGGLE, "keras-cv": None})
    monkeypatch.setenv("TF_USE_LEGACY_KERAS", "1")
    with pytest.raises(runtime.UnsupportedEnvironment, match="TF_USE_LEGACY_KERAS is set"):
        runtime.check(augment=False, found=KAGGLE)


def test_describe_names_versions_and_gpus(monkeypatch):
    import tensorflow as tf

    lines = runtime.describe()
    found = runtime.versions()
    assert lines[:5] == [f"{name} {found[name]}" for name in runtime.LIBRARIES]
    if not tf.config.list_physical_devices("GPU"):
        assert lines[5:] == ["GPUs: none (CPU only)"]

    devices = [
        tf.config.PhysicalDevice("/physical_device:GPU:0", "GPU"),
        tf.config.PhysicalDevice("/physical_device:GPU:1", "GPU"),
    ]
    details = {
        devices[0]: {"device_name": "Tesla P100-PCIE-16GB", "compute_capability": (6, 0)},
        devices[1]: {"device_name": "Tesla T4", "compute_capability": (7, 5)},
    }
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: devices)
    monkeypatch.setattr(tf.config.experimental, "get_device_details", details.__getitem__)
    assert runtime.describe()[5:] == [
        "GPU 0: Tesla P100-PCIE-16GB, compute capability 6.0",
        "GPU 1: Tesla T4, compute capability 7.5",
    ]


def test_augment_import_failure_names_versions_and_range(monkeypatch):
    found = runtime.versions()
    monkeypatch.setitem(sys.modules, "keras_cv", None)  # makes `import keras_cv` fail
    monkeypatch.delitem(sys.modules, "carvana.augment", raising=False)
    with pytest.raises(ImportError) as err:
        importlib.import_module("carvana.augment")
    message = str(err.value)
    assert message.startswith("keras-cv could not be imported (ModuleNotFoundError: ")
    assert f"installed: Keras {found['Keras']}, keras-cv {found['keras-cv']};" in message
    assert "tested with keras>=3.13.2,<3.16 and keras-cv>=0.9,<0.10" in message
    assert "\n" not in message


def test_newer_than_tested_is_a_note_not_a_stop(monkeypatch):
    monkeypatch.delenv("TF_USE_LEGACY_KERAS", raising=False)
    found = {**KAGGLE, "Keras": "3.16.0"}
    runtime.check(augment=True, found=found)
    (note,) = runtime.notices(found)
    assert note.startswith("note: Keras 3.16.0 is newer than the tested keras>=3.13.2,<3.16")
    assert runtime.notices(KAGGLE) == []
