"""The Kaggle client: credentials, errors, and kernels and datasets through `kaggle` 2.x.

Push kernels, follow them to the end, fetch their logs and output, upload the ImageNet weights
as a private dataset. The kaggle client is imported lazily (its package authenticates at import
and prints a how-to when it finds no credentials; both are kept quiet here and replaced by one
clear error). HTTP errors become a KaggleError of one line; credentials are never printed,
logged or embedded. No TensorFlow here.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from carvana.files import COMPETITION

HOW_TO_CREDENTIALS = (
    "no Kaggle credentials found; set them in one of these ways: save the kaggle.json of "
    "https://www.kaggle.com/settings (API, Create New Token) as ~/.kaggle/kaggle.json "
    "(chmod 600), or export KAGGLE_USERNAME and KAGGLE_KEY, or export KAGGLE_API_TOKEN"
)
HTTP_HINTS = {
    400: "Kaggle rejected the request as invalid",
    401: "Kaggle refused the credentials: check KAGGLE_USERNAME/KAGGLE_KEY, KAGGLE_API_TOKEN "
    "or ~/.kaggle/kaggle.json (a new token replaces the old one)",
    403: "not allowed: accept the competition rules at "
    f"https://www.kaggle.com/c/{COMPETITION}/rules, and only your own kernels can be changed",
    404: "not found: check the kernel name and the user name in its id",
    429: "too many requests: wait a minute and try again",
}
_ENVIRONMENTS = {"LOCALHOST": "--local", "STAGING": "--staging", "ADMIN": "--admin"}
PLACEHOLDER_USER = "your-kaggle-username"
_USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
WEIGHTS_DATASET = "carvana-mobilenetv2-imagenet"  # the slug kernels/*/kernel-metadata.json attach
FINAL_STATES = ("complete", "error", "cancel_requested", "cancel_acknowledged")
# What the next step needs from a kernel's output: the run folder without its resume
# checkpoint (the biggest part), summaries and submissions. The log is always written.
NEEDED_OUTPUT = r"^(run/(?!checkpoint/)|[^/]*summary[^/]*\.json$|submission[^/]*\.csv(\.gz)?$)"


class KaggleError(ValueError):
    """A Kaggle API call that failed: missing credentials, refused or failed request."""


def warn(message: str) -> None:
    """Print one plain warning line on stderr."""
    print(f"carvana: warning: {message}", file=sys.stderr, flush=True)


# -- credentials ------------------------------------------------------------------------------
def resolve_username(username: str | None = None, placeholder: bool = True) -> str:
    """Kaggle user name: the argument, KAGGLE_USERNAME, kaggle.json, else a placeholder."""
    name = username or os.environ.get("KAGGLE_USERNAME") or _username_from_file()
    if not name:
        if not placeholder:
            raise ValueError(
                "no Kaggle user name: pass --username, set KAGGLE_USERNAME, or save your "
                "kaggle.json in ~/.kaggle/"
            )
        warn(
            f"no Kaggle user name found (no --username, KAGGLE_USERNAME or kaggle.json): kernel "
            f"ids use '{PLACEHOLDER_USER}'; build again with --username before pushing"
        )
        return PLACEHOLDER_USER
    if not _USERNAME.match(name):
        raise ValueError(f"{name!r} is not a Kaggle user name (letters, digits, '-' and '_')")
    return name


def kaggle_config_files() -> list[Path]:
    """Where the kaggle client looks for kaggle.json, first match wins."""
    if os.environ.get("KAGGLE_CONFIG_DIR"):
        return [Path(os.environ["KAGGLE_CONFIG_DIR"]) / "kaggle.json"]
    xdg = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return [Path.home() / ".kaggle" / "kaggle.json", xdg / "kaggle" / "kaggle.json"]


def _username_from_file() -> str | None:
    for path in kaggle_config_files():
        if path.is_file():
            try:
                return json.loads(path.read_text()).get("username") or None
            except (OSError, ValueError, AttributeError):
                return None  # an unreadable file is the client's to report, with push
    return None


# -- calling the client -----------------------------------------------------------------------
def _secrets() -> list[str]:
    values = [os.environ.get("KAGGLE_KEY"), os.environ.get("KAGGLE_API_TOKEN")]
    return [v for v in values if v and len(v) >= 4]


def _clean(text: str, secrets: list[str] = ()) -> str:
    """One line of server text, without anything that looks like our credentials."""
    text = " ".join(str(text).split())[:300]
    for secret in [*_secrets(), *secrets]:
        text = text.replace(secret, "***")
    return text


@contextlib.contextmanager
def _calling(what: str, api=None):
    """Turn the client's HTTP and connection errors into one clear KaggleError line."""
    import requests

    secrets = [v for k, v in (api.config_values if api else {}).items() if k in ("key", "token")]
    try:
        yield
    except requests.HTTPError as err:
        response = err.response
        code = response.status_code if response is not None else None
        detail = ""
        if response is not None:
            with contextlib.suppress(ValueError, AttributeError):
                detail = response.json().get("message", "")
        detail = detail or (str(err.args[0]) if err.args else "")
        hint = HTTP_HINTS.get(code, "the Kaggle API call failed")
        message = f"{what}: {hint} (HTTP {code})"
        if detail and str(code) not in detail[:40]:
            message += f": {_clean(detail, secrets)}"
        raise KaggleError(message) from None
    except requests.RequestException as err:
        raise KaggleError(
            f"{what}: cannot reach the Kaggle API ({type(err).__name__}); check the network "
            "and any proxy settings"
        ) from None
    except ValueError as err:
        # kernels_status/kernels_output turn 401/403 into a long ValueError of their own
        if str(err).startswith("Cannot access kernel"):
            raise KaggleError(
                f"{what}: access denied (HTTP 401/403): check the credentials, the kernel name "
                "and that the kernel is yours"
            ) from None
        raise


def client():
    """An authenticated KaggleApi, or KaggleError saying how to set credentials."""
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            from kaggle.api.kaggle_api_extended import KaggleApi
        except ImportError as err:
            raise KaggleError(
                f"the kaggle client is missing ({err}); pip install 'kaggle>=2' six"
            ) from None
    api = KaggleApi()
    # The client reads these when first imported; honour the environment of this call.
    flag = _ENVIRONMENTS.get(os.environ.get("KAGGLE_API_ENVIRONMENT", ""))
    api.args = [flag] if flag else []  # never --verbose: it prints the auth header
    config = kaggle_config_files()
    found = [p for p in config if p.is_file()]
    api.config = str((found or config)[0])
    api.config_dir = str(Path(api.config).parent)
    with _calling("authenticate"), contextlib.redirect_stdout(io.StringIO()):
        try:
            api.authenticate()
        except SystemExit:
            raise KaggleError(HOW_TO_CREDENTIALS) from None
    return api


def _kernel_ref(api, name: str, username: str | None) -> str:
    if "/" in name:
        return name
    user = username or api.config_values.get("username") or resolve_username(None, False)
    return f"{user}/{name}"


# -- kernels ----------------------------------------------------------------------------------
def push_kernel(
    name: str,
    username: str | None = None,
    out_dir: str | Path | None = None,
    accelerator: str | None = None,
) -> str:
    """Build one kernel and push it (a new version that starts running); a line with its URL.

    `accelerator` (a Kaggle machine_shape name) replaces the one in kernel-metadata.json."""
    from carvana import kernel_build

    if name not in kernel_build.KERNEL_NAMES:
        choices = ", ".join(kernel_build.KERNEL_NAMES)
        raise ValueError(f"unknown kernel {name!r}; choose from {choices}")
    if accelerator:
        accelerator = kernel_build.check_accelerator(accelerator)  # before any network call
    api = client()
    user = username or api.config_values.get("username")
    if not user:
        raise KaggleError("cannot tell your Kaggle user name; pass --username")
    (script,) = kernel_build.build([name], username=user, out_dir=out_dir, accelerator=accelerator)
    with _calling(f"push {user}/{name}", api), contextlib.redirect_stdout(io.StringIO()):
        result = api.kernels_push(str(script.parent))
    if result.error:
        raise KaggleError(f"push {user}/{name}: Kaggle refused the kernel: {_clean(result.error)}")
    invalid = [
        *result.invalid_competition_sources,
        *result.invalid_kernel_sources,
        *result.invalid_dataset_sources,
    ]
    note = f" (invalid sources ignored by Kaggle: {', '.join(invalid)})" if invalid else ""
    meta = json.loads((script.parent / kernel_build.METADATA_FILE).read_text())
    machine = f" on {meta['machine_shape']}" if meta.get("machine_shape") else ""
    version = f"version {result.version_number}" if result.version_number else "new version"
    return f"pushed {user}/{name} {version}{machine}: {result.url or result.ref}{note}"


def _status(api, ref: str) -> tuple[str, str]:
    with _calling(f"status of {ref}", api):
        response = api.kernels_status(ref)
    return response.status.name.lower(), _clean(response.failure_message or "")


def kernel_status(name: str, username: str | None = None) -> str:
    """One line: the kernel's latest run state (queued, running, complete, error)."""
    api = client()
    ref = _kernel_ref(api, name, username)
    state, failure = _status(api, ref)
    return f"{ref}: {state}" + (f": {failure}" if failure else "")


def wait_for_kernel(
    name: str,
    username: str | None = None,
    interval: float = 30.0,
    sleep: Callable[[float], object] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    echo: Callable[[str], object] = print,
) -> str:
    """Poll the kernel until it completes, fails or is cancelled; its final state.

    Prints the elapsed time and state when the state changes, and every 10 minutes."""
    api = client()
    ref = _kernel_ref(api, name, username)
    began, shown, last = clock(), None, -1e9
    while True:
        state, failure = _status(api, ref)
        elapsed = clock() - began
        if state != shown or elapsed - last >= 600:
            minutes, seconds = divmod(int(elapsed), 60)
            line = f"[{minutes // 60}:{minutes % 60:02d}:{seconds:02d}] {ref}: {state}"
            echo(line + (f": {failure}" if failure else ""))
            shown, last = state, elapsed
        if state in FINAL_STATES:
            return state
        sleep(interval)


def kernel_logs(name: str, username: str | None = None) -> str:
    """The log of the kernel's latest run as text (Kaggle keeps it as JSON records)."""
    api = client()
    ref = _kernel_ref(api, name, username)
    with _calling(f"log of {ref}", api):
        log = api.kernels_logs(ref)
    try:
        records = json.loads(log)
    except ValueError:
        return log
    if not isinstance(records, list):
        return log
    return "".join(str(r.get("data", "")) for r in records if isinstance(r, dict))


def kernel_output(
    name: str, path: str | Path, username: str | None = None, everything: bool = False
) -> list[Path]:
    """Download the kernel's output into a folder: what the next step needs (run folder without
    checkpoint/, summaries, submissions) and the log, or every file when `everything`."""
    api = client()
    ref = _kernel_ref(api, name, username)
    Path(path).mkdir(parents=True, exist_ok=True)
    pattern = None if everything else NEEDED_OUTPUT
    with _calling(f"output of {ref}", api), contextlib.redirect_stdout(io.StringIO()):
        files, _ = api.kernels_output(ref, str(path), file_pattern=pattern, force=True, quiet=True)
    return [Path(f) for f in files]


# -- the ImageNet weights as a private dataset ------------------------------------------------
def keras_weights_file() -> Path:
    """Where Keras keeps the MobileNetV2 no-top ImageNet file once downloaded."""
    from carvana.kernel_runtime import WEIGHTS_FILE

    home = os.environ.get("KERAS_HOME") or Path.home() / ".keras"
    return Path(home) / "models" / WEIGHTS_FILE


def upload_weights(path: str | Path | None = None, username: str | None = None) -> str:
    """Upload the MobileNetV2 ImageNet no-top file as the private dataset the train kernel
    attaches: a new dataset, or a new version of it; one line."""
    from carvana.kernel_runtime import WEIGHTS_FILE

    source = Path(path) if path else keras_weights_file()
    if not source.is_file():
        raise FileNotFoundError(
            f"{source}: no weights file; pass the path of {WEIGHTS_FILE}, or let Keras download "
            'it first (python -c "import keras; keras.applications.MobileNetV2('
            'include_top=False)")'
        )
    api = client()
    user = username or api.config_values.get("username") or resolve_username(None, False)
    ref = f"{user}/{WEIGHTS_DATASET}"
    with tempfile.TemporaryDirectory(prefix="carvana-weights-") as folder:
        # The dataset holds the file under the name Keras uses, whatever it was called here.
        shutil.copyfile(source, Path(folder) / WEIGHTS_FILE)
        meta = {
            "id": ref,
            "title": "Carvana MobileNetV2 ImageNet",
            "subtitle": "MobileNetV2 no-top ImageNet weights for carvana-kit kernels",
            "licenses": [{"name": "other"}],
        }
        (Path(folder) / "dataset-metadata.json").write_text(json.dumps(meta))
        exists = _dataset_exists(api, ref)
        with _calling(f"upload {ref}", api), contextlib.redirect_stdout(io.StringIO()):
            if exists:
                result = api.dataset_create_version(folder, "weights file", quiet=True)
            else:
                result = api.dataset_create_new(folder, public=False, quiet=True)
    if result.error:
        raise KaggleError(f"upload {ref}: Kaggle refused the dataset: {_clean(result.error)}")
    what = "new version of" if exists else "new private dataset"
    size = source.stat().st_size / 1e6
    return f"uploaded {source.name} ({size:.1f} MB) as {what} {ref}: {result.url or result.ref}"


def _dataset_exists(api, ref: str) -> bool:
    import requests

    try:
        with contextlib.redirect_stdout(io.StringIO()):
            api.dataset_status(ref)
    except requests.HTTPError as err:
        if err.response is not None and err.response.status_code == 404:
            return False
        with _calling(f"status of dataset {ref}", api):
            raise
    return True
