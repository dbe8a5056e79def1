"""kaggle_api with the real `kaggle` client against the local fake Kaggle (tests/fake_kaggle.py)."""

import gzip
import os

import pytest
from fake_kaggle import FakeKaggle, FakeKaggleServer

from carvana import cli, kaggle_api
from carvana.files import COMPETITION, CarvanaData

KEY = "k3y-that-must-never-show-0123456789"


@pytest.fixture
def fake(tmp_path, monkeypatch):
    """The fake Kaggle, the client pointed at it, no credentials, and no real ones readable."""
    for var in list(os.environ):
        if var.startswith("KAGGLE_") or var.lower() in ("http_proxy", "https_proxy", "all_proxy"):
            monkeypatch.delenv(var)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "kaggle-config"))
    with FakeKaggleServer(FakeKaggle(username="alice", key=KEY)) as server:
        monkeypatch.setenv("KAGGLE_API_ENVIRONMENT", "LOCALHOST")
        for var in ("HTTP_PROXY", "http_proxy"):
            monkeypatch.setenv(var, server.url)
        for var in ("NO_PROXY", "no_proxy"):
            monkeypatch.setenv(var, "")
        yield server


@pytest.fixture
def creds(fake, monkeypatch):
    """The fake with legacy credentials in the environment."""
    monkeypatch.setenv("KAGGLE_USERNAME", "alice")
    monkeypatch.setenv("KAGGLE_KEY", KEY)
    return fake


def write_submission(path, rows):
    with gzip.open(path, "wt", newline="") as handle:
        handle.write("img,rle_mask\n" + "".join(f"{img},{rle}\n" for img, rle in rows))
    return path


def assert_no_key(capsys, *texts):
    out, err = capsys.readouterr()
    for text in (out, err, *texts):
        assert KEY not in text


def test_push_sends_the_built_script(creds, tmp_path, capsys):
    line = kaggle_api.push_kernel("carvana-predict", out_dir=tmp_path / "build")
    script = tmp_path / "build" / "carvana-predict" / "carvana-predict.py"
    assert creds.kernels["alice/carvana-predict"] == script.read_text()
    (call,) = creds.api_calls("SaveKernel")
    assert call.path == "/api/v1/kernels.KernelsApiService/SaveKernel"
    assert call.user == "alice"
    request = call.json
    assert request["slug"] == "alice/carvana-predict"
    assert request["newTitle"] == "Carvana Predict"
    assert (request["language"], request["kernelType"]) == ("python", "script")
    assert request["isPrivate"] is True and request["enableGpu"] is True
    assert request["enableInternet"] is False
    assert request["competitionDataSources"] == [COMPETITION]
    assert request["kernelDataSources"] == ["alice/carvana-train-mobilenet"]
    assert line == (
        "pushed alice/carvana-predict version 1: https://www.kaggle.com/code/alice/carvana-predict"
    )
    assert_no_key(capsys, line, script.read_text())


def test_status_reports_the_state_and_failure(creds, capsys):
    creds.status = "RUNNING"
    assert kaggle_api.kernel_status("carvana-train-cnn") == "alice/carvana-train-cnn: running"
    creds.status, creds.failure_message = "ERROR", "out of memory"
    line = kaggle_api.kernel_status("carvana-train-cnn", username="bob")
    assert line == "bob/carvana-train-cnn: error: out of memory"
    first, second = creds.api_calls("GetKernelSessionStatus")
    assert first.json == {"userName": "alice", "kernelSlug": "carvana-train-cnn"}
    assert second.json == {"userName": "bob", "kernelSlug": "carvana-train-cnn"}
    assert_no_key(capsys, line)


def test_output_downloads_files_and_log(creds, tmp_path):
    creds.outputs = {"submission.csv.gz": b"\x1f\x8bfake", "run/config.json": b'{"model": "cnn"}'}
    files = kaggle_api.kernel_output("carvana-predict", tmp_path / "out")
    out = tmp_path / "out"
    assert sorted(files) == sorted(
        [out / "submission.csv.gz", out / "run" / "config.json", out / "carvana-predict.log"]
    )
    assert (out / "submission.csv.gz").read_bytes() == b"\x1f\x8bfake"
    assert (out / "run" / "config.json").read_bytes() == b'{"model": "cnn"}'
    assert (out / "carvana-predict.log").read_text() == creds.log
    (call,) = creds.api_calls("ListKernelSessionOutput")
    assert (call.json["userName"], call.json["kernelSlug"]) == ("alice", "carvana-predict")


def test_submit_uploads_the_file_then_lists_it(creds, tmp_path, capsys):
    path = write_submission(
        tmp_path / "submission.csv.gz", [("a_01.jpg", "1 10 30 5"), ("b_02.jpg", "")]
    )
    line = kaggle_api.submit(path, "first try")
    assert line.startswith("submitted submission.csv.gz to carvana-image-masking-challenge")
    (start,) = creds.api_calls("StartSubmissionUpload")
    assert start.json["competitionName"] == COMPETITION
    assert start.json["fileName"] == "submission.csv.gz"
    assert start.json["contentLength"] == path.stat().st_size
    (put,) = [c for c in creds.calls if c.method == "PUT"]
    assert put.path == "/upload/token-1" and put.body == path.read_bytes()
    (create,) = creds.api_calls("CreateSubmission")
    assert create.json == {
        "competitionName": COMPETITION,
        "blobFileTokens": "token-1",
        "submissionDescription": "first try",
    }
    creds.submissions[0].update(status="COMPLETE", publicScore="0.99612", privateScore="0.99587")
    table = kaggle_api.list_submissions().splitlines()
    assert table[0].split() == ["date", "description", "status", "public", "private"]
    assert table[1].split() == [
        "2024-05-06",
        "07:08",
        "first",
        "try",
        "complete",
        "0.99612",
        "0.99587",
    ]
    (listing,) = creds.api_calls("ListSubmissions")
    assert listing.json["competitionName"] == COMPETITION
    assert_no_key(capsys, line, *table)


def test_no_submissions_yet(creds):
    assert kaggle_api.list_submissions() == f"no submissions to {COMPETITION} yet"


@pytest.mark.parametrize(
    "bad, problem",
    [
        ("img,mask\na_01.jpg,1 2\n", "header must be img,rle_mask"),
        ("img,rle_mask\na_01.jpg,5 3 2 1\n", "line 2 (a_01.jpg): bad RLE"),
        ("img,rle_mask\na_01.jpg,1 3000000\n", "line 2 (a_01.jpg): bad RLE"),
        ("img,rle_mask\n", "no rows after the header"),
    ],
)
def test_submit_refuses_an_invalid_file_without_any_call(creds, tmp_path, bad, problem):
    path = tmp_path / "submission.csv.gz"
    with gzip.open(path, "wt") as handle:
        handle.write(bad)
    with pytest.raises(ValueError, match="not submitted, the file is invalid") as err:
        kaggle_api.submit(path, "bad")
    assert problem in str(err.value)
    assert creds.calls == []


def test_submit_with_data_checks_against_the_test_set(creds, synth_dirs, tmp_path):
    data = CarvanaData(synth_dirs["zipped"])
    names = data.test_names()
    path = write_submission(tmp_path / "s.csv.gz", [(n, "1 5") for n in names[1:]])
    with pytest.raises(ValueError, match=f"missing id {names[0]}"):
        kaggle_api.submit(path, "incomplete", data=data)
    assert creds.calls == []
    write_submission(path, [(n, "1 5") for n in names])
    assert "Successfully submitted" in kaggle_api.submit(path, "complete", data=data)
    assert creds.uploads["token-1"] == path.read_bytes()


@pytest.mark.parametrize(
    "method, code, message, expected",
    [
        ("ListSubmissions", 401, "Unauthenticated", "refused the credentials"),
        ("ListSubmissions", 400, f"bad value for key {KEY}", "rejected the request as invalid"),
        ("ListSubmissions", 403, None, "accept the competition rules"),
        ("StartSubmissionUpload", 400, "file too large", "rejected the request as invalid"),
        ("GetKernelSessionStatus", 404, "Not found", "check the kernel name"),
        ("GetKernelSessionStatus", 401, None, "(HTTP 401/403)"),
    ],
)
def test_http_errors_become_one_clear_line(
    creds, tmp_path, capsys, method, code, message, expected
):
    creds.fail[method] = (code, message)
    with pytest.raises(kaggle_api.KaggleError) as err:
        if method == "ListSubmissions":
            kaggle_api.list_submissions()
        elif method == "StartSubmissionUpload":
            kaggle_api.submit(write_submission(tmp_path / "s.csv.gz", [("a_01.jpg", "1 2")]), "m")
        else:
            kaggle_api.kernel_status("carvana-predict")
    text = str(err.value)
    assert expected in text and "\n" not in text
    if code in (400, 404) and method != "GetKernelSessionStatus":
        assert f"(HTTP {code})" in text
    if message and code == 400:
        assert ("***" if KEY in message else message) in text
    assert creds.api_calls(method)  # the request did reach the fake
    assert_no_key(capsys, text)


def test_missing_credentials_say_how_to_set_them(fake, capsys):
    with pytest.raises(kaggle_api.KaggleError) as err:
        kaggle_api.list_submissions()
    text = str(err.value)
    for hint in ("~/.kaggle/kaggle.json", "KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN"):
        assert hint in text
    assert fake.calls == []
    assert capsys.readouterr().out == ""  # the client's own how-to is not printed


def test_cli_reports_missing_credentials_in_one_line(fake, capsys):
    assert cli.main(["submissions"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("carvana: error: no Kaggle credentials found") and "\n" not in err


def test_credentials_from_kaggle_json(fake, tmp_path, capsys):
    config = tmp_path / "kaggle-config"
    config.mkdir()
    (config / "kaggle.json").write_text(f'{{"username": "alice", "key": "{KEY}"}}')
    (config / "kaggle.json").chmod(0o600)
    assert kaggle_api.kernel_status("carvana-predict") == "alice/carvana-predict: complete"
    assert fake.api_calls("GetKernelSessionStatus")[0].user == "alice"
    assert_no_key(capsys)


def test_unreachable_api_is_a_clear_error(creds, monkeypatch):
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    for var in ("HTTP_PROXY", "http_proxy"):
        monkeypatch.setenv(var, f"http://127.0.0.1:{port}")
    with pytest.raises(kaggle_api.KaggleError, match="cannot reach the Kaggle API"):
        kaggle_api.list_submissions()
