"""`txt2img --server URL`: a run's images drawn by a running `txt2img serve`, written
here by the same code as a local run's (`outputs.files.FileSink`).

The standard library and txt2img's pure-Python modules only: a --server run never
imports torch. The protocol is in `wire.py`.
"""

from __future__ import annotations

import base64
import binascii
import http.client
import io
import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from PIL import Image

from ..errors import RemoteError, ServerError
from ..jobs import ImageJob
from ..outputs.files import FileSink
from ..outputs.progress import Reporter
from ..settings import Settings
from .wire import DRAW_ROUTE, SILENCE_SECONDS, job_json

SERVER_HINT = "start one with txt2img serve, or check --server / $TXT2IMG_SERVER"
MAX_EVENT_BYTES = 256 << 20  # an image event of the largest call --max-pixels allows fits


@dataclass(frozen=True)
class Server:
    """A --server URL, split into where to connect and the Basic credentials it holds."""

    base: str  # scheme://host:port/prefix, without credentials
    authorization: str | None

    @classmethod
    def parse(cls, url: str) -> Server:
        """`url` as the --server option has checked it."""
        parts = urllib.parse.urlsplit(url)
        netloc = parts.netloc.rpartition("@")[2]
        base = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))
        authorization = None
        if parts.username is not None:
            user = urllib.parse.unquote(parts.username)
            password = urllib.parse.unquote(parts.password or "")
            token = base64.b64encode(f"{user}:{password}".encode()).decode()
            authorization = f"Basic {token}"
        return cls(base, authorization)


def draw_remotely(
    settings: Settings, jobs: list[ImageJob], done: set[int], sink: FileSink, reporter: Reporter
) -> int:
    """Send the jobs not in `done` to the server, write each image it sends back as it
    arrives; return how many failed (only with --keep-going)."""
    assert settings.server is not None
    server = Server.parse(settings.server)
    names = settings.from_image.model_names
    body = {
        "model": list(names) if names else settings.model,
        "lora_hashes": settings.from_image.lora_hashes,
        "jobs": [job_json(job) for job in jobs], "done": sorted(done),
        "batch_size": settings.batch_size, "keep_going": settings.keep_going,
        "save_steps": settings.save_steps, "verbose": settings.verbose,
    }  # fmt: skip
    headers = {"Content-Type": "application/json", "Accept": "application/x-ndjson"}
    if server.authorization:
        headers["Authorization"] = server.authorization
    request = urllib.request.Request(
        server.base + DRAW_ROUTE, data=json.dumps(body).encode(), headers=headers, method="POST"
    )
    response = connect(request, server)
    reader = EventReader({job.index: job for job in jobs}, sink, reporter, done)
    reporter.start()
    try:
        with response:  # closed early (Ctrl-C, an error here) the server cancels the run
            return reader.read(response, server)
    finally:
        reporter.stop()


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is answered as the error it is: followed, it would carry the URL's
    credentials (the Authorization header) to wherever it points."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirects)


def connect(request: urllib.request.Request, server: Server) -> Any:
    try:
        return _OPENER.open(request, timeout=SILENCE_SECONDS)
    except urllib.error.HTTPError as exc:
        raise refusal(exc, server) from None
    except http.client.HTTPException as exc:
        message = f"the server at {server.base} does not speak HTTP: {type(exc).__name__}"
        raise ServerError(message, SERVER_HINT) from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        reason = getattr(reason, "strerror", None) or reason
        message = f"cannot reach the server at {server.base}: {reason}"
        raise ServerError(message, SERVER_HINT) from None


def refusal(exc: urllib.error.HTTPError, server: Server) -> Exception:
    """The server's answer to a request it refused, as the error a local run gives."""
    if 300 <= exc.code < 400:
        return ServerError(
            f"the server at {server.base} redirects (HTTP {exc.code}) to "
            f"{exc.headers.get('Location', 'elsewhere')!r}; txt2img follows no redirects",
            "give the URL it redirects to as --server, if you trust it",
        )
    if exc.code == 401:
        return ServerError(
            f"the server at {server.base} wants a user name and password",
            "put them in the URL: --server http://USER:PASS@HOST:PORT",
        )
    try:
        answer = json.loads(exc.read(1 << 20))
    except (ValueError, OSError):
        answer = {}
    if not isinstance(answer, dict):
        answer = {}
    if isinstance(answer.get("exit_code"), int) and isinstance(answer.get("message"), str):
        return RemoteError(answer["message"], str(answer.get("hint") or ""), answer["exit_code"])
    detail = answer.get("detail") if isinstance(answer.get("detail"), str) else exc.reason
    hints = {404: "is it txt2img serve? (it has no txt2img route)",
             503: "the server is busy or stopping; try again later"}  # fmt: skip
    hint = hints.get(exc.code, "see the server's log")
    return ServerError(f"the server at {server.base} answered {exc.code}: {detail}", hint)


class EventReader:
    """The server's stream of events, acted on one line at a time."""

    def __init__(
        self, jobs: dict[int, ImageJob], sink: FileSink, reporter: Reporter, done: set[int]
    ) -> None:
        self.jobs, self.sink, self.reporter = jobs, sink, reporter
        self.owed = set(jobs) - done  # each gets an image or a failure before `done`

    def read(self, response: Any, server: Server) -> int:
        try:
            while line := response.readline(MAX_EVENT_BYTES + 1):
                if len(line) > MAX_EVENT_BYTES:
                    raise ServerError(
                        f"the server sent an event of more than {MAX_EVENT_BYTES:,} bytes",
                        "is the URL a txt2img serve of the same version?",
                    )
                result = self.act(self.decode(line))
                if result is not None:
                    return result
        except TimeoutError:
            raise ServerError(
                f"the server at {server.base} said nothing for {SILENCE_SECONDS:.0f} s",
                "see the server's log",
            ) from None
        except (ConnectionError, OSError, http.client.HTTPException) as exc:
            raise ServerError(f"the connection to the server broke: {exc}", SERVER_HINT) from None
        raise ServerError("the server closed the connection before the run ended",
                          "see the server's log")  # fmt: skip

    @staticmethod
    def decode(line: bytes) -> dict[str, Any]:
        try:
            item = json.loads(line)
        except ValueError:
            item = None
        if not isinstance(item, dict) or not isinstance(item.get("event"), str):
            raise ServerError("the server sent something that is not txt2img's protocol",
                              "is the URL a txt2img serve of the same version?")  # fmt: skip
        return item

    def act(self, item: dict[str, Any]) -> int | None:
        """Act on one event; the run's count of failed images once it is over."""
        kind = item["event"]
        try:
            if kind == "info":
                self.reporter.info(str(item["message"]))
            elif kind == "step":
                if item["step"] == 1:
                    self.reporter.image_started()
                self.reporter.step_done(int(item["step"]), int(item["steps"]))
            elif kind == "image":
                self.image(self.jobs[item["index"]], item)
            elif kind == "strip":
                self.sink.strip(self.jobs[item["index"]], png(item["png"]), str(item["note"]))
            elif kind == "failed":
                job = self.jobs[item["index"]]
                self.reporter.failure(f"image {job.index} (line {job.line}, seed {job['seed']}): "
                                      f"{item['error']}")  # fmt: skip
                self.sink.failed(job, str(item["error"]))
                self.owed.discard(job.index)
            elif kind == "error":
                raise RemoteError(str(item["message"]), str(item.get("hint") or ""),
                                  item.get("exit_code"))  # fmt: skip
            elif kind == "done":
                return self.done(int(item["failed"]))
        except (KeyError, TypeError, ValueError):
            message = f"the server sent a {kind!r} event txt2img cannot read"
            raise ServerError(message, "is the URL a txt2img serve of the same version?") from None
        return None

    def done(self, failed: int) -> int:
        if self.owed:
            raise ServerError(
                f"the server ended the run with {len(self.owed)} images neither drawn nor "
                "failed", "see the server's log",
            )  # fmt: skip
        return failed

    def image(self, job: ImageJob, item: dict[str, Any]) -> None:
        self.owed.discard(job.index)
        if not self.sink.wants_image(job):  # --resume: kept; only its strip was missing
            self.sink.skipped(job)
            return
        seconds = float(item["seconds"])
        size = (job["width"] or item["record"]["width"], job["height"] or item["record"]["height"])
        where = self.sink.image(job, png(item["png"], size), item["record"], seconds)
        self.reporter.image_done(where, seconds)


def png(text: str, size: tuple[int, int] | None = None) -> Image.Image:
    """A PNG the server sent; with `size`, only one of that size is decoded."""
    try:
        image = Image.open(io.BytesIO(base64.b64decode(text, validate=True)))
        if image.format != "PNG":
            raise OSError("not a PNG")
        if size is not None and image.size != size:
            raise ServerError(
                f"the server sent a {image.size[0]}x{image.size[1]} image for a "
                f"{size[0]}x{size[1]} one", "see the server's log",
            )  # fmt: skip
        image.load()
    except (binascii.Error, OSError, Image.DecompressionBombError):
        raise ServerError("the server sent an image that is not a PNG",
                          "see the server's log") from None  # fmt: skip
    return image
