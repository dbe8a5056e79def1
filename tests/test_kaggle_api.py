"""kaggle_api and kaggle_submit with the real `kaggle` client against the local fake Kaggle
(tests/fake_kaggle.py): push, follow, logs, output, weights dataset, submit, submissions."""

import gzip
import io
import os
import zipfile
from pathlib import Path

import pytest
from fake_kaggle import FakeKaggle, FakeKaggleServer

from carvana import cli, kaggle_api, kaggle_submit
from carvana.files import COMPETITION, CarvanaData
from carvana.kernel_runtime import WEIGHTS_FILE

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


def sample_zip(names):
    """The bytes of a sample_submission.csv.zip listing these test images."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(
            "sample_submission.csv", "img,rle_mask\n" + "".join(f"{n},1 1\n" for n in names)
        )
    return buffer.getvalue()


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
    assert request["machineShape"] == "NvidiaTeslaT4"
    assert request["competitionDataSources"] == [COMPETITION]
    assert request["kernelDataSources"] == ["alice/carvana-train-mobilenet"]
    assert line == (
        "pushed alice/carvana-predict version 1 on NvidiaTeslaT4: "
        "https://www.kaggle.com/code/alice/carvana-predict"
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
    creds.files["sample_submission.csv.zip"] = sample_zip(["a_01.jpg", "b_02.jpg"])
    line = kaggle_submit.submit(path, "first try")
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
    table = kaggle_submit.list_submissions().splitlines()
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
    (download,) = creds.api_calls("DownloadDataFile")
    assert download.json == {
        "competitionName": COMPETITION,
        "fileName": "sample_submission.csv.zip",
    }
    assert_no_key(capsys, line, *table)


def test_no_submissions_yet(creds):
    assert kaggle_submit.list_submissions() == f"no submissions to {COMPETITION} yet"


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
        kaggle_submit.submit(path, "bad")
    assert problem in str(err.value)
    assert creds.calls == []


def test_submit_with_data_checks_against_the_test_set(creds, synth_dirs, tmp_path):
    data = CarvanaData(synth_dirs["zipped"])
    names = data.test_names()
    path = write_submission(tmp_path / "s.csv.gz", [(n, "1 5") for n in names[1:]])
    with pytest.raises(ValueError, match=f"missing id {names[0]}"):
        kaggle_submit.submit(path, "incomplete", data=data)
    assert creds.calls == []
    write_submission(path, [(n, "1 5") for n in names])
    assert "Successfully submitted" in kaggle_submit.submit(path, "complete", data=data)
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
            kaggle_submit.list_submissions()
        elif method == "StartSubmissionUpload":
            path = write_submission(tmp_path / "s.csv.gz", [("a_01.jpg", "1 2")])
            kaggle_submit.submit(path, "m", force=True)
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
        kaggle_submit.list_submissions()
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
        kaggle_submit.list_submissions()


# -- accelerators, following a kernel, logs, output ------------------------------------------
def test_push_with_an_accelerator_and_a_retired_one(creds, tmp_path, capsys):
    line = kaggle_api.push_kernel("carvana-train-cnn", out_dir=tmp_path, accelerator="nvidial4")
    assert " on NvidiaL4: " in line
    assert creds.api_calls("SaveKernel")[0].json["machineShape"] == "NvidiaL4"
    assert (
        cli.main(["kernels", "push", "carvana-train-cnn", "--accelerator", "NvidiaTeslaP100"]) == 2
    )
    err = capsys.readouterr().err.strip()
    assert err.startswith("carvana: error: accelerator NvidiaTeslaP100 is retired on Kaggle")
    assert "NvidiaTeslaT4, NvidiaTeslaT4Highmem" in err and "\n" not in err
    assert len(creds.api_calls("SaveKernel")) == 1  # refused before any call


def test_status_wait_polls_until_complete(creds):
    creds.statuses = ["QUEUED", "RUNNING", "RUNNING"]
    times, lines, sleeps = iter([0, 5, 65, 3725, 3790]), [], []
    state = kaggle_api.wait_for_kernel(
        "carvana-train-cnn",
        interval=60,
        sleep=sleeps.append,
        clock=lambda: next(times),
        echo=lines.append,
    )
    assert state == "complete"
    assert lines == [
        "[0:00:05] alice/carvana-train-cnn: queued",
        "[0:01:05] alice/carvana-train-cnn: running",
        "[1:02:05] alice/carvana-train-cnn: running",  # a reminder every 10 minutes
        "[1:03:10] alice/carvana-train-cnn: complete",
    ]
    assert sleeps == [60, 60, 60] and len(creds.api_calls("GetKernelSessionStatus")) == 4


@pytest.mark.parametrize("final, code", [("COMPLETE", 0), ("ERROR", 1), ("CANCEL_ACKNOWLEDGED", 1)])
def test_cli_status_wait_exit_code(creds, capsys, final, code):
    creds.statuses, creds.status = ["RUNNING"], final
    if final == "ERROR":
        creds.failure_message = "CUDA out of memory"
    args = ["kernels", "status", "carvana-predict", "--wait", "--interval", "0.01"]
    assert cli.main(args) == code
    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith("alice/carvana-predict: running") and out[0].startswith("[0:00:0")
    assert out[-1].endswith(final.lower() + (": CUDA out of memory" if final == "ERROR" else ""))


def test_logs_prints_the_kernel_log(creds, capsys):
    creds.log = (
        '[{"stream_name":"stdout","time":1.5,"data":"training cnn\\n"},'
        '{"stream_name":"stderr","time":2.0,"data":"epoch 1/40\\n"}]'
    )
    assert cli.main(["kernels", "logs", "carvana-train-cnn"]) == 0
    assert capsys.readouterr().out == "training cnn\nepoch 1/40\n"
    creds.log = "plain text log\n"
    assert kaggle_api.kernel_logs("carvana-train-cnn") == "plain text log\n"


def test_output_downloads_what_the_next_step_needs(creds, tmp_path, monkeypatch, capsys):
    creds.outputs = {
        "run/config.json": b"{}",
        "run/model.keras": b"model",
        "run/checkpoint/ckpt.keras": b"big",
        "evaluation/report.md": b"report",
        "train-summary.json": b"{}",
        "submission.csv.gz": b"\x1f\x8b",
    }
    monkeypatch.chdir(tmp_path)
    assert cli.main(["kernels", "output", "carvana-train-cnn"]) == 0
    out = capsys.readouterr().out
    folder = Path("kernel-output") / "carvana-train-cnn"
    assert f"into {folder}/" in out.splitlines()[-1]
    got = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert got == [
        "carvana-train-cnn.log",
        "run/config.json",
        "run/model.keras",
        "submission.csv.gz",
        "train-summary.json",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home", "kernel-output"]
    files = kaggle_api.kernel_output("carvana-train-cnn", tmp_path / "all", everything=True)
    assert len(files) == len(creds.outputs) + 1
    assert (tmp_path / "all" / "run" / "checkpoint" / "ckpt.keras").read_bytes() == b"big"


# -- ImageNet weights as a private dataset -----------------------------------------------------
def test_weights_upload_creates_then_versions_a_private_dataset(creds, tmp_path, capsys):
    weights = tmp_path / "home" / ".keras" / "models" / WEIGHTS_FILE
    weights.parent.mkdir(parents=True)
    weights.write_bytes(os.urandom(300_000))
    assert cli.main(["weights", "upload"]) == 0  # from the Keras cache
    line = capsys.readouterr().out
    ref = "alice/carvana-mobilenetv2-imagenet"
    assert f"as new private dataset {ref}" in line
    dataset = creds.datasets[ref]
    assert dataset["isPrivate"] is True
    assert dataset["versions"] == [{WEIGHTS_FILE: weights.read_bytes()}]
    (start,) = creds.api_calls("StartBlobUpload")
    assert (start.json["name"], start.json["type"]) == (WEIGHTS_FILE, "DATASET")
    other = tmp_path / "renamed.h5"
    other.write_bytes(b"second version")
    line = kaggle_api.upload_weights(other)
    assert f"as new version of {ref}" in line
    assert dataset["versions"][1] == {WEIGHTS_FILE: b"second version"}
    (create,) = creds.api_calls("CreateDatasetVersion")
    assert (create.json["ownerSlug"], create.json["datasetSlug"]) == tuple(ref.split("/"))
    assert_no_key(capsys, line)


def test_weights_upload_without_a_file_says_how(creds, tmp_path):
    with pytest.raises(FileNotFoundError, match=f"{WEIGHTS_FILE}: no weights file"):
        kaggle_api.upload_weights()
    assert creds.calls == []


# -- submit checks the file against the test set ------------------------------------------------
def test_submit_without_data_checks_against_the_sample_submission(creds, tmp_path, capsys):
    creds.files["sample_submission.csv.zip"] = sample_zip(["a_01.jpg", "b_02.jpg", "c_03.jpg"])
    path = write_submission(tmp_path / "s.csv.gz", [("a_01.jpg", "1 2"), ("b_02.jpg", "")])
    assert cli.main(["submit", str(path), "-m", "one shard"]) == 2
    err = capsys.readouterr().err
    assert "not submitted" in err and "missing id c_03.jpg" in err and "--force" in err
    assert not creds.api_calls("StartSubmissionUpload")
    write_submission(path, [("a_01.jpg", "1 2"), ("b_02.jpg", ""), ("b_02.jpg", "")])
    with pytest.raises(ValueError, match="b_02.jpg\\): duplicate id"):
        kaggle_submit.submit(path, "twice", force=True)  # --force skips only the test-set check
    write_submission(path, [("a_01.jpg", "1 2"), ("b_02.jpg", "")])
    assert cli.main(["submit", str(path), "-m", "I mean it", "--force"]) == 0
    assert creds.uploads["token-1"] == path.read_bytes()


def test_submit_refuses_when_the_sample_submission_cannot_be_fetched(creds, tmp_path):
    path = write_submission(tmp_path / "s.csv.gz", [("a_01.jpg", "1 2")])
    creds.fail["DownloadDataFile"] = (403, "You must accept the rules")
    with pytest.raises(kaggle_api.KaggleError, match="download sample_submission.csv.zip"):
        kaggle_submit.submit(path, "m")
    assert not creds.api_calls("StartSubmissionUpload")


def test_submissions_lists_every_page_or_the_last_n(creds, capsys):
    for i in range(45):
        creds.submissions.append(
            {
                "ref": i,
                "date": "2024-05-06T07:08:09.000Z",
                "description": f"try {i}",
                "fileName": "s.csv.gz",
                "status": "COMPLETE",
                "publicScore": f"0.{i:05d}",
            }
        )
    table = kaggle_submit.list_submissions().splitlines()
    assert len(table) == 1 + 45
    assert "try 44" in table[1] and "try 0 " in table[-1] + " "
    pages = [c.json["page"] for c in creds.api_calls("ListSubmissions")]
    assert pages == [1, 2, 3]
    assert cli.main(["submissions", "-n", "3"]) == 0
    shown = capsys.readouterr().out.splitlines()
    assert [r.split()[3] for r in shown[1:]] == ["44", "43", "42"]
    assert pages + [1] == [c.json["page"] for c in creds.api_calls("ListSubmissions")]
