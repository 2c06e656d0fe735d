"""A fake Hugging Face Hub on loopback, close enough to the real protocol that
huggingface_hub 2.5 and diffusers 0.42 download from it (standard library only).

huggingface_hub reads ``HF_ENDPOINT`` once, at import, so the downloader runs in a child
process whose environment carries ``hub.child_env(hf_home)``::

    with FakeHub() as hub:
        hub.add_repo("acme/tiny", folder)
        env = {**os.environ, **hub.child_env(tmp_path / "hf-home")}
        subprocess.run([sys.executable, "-c", code], env=env, check=True)
        assert any(r.method == "GET" for r in hub.requests)

What the real clients ask for (all of it is served here):

- ``GET /api/models/{repo}`` and ``GET /api/models/{repo}/revision/{rev}`` (``repo_info`` /
  ``model_info``): diffusers' ``from_pretrained``/``download`` asks the first (its
  ``resolve_revision``) then ``/revision/main`` (its ``model_info``), ``snapshot_download``
  asks ``/revision/main`` unless given a commit sha. ``?blobs=true`` (``files_metadata=True``)
  adds ``size``, ``blobId`` and ``lfs`` to each sibling; ``expand``/``securityStatus`` are
  ignored (everything is always sent).
- ``GET /api/models/{repo}/tree/{sha}?recursive=true&expand=false`` (``list_repo_tree``:
  ``snapshot_download`` lists the files with it, once per commit, then caches the listing).
- ``POST /api/models/{repo}/paths-info/{rev}`` (``get_paths_info``; form fields ``paths``).
- ``HEAD /{repo}/resolve/{sha}/{path}`` (metadata: ``X-Repo-Commit``, quoted ``ETag``,
  ``Content-Length``, and for LFS files ``X-Linked-Etag``/``X-Linked-Size``), then ``GET`` of
  the same address, with ``Range: bytes=N-`` when a download resumes. A second, cached
  ``from_pretrained`` makes only the two ``/api/models`` GETs.
- ``GET /api/agent-harnesses``, only when telemetry is on (``child_env`` turns it off).

Files of at least 1 MiB and ``*.safetensors``/``*.bin`` are LFS files, as on the Hub: their
ETag is the content's sha256, the others' the git blob sha1. Every file is served directly
(200/206, 416 for a range past the end), never redirected to a CDN. Unknown repos, revisions
and files get the Hub's 404s (``RepoNotFound``, ``RevisionNotFound``, ``EntryNotFound``).

Fault modes, set from the test thread at any time, apply to every later request (one at a
time: each setter replaces the previous fault; ``heal()`` clears it). What
``hf_hub_download`` raises (the first HEAD fails, so nothing is downloaded):

- ``fail(404)``: ``X-Error-Code: RepoNotFound`` -> ``RepositoryNotFoundError``, 1 request.
- ``fail(401)``: the Hub's gated answer (``X-Error-Code: GatedRepo`` and its message) ->
  ``GatedRepoError`` (a ``RepositoryNotFoundError``), 1 request.
- ``fail(500)`` (or any other status >= 400: a plain error) -> ``LocalEntryNotFoundError``
  caused by ``HfHubHTTPError``, after 7 HEADs (see below). 5xx answers carry
  ``Retry-After: 0`` unless ``fail(500, retry_after=None)``.
- ``garbage()``: status 200, random non-JSON bytes, no Hub headers -> ``LocalEntryNotFoundError``
  caused by ``FileMetadataError`` (no ``X-Repo-Commit``), 1 request. ``snapshot_download`` and
  diffusers instead let ``json.JSONDecodeError`` out of ``repo_info``.
- ``cut(n)``: file GETs announce the whole length, send ``n`` bytes of the body and close the
  connection, on every response (each resumed GET stops early too).

``snapshot_download`` turns 404/401 into the same classes and 500 into
``LocalEntryNotFoundError``, from one ``/api/models`` GET; diffusers (``from_pretrained``,
``download``) raises ``OSError`` caused by the ``RepositoryNotFoundError`` / ``GatedRepoError``
/ ``HfHubHTTPError`` after two GETs, with no retries.

Failing fast (huggingface_hub 2.5.0). The retry counts and waits are constants, not settings:

- ``hf_hub_download``: a HEAD answered 5xx (or 408/429, or a connection error) is tried again,
  when nothing is cached, with ``retry_on_errors=True``: 6 more HEADs with waits of 1, 2, 4, 8
  and 8 s (23 s). A ``Retry-After: N`` header replaces each wait with N + 1 s, so the fake's
  ``Retry-After: 0`` makes it 5 x 1 s; ``retry_after=None`` gives the real Hub's plain 500.
- ``repo_info``/``model_info`` never retry; ``list_repo_tree`` retries 5xx like the above.
- A cut GET: ``http_get`` reads the body in 10 MiB chunks (``DOWNLOAD_CHUNK_SIZE``) and only
  whole chunks count, so on ``httpx2.RemoteProtocolError`` it sleeps 1 s and asks again from
  the last whole chunk (``Range: bytes=<k * 10 MiB>-``, no Range at all for k = 0). Its 5
  retries are reset only when a whole chunk arrived: ``cut(n)`` with n < 10 MiB makes 6 GETs
  from byte 0 and then lets ``httpx2.RemoteProtocolError`` itself out of ``hf_hub_download``
  (5 s of waits); with n >= 10 MiB the download resumes and completes. The partial file is
  ``blobs/<etag>.<random>.incomplete``, unique to the process and deleted on failure: a later
  download never resumes from it, it starts over at byte 0.
- ``HF_HUB_ETAG_TIMEOUT`` (HEAD, first try only: the retry uses a fixed 60 s) and
  ``HF_HUB_DOWNLOAD_TIMEOUT`` (GET read timeout) bound a stalled server; ``model_info`` has
  no timeout at all. ``child_env`` sets both to 5 s; the fake itself never stalls.

A child that must not wait at all can replace ``time.sleep`` before downloading (the waits are
``time.sleep`` calls in huggingface_hub.utils._http and file_download); test_fake_hub.py does.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import random
import re
import string
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

LFS_MIN_SIZE = 1024 * 1024
LFS_SUFFIXES = (".safetensors", ".bin")
# The Hub's own dates for a repo nobody touched: any fixed ISO date parses.
_DATE = "2024-01-01T00:00:00.000Z"
_RANGE = re.compile(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class RecordedRequest:
    """One request as it reached the fake: ``path`` is the raw request target (query string
    included, still percent-encoded), ``headers`` has lower-case names."""

    method: str
    path: str
    headers: dict[str, str]


@dataclass(frozen=True)
class _File:
    path: str
    data: bytes
    blob_id: str  # git's sha1 of the blob (of the LFS pointer for LFS files), as the Hub's oid
    sha256: str
    lfs: bool
    pointer_size: int

    @classmethod
    def read(cls, path: str, data: bytes) -> _File:
        sha256 = hashlib.sha256(data).hexdigest()
        lfs = len(data) >= LFS_MIN_SIZE or path.endswith(LFS_SUFFIXES)
        if lfs:
            spec = "version https://git-lfs.github.com/spec/v1\n"
            pointer = f"{spec}oid sha256:{sha256}\nsize {len(data)}\n".encode()
            blob = pointer
        else:
            pointer, blob = b"", data
        blob_id = hashlib.sha1(b"blob %d\0" % len(blob) + blob).hexdigest()
        return cls(path, data, blob_id, sha256, lfs, len(pointer))

    @property
    def etag(self) -> str:
        return self.sha256 if self.lfs else self.blob_id

    def tree_entry(self) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "type": "file",
            "oid": self.blob_id,
            "size": len(self.data),
            "path": self.path,
        }
        if self.lfs:
            entry["lfs"] = {
                "oid": self.sha256,
                "size": len(self.data),
                "pointerSize": self.pointer_size,
            }
        return entry

    def sibling(self, metadata: bool) -> dict[str, Any]:
        sibling: dict[str, Any] = {"rfilename": self.path}
        if metadata:
            sibling["size"] = len(self.data)
            sibling["blobId"] = self.blob_id
            if self.lfs:
                sibling["lfs"] = {
                    "size": len(self.data),
                    "sha256": self.sha256,
                    "pointerSize": self.pointer_size,
                }
        return sibling


@dataclass(frozen=True)
class _Repo:
    repo_id: str
    sha: str
    files: dict[str, _File]

    @property
    def folders(self) -> list[str]:
        found = set()
        for path in self.files:
            parts = path.split("/")[:-1]
            found.update("/".join(parts[: i + 1]) for i in range(len(parts)))
        return sorted(found)

    def folder_entry(self, folder: str) -> dict[str, Any]:
        oid = hashlib.sha1(f"{self.sha} {folder}".encode()).hexdigest()
        return {"type": "directory", "oid": oid, "size": 0, "path": folder}

    def entry(self, path: str) -> dict[str, Any] | None:
        if path in self.files:
            return self.files[path].tree_entry()
        if path in self.folders:
            return self.folder_entry(path)
        return None


class FakeHub:
    """A loopback Hub. Use as a context manager; ``url`` is ``http://127.0.0.1:PORT``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._repos: dict[str, _Repo] = {}
        self._requests: list[RecordedRequest] = []
        # A fault for one repo (by id) or for every request (None).
        self._faults: dict[str | None, tuple[str, int | None, int | None]] = {}
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    # -- life cycle -------------------------------------------------------------------------

    def __enter__(self) -> FakeHub:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        server.daemon_threads = True
        server.hub = self  # type: ignore[attr-defined]
        self._server = server
        self.url = f"http://127.0.0.1:{server.server_address[1]}"
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

    # -- content ----------------------------------------------------------------------------

    def add_repo(self, repo_id: str, folder: Path) -> str:
        """Serve every file under ``folder`` (read now) as model repo ``repo_id``, at one commit
        whose sha follows from the files' paths and contents; revision "main" is that commit.
        Returns the commit sha."""
        folder = Path(folder)
        files = {}
        for file in sorted(p for p in folder.rglob("*") if p.is_file()):
            path = file.relative_to(folder).as_posix()
            files[path] = _File.read(path, file.read_bytes())
        listing = "".join(f"{path}\0{f.blob_id}\n" for path, f in files.items())
        sha = hashlib.sha1(listing.encode()).hexdigest()
        with self._lock:
            self._repos[repo_id] = _Repo(repo_id, sha, files)
        return sha

    # -- faults -----------------------------------------------------------------------------

    def fail(self, status: int, *, retry_after: int | None = 0, repo: str | None = None) -> None:
        """Answer every later request (for ``repo`` only, if given) with ``status``: 404 is
        the Hub's RepoNotFound, 401 its gated answer (GatedRepo), anything else a plain
        error; 5xx answers carry ``Retry-After: retry_after`` unless it is None."""
        if status < 400:
            raise ValueError(f"not an error status: {status}")
        self._set(repo, ("fail", status, retry_after))

    def garbage(self, repo: str | None = None) -> None:
        """Answer every later request (for ``repo`` only, if given) with 200 and random
        non-JSON bytes, no Hub headers."""
        self._set(repo, ("garbage", None, None))

    def cut(self, after_bytes: int, repo: str | None = None) -> None:
        """Close every later file GET after ``after_bytes`` bytes of its body (the headers
        still announce the whole length); other requests are answered normally."""
        if after_bytes < 0:
            raise ValueError("after_bytes must be >= 0")
        self._set(repo, ("cut", after_bytes, None))

    def heal(self) -> None:
        """Back to normal answers, for every repo."""
        with self._lock:
            self._faults.clear()

    def _set(self, repo: str | None, fault: tuple[str, int | None, int | None]) -> None:
        with self._lock:
            self._faults[repo] = fault

    # -- what was asked ---------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request so far, in arrival order (a copy)."""
        with self._lock:
            return list(self._requests)

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    def child_env(self, hf_home: Path) -> dict[str, str]:
        """Variables to add to a child's environment so huggingface_hub (and diffusers,
        transformers) in it download from this hub into ``hf_home``, online, without Xet,
        telemetry, a user's token or progress bars, and with short timeouts."""
        hf_home = Path(hf_home)
        return {
            "HF_ENDPOINT": self.url,
            "HF_HOME": str(hf_home),
            "HF_HUB_CACHE": str(hf_home / "hub"),  # over any HF_HUB_CACHE the parent has
            "HF_HUB_OFFLINE": "0",  # tests/conftest.py sets 1 for the whole session
            "TRANSFORMERS_OFFLINE": "0",
            "HF_HUB_DISABLE_XET": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1",
            "HF_HUB_DISABLE_UPDATE_CHECK": "1",
            "HF_HUB_ETAG_TIMEOUT": "5",
            "HF_HUB_DOWNLOAD_TIMEOUT": "5",
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
        }

    # -- used by the handler ----------------------------------------------------------------

    def _record(self, request: RecordedRequest) -> tuple[str, int | None, int | None] | None:
        with self._lock:
            self._requests.append(request)
            return self._faults.get(_repo_in(request.path), self._faults.get(None))

    def _repo(self, repo_id: str) -> _Repo | None:
        with self._lock:
            return self._repos.get(repo_id)

    def _split_repo(self, rest: str) -> tuple[str, str]:
        """("ns/name", remainder) for a path that starts with a repo id (a served one first)."""
        with self._lock:
            known = sorted(self._repos, key=len, reverse=True)
        for repo_id in known:
            if rest == repo_id or rest.startswith(repo_id + "/"):
                return repo_id, rest[len(repo_id) :]
        parts = rest.split("/")
        repo_id = "/".join(parts[:2])
        return repo_id, rest[len(repo_id) :]


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "FakeHub/1.0"
    timeout = 30  # an idle kept-alive connection frees its thread
    server: Any

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        self._handle()

    def do_HEAD(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    # -- dispatch ---------------------------------------------------------------------------

    def _handle(self) -> None:
        hub: FakeHub = self.server.hub
        length = int(self.headers.get("Content-Length") or 0)
        self._body = self.rfile.read(length) if length else b""
        headers = {name.lower(): value for name, value in self.headers.items()}
        fault = hub._record(RecordedRequest(self.command, self.path, headers))
        self._cut: int | None = None
        if fault is not None:
            kind, value, retry_after = fault
            if kind == "garbage":
                return self._garbage()
            if kind == "fail":
                assert value is not None
                return self._fail(value, retry_after)
            self._cut = value
        target = urlsplit(self.path)
        query = parse_qs(target.query)
        if target.path.startswith("/api/models/"):
            return self._api(hub, target.path[len("/api/models/") :], query)
        if "/resolve/" in target.path:
            return self._resolve(hub, target.path[1:])
        if target.path == "/api/agent-harnesses":  # asked once per HF_HOME when telemetry is on
            return self._json({"standardEnvVars": [], "harnesses": {}})
        return self._error(404, None, "Not Found")

    def _api(self, hub: FakeHub, rest: str, query: dict[str, list[str]]) -> None:
        repo_id, rest = hub._split_repo(rest)
        repo = hub._repo(repo_id)
        if repo is None:
            return self._repo_not_found()
        parts = rest.split("/", 3)  # "", kind, revision, path in repo
        kind = parts[1] if len(parts) > 1 else ""
        if kind == "" and len(parts) <= 2 and self.command in ("GET", "HEAD"):
            return self._info(repo, "main", query)
        if len(parts) < 3 or not parts[2]:
            return self._error(404, None, "Not Found")
        revision = unquote(parts[2])
        if revision not in ("main", repo.sha):
            return self._revision_not_found(revision)
        if kind == "revision" and len(parts) == 3 and self.command in ("GET", "HEAD"):
            return self._info(repo, revision, query)
        if kind == "tree" and self.command in ("GET", "HEAD"):
            folder = unquote(parts[3]).strip("/") if len(parts) > 3 else ""
            return self._tree(repo, folder, _true(query, "recursive"))
        if kind == "paths-info" and len(parts) == 3 and self.command == "POST":
            form = parse_qs(self._body.decode())
            entries = [repo.entry(path.strip("/")) for path in form.get("paths", [])]
            return self._json([e for e in entries if e is not None], repo.sha)
        return self._error(404, None, "Not Found")

    def _info(self, repo: _Repo, revision: str, query: dict[str, list[str]]) -> None:
        metadata = _true(query, "blobs")
        info = {
            "_id": repo.sha[:24],
            "id": repo.repo_id,
            "modelId": repo.repo_id,
            "author": repo.repo_id.split("/")[0],
            "sha": repo.sha,
            "lastModified": _DATE,
            "createdAt": _DATE,
            "private": False,
            "disabled": False,
            "gated": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": [f.sibling(metadata) for f in repo.files.values()],
            "spaces": [],
            "usedStorage": sum(len(f.data) for f in repo.files.values()),
        }
        self._json(info, repo.sha)

    def _tree(self, repo: _Repo, folder: str, recursive: bool) -> None:
        if folder and folder not in repo.folders:
            return self._error(404, "EntryNotFound", f"{folder} does not exist on main", repo.sha)
        prefix = f"{folder}/" if folder else ""
        paths = [p for p in [*repo.folders, *repo.files] if p.startswith(prefix)]
        if not recursive:
            paths = [p for p in paths if "/" not in p[len(prefix) :]]
        folders = [repo.folder_entry(p) for p in sorted(paths) if p not in repo.files]
        files = [repo.files[p].tree_entry() for p in sorted(paths) if p in repo.files]
        self._json(folders + files, repo.sha)

    def _resolve(self, hub: FakeHub, rest: str) -> None:
        repo_id, rest = hub._split_repo(rest)
        repo = hub._repo(repo_id)
        match = re.fullmatch(r"/resolve/([^/]+)/(.+)", rest)
        if repo is None or match is None:
            return self._repo_not_found()
        revision, path = unquote(match[1]), unquote(match[2])
        if revision not in ("main", repo.sha):
            return self._revision_not_found(revision)
        file = repo.files.get(path)
        if file is None:
            return self._error(404, "EntryNotFound", "Entry not found", repo.sha)
        headers = {
            "X-Repo-Commit": repo.sha,
            "ETag": f'"{file.etag}"',
            "Accept-Ranges": "bytes",
            "Content-Type": "application/octet-stream",
        }
        if file.lfs:
            headers["X-Linked-Etag"] = f'"{file.sha256}"'
            headers["X-Linked-Size"] = str(len(file.data))
        size = len(file.data)
        start, end, status = 0, size, 200
        wanted = self.headers.get("Range") if self.command == "GET" else None
        if wanted:
            span = _parse_range(wanted, size)
            if span is None:
                headers["Content-Range"] = f"bytes */{size}"
                return self._send(416, headers, b"")
            start, end, status = *span, 206
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        self._send(status, headers, file.data[start:end], cut=self.command == "GET")

    # -- answers ----------------------------------------------------------------------------

    def _send(
        self, status: int, headers: dict[str, str], body: bytes, *, cut: bool = False
    ) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command == "HEAD":
            return
        if cut and self._cut is not None and self._cut < len(body):
            self.wfile.write(body[: self._cut])
            self.wfile.flush()
            self.close_connection = True  # the peer sees the stream end early
            return
        self.wfile.write(body)

    def _json(self, payload: Any, sha: str | None = None) -> None:
        headers = {"Content-Type": "application/json; charset=utf-8"}
        if sha is not None:
            headers["X-Repo-Commit"] = sha
        self._send(200, headers, json.dumps(payload).encode())

    def _error(
        self,
        status: int,
        code: str | None,
        message: str,
        sha: str | None = None,
        extra: dict[str, str] | None = None,
    ) -> None:
        headers = {"Content-Type": "application/json; charset=utf-8", **(extra or {})}
        if code is not None:
            headers["X-Error-Code"] = code
            headers["X-Error-Message"] = message
        if sha is not None:
            headers["X-Repo-Commit"] = sha
        self._send(status, headers, json.dumps({"error": message}).encode())

    def _repo_not_found(self) -> None:
        self._error(404, "RepoNotFound", "Repository not found")

    def _revision_not_found(self, revision: str) -> None:
        self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")

    def _fail(self, status: int, retry_after: int | None) -> None:
        if status == 404:
            return self._repo_not_found()
        if status == 401:
            repo_id = _repo_in(self.path)
            return self._error(
                401,
                "GatedRepo",
                f"Access to model {repo_id} is restricted. You must have access to it and be"
                " authenticated to access it. Please log in.",
            )
        extra = {}
        if status >= 500 and retry_after is not None:
            extra["Retry-After"] = str(retry_after)
        message = "Internal Error - We're working hard to fix this as soon as possible!"
        self._error(status, None, message if status >= 500 else "Error", extra=extra)

    def _garbage(self) -> None:
        noise = "".join(random.choices(string.ascii_letters + string.digits, k=64))
        self._send(200, {"Content-Type": "application/octet-stream"}, f"<{noise}".encode())


def _true(query: dict[str, list[str]], name: str) -> bool:
    return any(v.lower() in ("1", "true") for v in query.get(name, []))


def _parse_range(header: str, size: int) -> tuple[int, int] | None:
    """(start, end) with end exclusive, or None when unsatisfiable or malformed."""
    match = _RANGE.fullmatch(header)
    if match is None:
        return None
    first, last = match.groups()
    if not first:
        if not last or int(last) == 0:
            return None
        return max(size - int(last), 0), size
    start = int(first)
    end = min(int(last) + 1, size) if last else size
    if start >= size or start >= end:
        return None
    return start, end


def _repo_in(target: str) -> str:
    path = unquote(urlsplit(target).path)
    path = path.removeprefix("/api/models/")
    return "/".join(path.strip("/").split("/")[:2])
