"""Submit to the competition and list the scores, through the `kaggle` client (kaggle_api).

A file is uploaded only when it holds every test image exactly once: checked against the local
data (--data), else against the competition's sample_submission.csv fetched from Kaggle. A
daily submission is too precious to spend on an incomplete file. No TensorFlow here.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from pathlib import Path

from carvana.files import COMPETITION
from carvana.kaggle_api import KaggleError, _calling, _clean, client

SAMPLE_SUBMISSION = "sample_submission.csv.zip"  # its name among the competition's files
PAGE_SIZE = 20  # the client's page size for submissions


def fetch_sample_submission(api, folder: Path) -> Path:
    """Download the competition's sample_submission into `folder`; the file."""
    with _calling(f"download {SAMPLE_SUBMISSION} of {COMPETITION}", api):
        with contextlib.redirect_stdout(io.StringIO()):
            api.competition_download_file(
                COMPETITION, SAMPLE_SUBMISSION, path=str(folder), force=True, quiet=True
            )
    found = sorted(folder.glob("sample_submission.csv*"))
    if not found:
        raise KaggleError(f"download {SAMPLE_SUBMISSION}: Kaggle sent no file")
    return found[0]


def _problems(path: Path, data) -> list[str]:
    from carvana.submission import read_rows, validate

    problems = validate(path, data)
    if not problems and next(read_rows(path), None) is None:
        problems.append("no rows after the header")
    return problems


def check_submission(path: Path, data=None, api=None, force: bool = False) -> list[str]:
    """Problems of a submission file: syntax always; unless `force`, every test image exactly
    once, against `data`, else against the sample_submission fetched with `api`."""
    from carvana.files import CarvanaData

    if data is not None or force:
        return _problems(path, data)
    problems = _problems(path, None)  # a broken file needs no network call
    if problems:
        return problems
    with tempfile.TemporaryDirectory(prefix="carvana-sample-") as folder:
        fetch_sample_submission(api or client(), Path(folder))
        return _problems(path, CarvanaData(folder))


def submit(path: str | Path, message: str, data=None, force: bool = False) -> str:
    """Check a submission file, refuse it when invalid or incomplete, else submit it; one line.

    `force` skips the test-set check (the syntax is still checked)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such submission file")
    problems = check_submission(path, data, force=force)
    if problems:
        shown = "; ".join(problems[:3]) + (
            f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
        )
        hint = "" if force else " (--force uploads it without the test-set check)"
        raise ValueError(f"{path}: not submitted, the file is invalid: {shown}{hint}")
    api = client()
    with _calling(f"submit {path.name}", api), contextlib.redirect_stdout(io.StringIO()):
        result = api.competition_submit(str(path), message, COMPETITION, quiet=True)
    if result.message == api.COMPETITION_SUBMIT_UPLOAD_FAILED_MESSAGE:
        raise KaggleError(f"submit {path.name}: the upload failed; try again")
    return f"submitted {path.name} to {COMPETITION}: {_clean(result.message) or 'ok'}"


def all_submissions(api, last: int | None = None) -> list:
    """Your submissions, newest first, page by page; only the newest `last` when given."""
    found: list = []
    page = 1
    while last is None or len(found) < last:
        with _calling(f"list submissions of {COMPETITION}", api):
            batch = api.competition_submissions(COMPETITION, page_number=page, page_size=PAGE_SIZE)
        found += [s for s in batch or [] if s is not None]
        if len(batch or []) < PAGE_SIZE:
            break
        page += 1
    return found if last is None else found[:last]


def list_submissions(last: int | None = None) -> str:
    """A table of your submissions (all, or the newest `last`): date, description, status,
    public and private score."""
    if last is not None and last < 1:
        raise ValueError(f"-n must be 1 or more, got {last}")
    submissions = all_submissions(client(), last)
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
