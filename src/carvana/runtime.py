"""What the kit runs on: library versions and GPUs, and a stop for combinations known to fail.

`versions()` reads installed package metadata only (no TensorFlow import, like config.json's
record of them); `describe()` adds the GPUs (imports TensorFlow); `check()` raises
`UnsupportedEnvironment` with one line for a combination the kit is known not to work with.
The tested ranges below mirror setup.cfg's install_requires (tests/test_runtime.py keeps the
two in step); a kernel has no setup.cfg, so they live here too.
"""

from __future__ import annotations

import os
import re
import sys

# (lowest tested, first known or untested upper) per distribution; None: no upper bound.
TESTED = {
    "tensorflow": ("2.20", None),
    "keras": ("3.13.2", "3.16"),
    "keras-cv": ("0.9", "0.10"),
}
# Display name -> distribution name, as config.library_versions records them.
LIBRARIES = {
    "Python": "python",
    "TensorFlow": "tensorflow",
    "Keras": "keras",
    "keras-cv": "keras-cv",
    "NumPy": "numpy",
}
MIN_PYTHON = (3, 10)


class UnsupportedEnvironment(RuntimeError):
    """The installed libraries are a combination the kit is known not to work with."""


def release(version: str) -> tuple[int, ...]:
    """The numeric release part of a version string: '3.16.0rc1' -> (3, 16, 0)."""
    match = re.match(r"\d+(\.\d+)*", version.strip())
    if not match:
        raise ValueError(f"not a version: {version!r}")
    return tuple(int(p) for p in match.group(0).split("."))


def versions() -> dict[str, str | None]:
    """Python and the kit's key libraries by display name; None where one is not installed."""
    from carvana.config import library_versions

    found = library_versions()
    return {
        name: None if found.get(dist, "not installed") == "not installed" else found[dist]
        for name, dist in LIBRARIES.items()
    }


def tested_range(dist: str) -> str:
    """The tested range of a distribution in pip's notation, e.g. 'keras>=3.13.2,<3.16'."""
    low, high = TESTED[dist]
    return f"{dist}>={low}" + (f",<{high}" if high else "")


def in_range(version: str, dist: str) -> bool:
    """Whether a version lies in the tested range of a distribution."""
    low, high = TESTED[dist]
    ours = release(version)
    return ours >= release(low) and (high is None or ours < release(high))


def gpus() -> list[str]:
    """One line per visible GPU: index, name and compute capability (imports TensorFlow)."""
    import tensorflow as tf

    lines = []
    for i, device in enumerate(tf.config.list_physical_devices("GPU")):
        details = tf.config.experimental.get_device_details(device)
        name = details.get("device_name", device.name)
        capability = details.get("compute_capability")
        cc = ".".join(str(c) for c in capability) if capability else "unknown"
        lines.append(f"GPU {i}: {name}, compute capability {cc}")
    return lines


def describe() -> list[str]:
    """Lines naming Python, TensorFlow, Keras, keras-cv, NumPy versions and the GPUs."""
    lines = [f"{name} {v or 'not installed'}" for name, v in versions().items()]
    return lines + (gpus() or ["GPUs: none (CPU only)"])


def problems(augment: bool = True, found: dict[str, str | None] | None = None) -> list[str]:
    """Every known-bad point of the installed combination, one line each (empty: all fine)."""
    found = versions() if found is None else found
    out = []
    if release(found["Python"]) < MIN_PYTHON:
        out.append(f"Python {found['Python']} is too old; the kit needs Python >= 3.10")
    tf_version, keras_version, cv_version = found["TensorFlow"], found["Keras"], found["keras-cv"]
    if tf_version is None:
        out.append(f"TensorFlow is not installed; pip install '{tested_range('tensorflow')}'")
    elif not in_range(tf_version, "tensorflow"):
        out.append(
            f"TensorFlow {tf_version} is untested; the kit needs {tested_range('tensorflow')}"
        )
    if keras_version is None:
        out.append(f"Keras is not installed; pip install '{tested_range('keras')}'")
    elif release(keras_version) < (3,):
        out.append(
            f"Keras {keras_version} is Keras 2 (tf.keras); the kit needs Keras 3: "
            f"pip install '{tested_range('keras')}'"
        )
    elif release(keras_version) < release(TESTED["keras"][0]):
        out.append(
            f"Keras {keras_version} is outside the tested range {tested_range('keras')} "
            f"(keras-cv {cv_version or '-'} imports private Keras modules)"
        )
    if os.environ.get("TF_USE_LEGACY_KERAS", "").lower() in ("1", "true", "yes"):
        out.append("TF_USE_LEGACY_KERAS is set: tf.keras is Keras 2; unset it for Keras 3")
    if augment and cv_version is None:
        out.append(
            f"augmentation is on but keras-cv is not installed; pip install "
            f"'{tested_range('keras-cv')}' or turn augmentation off"
        )
    elif augment and not in_range(cv_version, "keras-cv"):
        out.append(f"keras-cv {cv_version} is untested; the kit needs {tested_range('keras-cv')}")
    return out


def notices(found: dict[str, str | None] | None = None) -> list[str]:
    """Versions newer than any tested: worth a line in the log, not a reason to stop."""
    found = versions() if found is None else found
    out = []
    for name, dist in (("TensorFlow", "tensorflow"), ("Keras", "keras"), ("keras-cv", "keras-cv")):
        high = TESTED[dist][1]
        if found[name] and high and release(found[name]) >= release(high):
            out.append(
                f"note: {name} {found[name]} is newer than the tested {tested_range(dist)}; "
                "if something fails, pip install the tested range"
            )
    return out


def check(augment: bool = True, found: dict[str, str | None] | None = None) -> None:
    """Raise UnsupportedEnvironment (one line) when the combination is known not to work."""
    bad = problems(augment, found)
    if bad:
        raise UnsupportedEnvironment("unsupported environment: " + "; ".join(bad))


if __name__ == "__main__":
    print("\n".join(describe()))
    try:
        check()
    except UnsupportedEnvironment as err:
        sys.exit(str(err))
