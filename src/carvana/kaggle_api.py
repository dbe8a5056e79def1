"""Push kernels, follow them, fetch their output, submit and list scores, through `kaggle` 2.x.

The kaggle client is imported lazily (its package authenticates at import and prints a how-to
when it finds no credentials; both are kept quiet here and replaced by one clear error). HTTP
errors become a KaggleError of one line; credentials are never printed, logged or embedded.
No TensorFlow here.
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

from carvana import kernels
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


class KaggleError(ValueError):
    """A Kaggle API call that failed: missing credentials, refused or failed request."""


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
    config = kernels.kaggle_config_files()
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
    user = username or api.config_values.get("username") or kernels.resolve_username(None, False)
    return f"{user}/{name}"


def push_kernel(name: str, username: str | None = None, out_dir: str | Path | None = None) -> str:
    """Build one kernel and push it (a new version that starts running); a line with its URL."""
    if name not in kernels.KERNEL_NAMES:
        raise ValueError(f"unknown kernel {name!r}; choose from {', '.join(kernels.KERNEL_NAMES)}")
    api = client()
    user = username or api.config_values.get("username")
    if not user:
        raise KaggleError("cannot tell your Kaggle user name; pass --username")
    (script,) = kernels.build([name], username=user, out_dir=out_dir)
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
    version = f"version {result.version_number}" if result.version_number else "new version"
    return f"pushed {user}/{name} {version}: {result.url or result.ref}{note}"


def kernel_status(name: str, username: str | None = None) -> str:
    """One line: the kernel's latest run state (queued, running, complete, error)."""
    api = client()
    ref = _kernel_ref(api, name, username)
    with _calling(f"status of {ref}", api):
        response = api.kernels_status(ref)
    line = f"{ref}: {response.status.name.lower()}"
    if response.failure_message:
        line += f": {_clean(response.failure_message)}"
    return line


def kernel_output(name: str, path: str | Path, username: str | None = None) -> list[Path]:
    """Download the output files (and log) of the kernel's latest run into a folder."""
    api = client()
    ref = _kernel_ref(api, name, username)
    Path(path).mkdir(parents=True, exist_ok=True)
    with _calling(f"output of {ref}", api), contextlib.redirect_stdout(io.StringIO()):
        files, _ = api.kernels_output(ref, str(path), force=True, quiet=True)
    return [Path(f) for f in files]


def _check_submission(path: Path, data) -> list[str]:
    """Problems of a submission file; without data, header, ids and RLE syntax at 1280x1918."""
    from carvana.submission import read_rows, validate

    problems = validate(path, data)
    if not problems and next(read_rows(path), None) is None:
        problems.append("no rows after the header")
    return problems


def submit(path: str | Path, message: str, data=None) -> str:
    """Validate a submission file, refuse it when invalid, else submit it; one line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such submission file")
    problems = _check_submission(path, data)
    if problems:
        shown = "; ".join(problems[:3]) + (
            f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
        )
        raise ValueError(f"{path}: not submitted, the file is invalid: {shown}")
    api = client()
    with _calling(f"submit {path.name}", api), contextlib.redirect_stdout(io.StringIO()):
        result = api.competition_submit(str(path), message, COMPETITION, quiet=True)
    if result.message == api.COMPETITION_SUBMIT_UPLOAD_FAILED_MESSAGE:
        raise KaggleError(f"submit {path.name}: the upload failed; try again")
    return f"submitted {path.name} to {COMPETITION}: {_clean(result.message) or 'ok'}"


def list_submissions() -> str:
    """Your recent submissions: date, description, status, public and private score."""
    api = client()
    with _calling(f"list submissions of {COMPETITION}", api):
        submissions = api.competition_submissions(COMPETITION) or []
    if not submissions:
        return f"no submissions to {COMPETITION} yet"
    rows = [("date", "description", "status", "public", "private")]
    for s in submissions:
        date = s.date.strftime("%Y-%m-%d %H:%M") if s.date else ""
        rows.append(
            (
                date,
                _clean(s.description or s.file_name or "")[:40],
                s.status.name.lower(),
                s.public_score or "",
                s.private_score or "",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    return "\n".join(
        "  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )
