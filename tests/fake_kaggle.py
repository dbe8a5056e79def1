"""A local fake of the Kaggle API: enough for the real `kaggle` 2.x client to push, poll, submit.

The client is pointed at it with KAGGLE_API_ENVIRONMENT=LOCALHOST (endpoint http://localhost)
and HTTP_PROXY=<this server>, so it receives absolute-form requests: every API call is a POST of
camelCase JSON to /api/v1/<service>/<Method> (field names as in kagglesdk's *_api_service.py),
plus the PUT of an upload to the createUrl it handed out and the GETs of output file URLs.
It records what it got; `fail` makes a method answer with an HTTP error. Datasets (create,
new version, status) keep the bytes of every uploaded file; competition data files are
served through the redirect Kaggle answers DownloadDataFile with.
"""

from __future__ import annotations

import base64
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

KERNELS = "kernels.KernelsApiService"
COMPETITIONS = "competitions.CompetitionApiService"
DATASETS = "datasets.DatasetApiService"
BLOBS = "blobs.BlobApiService"
SERVICES = tuple(f"/api/v1/{s}/" for s in (KERNELS, COMPETITIONS, DATASETS, BLOBS))


@dataclass
class Call:
    """One request the fake received."""

    method: str
    path: str
    json: dict | None = None
    body: bytes = b""
    user: str | None = None  # user name of Basic auth, when given


@dataclass
class FakeKaggle:
    """State and script of the fake: what it returns and what it received."""

    username: str = "alice"
    key: str = "fake-key"
    calls: list[Call] = field(default_factory=list)
    kernels: dict[str, str] = field(default_factory=dict)  # slug -> pushed text
    versions: dict[str, int] = field(default_factory=dict)
    uploads: dict[str, bytes] = field(default_factory=dict)  # token -> bytes
    submissions: list[dict] = field(default_factory=list)
    outputs: dict[str, bytes] = field(default_factory=dict)  # kernel output files
    log: str = "kernel log line\n"
    status: str = "COMPLETE"
    statuses: list[str] = field(default_factory=list)  # answered in turn before `status`
    datasets: dict[str, dict] = field(default_factory=dict)  # "owner/slug" -> state
    blobs: dict[str, dict] = field(default_factory=dict)  # token -> start request
    files: dict[str, bytes] = field(default_factory=dict)  # competition data files
    failure_message: str | None = None
    fail: dict[str, tuple[int, str | None]] = field(default_factory=dict)  # Method -> (code, msg)
    url: str = ""

    def api_calls(self, name: str | None = None) -> list[Call]:
        """The POSTed API calls, optionally only those of one method name."""
        found = [c for c in self.calls if c.path.startswith("/api/v1/")]
        return [c for c in found if c.path.rsplit("/", 1)[-1] == name] if name else found

    # -- API methods (request dict -> response dict) -------------------------------------------
    def SaveKernel(self, request: dict) -> dict:
        slug = request["slug"]
        self.kernels[slug] = request["text"]
        self.versions[slug] = self.versions.get(slug, 0) + 1
        return {
            "ref": f"/code/{slug}",
            "url": f"https://www.kaggle.com/code/{slug}",
            "versionNumber": self.versions[slug],
            "kernelId": 1000 + len(self.kernels),
        }

    def GetKernelSessionStatus(self, request: dict) -> dict:
        reply = {"status": self.statuses.pop(0) if self.statuses else self.status}
        if self.failure_message and reply["status"] == "ERROR":
            reply["failureMessage"] = self.failure_message
        return reply

    def ListKernelSessionOutput(self, request: dict) -> dict:
        files = [
            {"url": f"http://localhost/output/{name}", "fileName": name} for name in self.outputs
        ]
        return {"files": files, "log": self.log}

    def StartSubmissionUpload(self, request: dict) -> dict:
        token = f"token-{len(self.uploads) + 1}"
        self.uploads[token] = b""
        return {"token": token, "createUrl": f"http://localhost/upload/{token}"}

    def CreateSubmission(self, request: dict) -> dict:
        token = request.get("blobFileTokens")
        if token not in self.uploads:
            raise KeyError(f"unknown upload token {token!r}")
        self.submissions.append(
            {
                "ref": 5000 + len(self.submissions),
                "date": "2024-05-06T07:08:09.000Z",
                "description": request.get("submissionDescription", ""),
                "fileName": "submission.csv.gz",
                "status": "PENDING",
                "totalBytes": len(self.uploads[token]),
            }
        )
        return {"message": "Successfully submitted to Carvana Image Masking Challenge", "ref": 1}

    def ListSubmissions(self, request: dict) -> dict:
        size = request.get("pageSize") or 20
        page = request.get("page") or 1
        newest = list(reversed(self.submissions))
        return {"submissions": newest[(page - 1) * size : page * size]}

    # -- datasets and blobs (kagglesdk datasets/, blobs/ *_api_service.py) --------------------
    def GetDatasetStatus(self, request: dict) -> dict:
        ref = f"{request['ownerSlug']}/{request['datasetSlug']}"
        if ref not in self.datasets:
            raise LookupError(f"dataset {ref} not found")
        return {"status": "READY"}

    def StartBlobUpload(self, request: dict) -> dict:
        token = f"blob-{len(self.blobs) + 1}"
        self.blobs[token] = request
        self.uploads[token] = b""
        return {"token": token, "createUrl": f"http://localhost/upload/{token}"}

    def _files(self, files: list[dict]) -> dict[str, bytes]:
        found = {}
        for item in files:
            token = item["token"]
            if token not in self.blobs:
                raise KeyError(f"unknown blob token {token!r}")
            found[self.blobs[token]["name"]] = self.uploads[token]
        return found

    def CreateDataset(self, request: dict) -> dict:
        ref = f"{request['ownerSlug']}/{request['slug']}"
        self.datasets[ref] = {
            "title": request["title"],
            "isPrivate": request.get("isPrivate", False),
            "licenseName": request.get("licenseName"),
            "versions": [self._files(request.get("files", []))],
        }
        return {"ref": ref, "url": f"https://www.kaggle.com/datasets/{ref}", "status": "ok"}

    def CreateDatasetVersion(self, request: dict) -> dict:
        ref = f"{request['ownerSlug']}/{request['datasetSlug']}"
        if ref not in self.datasets:
            raise KeyError(f"no dataset {ref}")
        self.datasets[ref]["versions"].append(self._files(request["body"].get("files", [])))
        return {"ref": ref, "url": f"https://www.kaggle.com/datasets/{ref}", "status": "ok"}


def _handler(fake: FakeKaggle):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep the test output clean
            pass

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                data = b""
                while True:
                    size = int(self.rfile.readline().split(b";")[0], 16)
                    chunk = self.rfile.read(size)
                    self.rfile.readline()
                    if size == 0:
                        return data
                    data += chunk
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _user(self) -> str | None:
            auth = self.headers.get("Authorization", "")
            if not auth.startswith("Basic "):
                return None
            user, _, key = base64.b64decode(auth[6:]).decode().partition(":")
            return user if key == fake.key else None

        def _reply(self, code: int, body: bytes, kind: str = "application/json") -> None:
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _json(self, code: int, data: dict) -> None:
            self._reply(code, json.dumps(data).encode())

        def do_POST(self):
            path = urlsplit(self.path).path
            body = self._body()
            call = Call("POST", path, json.loads(body or b"{}"), body, self._user())
            fake.calls.append(call)
            method = path.rsplit("/", 1)[-1]
            if method in fake.fail:
                code, message = fake.fail[method]
                if message is None:  # a bare status, as a proxy or load balancer would send
                    return self._reply(code, b"error", "text/plain")
                return self._json(code, {"code": code, "message": message})
            if call.user != fake.username:
                return self._json(401, {"code": 401, "message": "Unauthenticated"})
            if not path.startswith(SERVICES):
                return self._json(404, {"code": 404, "message": f"no service {path}"})
            handler = getattr(fake, method, None)
            if handler is None and method != "DownloadDataFile":
                return self._json(404, {"code": 404, "message": f"no method {method}"})
            if method == "DownloadDataFile":  # answered by a redirect to the file, as Kaggle does
                name = call.json["fileName"]
                if name not in fake.files:
                    return self._json(404, {"code": 404, "message": f"no file {name}"})
                self.send_response(302)
                self.send_header("Location", f"http://localhost/files/{name}")
                self.send_header("Content-Length", "0")
                return self.end_headers()
            try:
                return self._json(200, handler(call.json))
            except KeyError as err:
                return self._json(400, {"code": 400, "message": f"bad request: {err}"})
            except LookupError as err:
                return self._json(404, {"code": 404, "message": str(err)})

        def do_PUT(self):
            path = urlsplit(self.path).path
            body = self._body()
            fake.calls.append(Call("PUT", path, None, body))
            token = path.rsplit("/", 1)[-1]
            if not path.startswith("/upload/") or token not in fake.uploads:
                return self._reply(404, b"no such upload", "text/plain")
            fake.uploads[token] = body
            self._reply(200, b"", "text/plain")

        def do_GET(self):
            path = urlsplit(self.path).path
            fake.calls.append(Call("GET", path))
            if path.startswith("/files/") and path.removeprefix("/files/") in fake.files:
                return self._reply(200, fake.files[path.removeprefix("/files/")], "application/zip")
            name = path.removeprefix("/output/")
            if not path.startswith("/output/") or name not in fake.outputs:
                return self._reply(404, b"no such file", "text/plain")
            self._reply(200, fake.outputs[name], "application/octet-stream")

    return Handler


class FakeKaggleServer:
    """The fake on 127.0.0.1:<free port> in a thread; a context manager."""

    def __init__(self, fake: FakeKaggle | None = None):
        self.fake = fake or FakeKaggle()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self.fake))
        self.server.daemon_threads = True
        self.fake.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeKaggle:
        self.thread.start()
        return self.fake

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)
