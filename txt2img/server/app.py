"""`txt2img serve`: AUTOMATIC1111's HTTP API and txt2img's own draw route, on FastAPI
and uvicorn, in front of the one drawing thread (`worker.py`)."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import io
import logging
import signal
import socket
import threading
import time
import traceback
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from PIL import Image
from pydantic import BaseModel, ConfigDict, RootModel, ValidationError
from starlette.middleware.cors import CORSMiddleware

from ..errors import (
    OUT_OF_MEMORY_MESSAGE,
    ExitCode,
    Txt2ImgError,
    UsageError,
    debug_enabled,
    first_line,
    is_out_of_memory,
    say,
)
from ..options import EMPHASIS, RNG
from ..outputs.progress import Reporter
from ..pause import pause_at
from ..records.read import MAX_INFOTEXT_CHARS, _user_comment, header_text, parse_infotext
from ..records.write import text_chunks
from ..settings import DrawOptions
from . import a1111
from .a1111 import Refusal
from .catalog import Catalog, LoadedModels
from .config import ServeConfig
from .security import Door, a1111_error, own_names
from .wire import DRAW_ROUTE, HEARTBEAT_SECONDS, ClientGone, event, read_draw_request
from .worker import QueueFull, Stopping, Task, Worker

RETRY_AFTER_SECONDS = 5
STREAM_EVENTS = 32  # events a --server client may leave unread before the run waits


def log(config: ServeConfig, message: str) -> None:
    if not config.quiet:
        say(f"txt2img serve: {message}")


def png_bytes(image: Any, chunks: dict[str, str] | None = None) -> bytes:
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for key, value in (chunks or {}).items():
        info.add_text(key, value)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def error_fields(exc: BaseException) -> dict[str, Any]:
    """A failure as a --server client reports it: message, hint, local exit code."""
    if isinstance(exc, Txt2ImgError):
        return {"message": exc.message, "hint": exc.hint, "exit_code": int(exc.exit_code)}
    if is_out_of_memory(exc):
        return {"message": OUT_OF_MEMORY_MESSAGE, "hint": "", "exit_code": ExitCode.OUT_OF_MEMORY}
    return {"message": f"unexpected {type(exc).__name__} in the server: {first_line(exc)}",
            "hint": "see the server's log", "exit_code": int(ExitCode.INTERNAL)}  # fmt: skip


class CollectSink:
    """An A1111 request's images, as PNGs with their metadata, in memory."""

    def __init__(self) -> None:
        self.images: dict[int, tuple[bytes, dict[str, Any]]] = {}

    def wants_image(self, job: Any) -> bool:
        return True

    def image(self, job: Any, image: Any, record: dict[str, Any], seconds: float) -> str:
        self.images[job.index] = (png_bytes(image, text_chunks(record)), record)
        return f"image {job.index}"

    def strip(self, job: Any, sheet: Any, note: str) -> None:
        """A1111 requests draw no strips."""

    def skipped(self, job: Any) -> None:
        """A1111 requests skip nothing."""

    def failed(self, job: Any, message: str) -> None:
        """A1111 requests do not keep going."""


class StreamSink:
    """A --server client's images, sent as they are drawn; the client writes them."""

    def __init__(self, put: Any) -> None:
        self.put = put

    def wants_image(self, job: Any) -> bool:
        return True

    def image(self, job: Any, image: Any, record: dict[str, Any], seconds: float) -> str:
        png = base64.b64encode(png_bytes(image)).decode()
        self.put(event("image", index=job.index, record=record, seconds=seconds, png=png))
        return f"image {job.index}"

    def strip(self, job: Any, sheet: Any, note: str) -> None:
        png = base64.b64encode(png_bytes(sheet)).decode()
        self.put(event("strip", index=job.index, note=note, png=png))

    def skipped(self, job: Any) -> None:
        """The client knows which images it keeps."""

    def failed(self, job: Any, message: str) -> None:
        self.put(event("failed", index=job.index, error=message))


class StreamReporter(Reporter):
    """Progress for a --server client: its info lines and steps, as events."""

    def __init__(self, put: Any) -> None:
        super().__init__(quiet=True, total_images=0)
        self.put = put

    def info(self, message: str) -> None:
        self.put(event("info", message=message))

    def step_done(self, done: int, total: int) -> None:
        self.put(event("step", step=done, steps=total))

    def image_done(self, path: str, seconds: float) -> None:
        """The client counts the images it writes."""

    def failure(self, message: str) -> None:
        """Sent by StreamSink.failed, with the image's index."""


async def disconnected(request: Request) -> None:
    """Return once the client has closed its connection."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


class Service:
    """The server's state: models, the drawing thread, and A1111's options."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        reporter = Reporter(config.quiet, 0)
        self.catalog = Catalog(config)
        self.models = LoadedModels(config, self.catalog, reporter)
        self.worker = Worker(self.models, config, lambda message: log(config, message))
        self.defaults = {"clip_skip": 1, "emphasis": "original", "rng": "cpu", "ensd": 0}

    def log(self, message: str) -> None:
        log(self.config, message)

    def submit(self, task: Task) -> None:
        try:
            self.worker.submit(task)
        except QueueFull:
            raise Refusal(503, f"the server's queue is full ({self.config.queue_size} waiting)",
                          headers={"Retry-After": str(RETRY_AFTER_SECONDS)}) from None  # fmt: skip
        except Stopping:
            raise Refusal(503, "the server is shutting down") from None

    async def run(self, request: Request, task: Task) -> bool:
        """Queue `task` and wait for it; False if the client went away first (the task
        is then cancelled: dropped from the queue, or stopped at its next step)."""
        loop = asyncio.get_running_loop()
        finished = asyncio.Event()
        task.on_finish = lambda _: loop.call_soon_threadsafe(finished.set)
        self.submit(task)
        gone = asyncio.create_task(disconnected(request))
        waiting = asyncio.create_task(finished.wait())
        await asyncio.wait({gone, waiting}, return_when=asyncio.FIRST_COMPLETED)
        if not finished.is_set():
            self.worker.cancel(task, "cancelled")
            self.log(f"request {task.number} ({task.label}): the client went away; cancelled")
            waiting.cancel()
            return False
        gone.cancel()
        return True

    def outcome(self, task: Task, started: float) -> None:
        seconds = time.perf_counter() - started
        if task.error is not None:
            what = f"failed: {error_fields(task.error)['message']}"
            if debug_enabled():
                traceback.print_exception(task.error)
        elif task.stop:
            what = task.stop
        else:
            what = f"done in {seconds:.1f} s"
        self.log(f"request {task.number} ({task.label}): {what}")


def build_app(service: Service) -> Any:
    app = FastAPI(title="txt2img", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_exception_handler(Refusal, _refusal_response)
    app.add_exception_handler(RequestValidationError, _invalid_response)
    app.add_exception_handler(Exception, _unexpected_response)
    _a1111_routes(app, service)
    _own_routes(app, service)
    asgi: Any = app
    if service.config.cors_origins:
        asgi = CORSMiddleware(
            asgi, allow_origins=list(service.config.cors_origins), allow_methods=["*"],
            allow_headers=["*"], allow_credentials=True,
        )  # fmt: skip
    asgi = Door(asgi, own_names(service.config.host), service.config.credentials,
                service.config.cors_origins)  # fmt: skip
    return RequestLog(asgi, service)


class _OptionsRequest(RootModel[dict[str, Any]]):
    pass


class _PngInfoRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    image: Any = None


async def parsed(request: Request, model: type[BaseModel]) -> Any:
    """A request's JSON body read into `model` off the event loop (a 64 MiB body takes
    seconds to parse), with FastAPI's 422 answer when it does not fit."""
    raw = await request.body()

    def read() -> Any:
        pause_at(f"parse:{request.url.path}")
        try:
            return model.model_validate_json(raw or b"{}")
        except ValidationError as exc:
            errors = [{**error, "loc": ("body", *error["loc"])} for error in exc.errors()]
            raise RequestValidationError(errors) from None

    return await asyncio.to_thread(read)


async def _refusal_response(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, Refusal)
    return a1111_error(exc.status, exc.detail, exc.error, exc.headers)


async def _invalid_response(request: Request, exc: Exception) -> JSONResponse:
    """A body FastAPI could not read into the request's fields: FastAPI's own answer, as
    A1111's API gives it, without the values it would echo (a NaN is no JSON)."""
    assert isinstance(exc, RequestValidationError)
    keep = ("type", "loc", "msg")
    errors = [{key: error[key] for key in keep if key in error} for error in exc.errors()]
    return JSONResponse({"detail": errors}, status_code=422)


async def _unexpected_response(request: Request, exc: Exception) -> JSONResponse:
    traceback.print_exception(exc)
    return a1111_error(500, first_line(exc), type(exc).__name__)


def _a1111_routes(app: FastAPI, service: Service) -> None:
    catalog, models, worker = service.catalog, service.models, service.worker

    @app.post("/sdapi/v1/txt2img")
    async def txt2img(request: Request) -> Any:
        body = await parsed(request, a1111.Txt2ImgRequest)
        started = time.perf_counter()
        # Checked off the event loop: a prompt's checking is linear, but not free.
        plan = await asyncio.to_thread(
            a1111.plan_request, body, service.defaults, service.config.max_pixels
        )
        entry = await asyncio.to_thread(catalog.find, plan.model) if plan.model else None
        if plan.model and entry is None:
            service.log(f"sd_model_checkpoint {plan.model!r} is not a model the server lists; "
                        "drawing with the current one (as A1111 does)")  # fmt: skip
        if plan.ignored:
            service.log(f"override_settings {', '.join(plan.ignored)} do not act here; ignored")
        sink = CollectSink()
        task = Task(
            "txt2img", entry, plan.jobs, DrawOptions(batch_size=plan.batch_size), sink,
            mergeable=True, keeps_partial=True,
        )  # fmt: skip
        if not await service.run(request, task):
            return None
        service.outcome(task, started)
        if task.error is not None:
            status = 400 if isinstance(task.error, Txt2ImgError) else 500
            raise Refusal(status, error_fields(task.error)["message"], type(task.error).__name__)
        if task.stop == "stopping":
            raise Refusal(503, "the server is shutting down")
        drawn = [sink.images[index] for index in sorted(sink.images)]
        return {
            "images": [base64.b64encode(png).decode() for png, _ in drawn]
            if body.value("send_images")
            else [],
            "parameters": a1111.parameters(body, await request.json()),
            "info": a1111.info(plan, [record for _, record in drawn]),
        }

    @app.post("/sdapi/v1/img2img")
    async def img2img() -> Any:
        raise Refusal(501, "txt2img serve draws from text only; img2img is not supported")

    @app.get("/sdapi/v1/progress")
    async def progress(skip_current_image: bool = False) -> Any:
        done, left, state = worker.progress.fraction()
        count = worker.job_count
        return {
            "progress": done if count else 0.0, "eta_relative": left if count else 0.0,
            "state": {"skipped": worker.skipped, "interrupted": worker.interrupted,
                      "stopping_generation": False, "job": "txt2img" if count else "",
                      "job_count": count, "job_no": 0, **state},
            "current_image": None, "textinfo": None,
        }  # fmt: skip

    @app.post("/sdapi/v1/interrupt")
    async def interrupt() -> Any:
        worker.interrupt()
        return {}

    @app.post("/sdapi/v1/skip")
    async def skip() -> Any:
        worker.skip()
        return {}

    @app.get("/sdapi/v1/options")
    async def get_options() -> Any:
        current = models.current
        return {
            "sd_model_checkpoint": current.title, "sd_checkpoint_hash": current.sha256(),
            "samples_format": "png", "CLIP_stop_at_last_layers": service.defaults["clip_skip"],
            "emphasis": EMPHASIS[service.defaults["emphasis"]], "sd_vae": "Automatic",
            "randn_source": RNG[service.defaults["rng"]],
            "eta_noise_seed_delta": service.defaults["ensd"],
        }  # fmt: skip

    @app.post("/sdapi/v1/options")
    async def set_options(request: Request) -> Any:
        body = (await parsed(request, _OptionsRequest)).root
        started = time.perf_counter()
        values, _ = a1111.settings_overrides(body, service.defaults)
        if values["model"] is not None:
            entry = await asyncio.to_thread(catalog.find, values["model"])
            if entry is None:
                raise Refusal(404, f"model {values['model']!r} not found")
            task = Task(f"load {entry.name}", entry, None)
            if await service.run(request, task):
                service.outcome(task, started)
                if task.error is not None:
                    raise Refusal(500, error_fields(task.error)["message"],
                                  type(task.error).__name__)  # fmt: skip
        service.defaults = {key: values[key] for key in ("clip_skip", "emphasis", "rng", "ensd")}
        return None

    @app.get("/sdapi/v1/sd-models")
    async def sd_models() -> Any:
        return [entry.item() for entry in catalog.entries]

    @app.post("/sdapi/v1/refresh-checkpoints")
    async def refresh_checkpoints() -> Any:
        await asyncio.to_thread(catalog.refresh)

    @app.get("/sdapi/v1/samplers")
    async def samplers() -> Any:
        return a1111.samplers()

    @app.get("/sdapi/v1/schedulers")
    async def schedulers() -> Any:
        return a1111.schedule_types()

    @app.get("/sdapi/v1/loras")
    async def loras() -> Any:
        return [_addon_item(name, path, service.config.lora_dirs)
                for name, path in sorted(models.lora_index.items())]  # fmt: skip

    @app.post("/sdapi/v1/refresh-loras")
    async def refresh_loras() -> Any:
        await asyncio.to_thread(models.refresh_addons)

    @app.get("/sdapi/v1/embeddings")
    async def embeddings() -> Any:
        return {"loaded": {name: {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None,
                                  "shape": None, "vectors": None}
                           for name in sorted(models.embedding_index)},
                "skipped": {}}  # fmt: skip

    @app.post("/sdapi/v1/refresh-embeddings")
    async def refresh_embeddings() -> Any:
        await asyncio.to_thread(models.refresh_addons)

    @app.get("/sdapi/v1/sd-vae")
    async def sd_vae() -> Any:
        return []

    @app.get("/sdapi/v1/upscalers")
    async def upscalers() -> Any:
        return [{"name": "None", "model_name": None, "model_path": None, "model_url": None,
                 "scale": 1}]  # fmt: skip

    @app.get("/sdapi/v1/latent-upscale-modes")
    async def latent_upscale_modes() -> Any:
        return []

    @app.get("/sdapi/v1/scripts")
    async def scripts() -> Any:
        return {"txt2img": [], "img2img": []}

    @app.post("/sdapi/v1/png-info")
    async def png_info(request: Request) -> Any:
        body = (await parsed(request, _PngInfoRequest)).model_dump()
        # Decoding and parsing a client's image is work: never on the event loop.
        return await asyncio.to_thread(read_png_info, body.get("image"))


def _addon_item(name: str, path: Any, folders: Any) -> dict[str, Any]:
    """A1111's /loras entry; the path is told relative to its folder, never whole."""
    relative = next(
        (str(path.relative_to(folder)) for folder in folders if path.is_relative_to(folder)),
        path.name,
    )
    return {"name": name, "alias": name, "path": relative, "metadata": {}}


def read_png_info(image: Any) -> dict[str, Any]:
    """A1111's png-info: the infotext, the other text items, and the infotext parsed."""
    if not isinstance(image, str):
        raise Refusal(400, "image must be a base64 string")
    if not image.strip():
        return {"info": "", "items": {}, "parameters": {}}
    data = image.partition(",")[2] if image.startswith("data:") else image
    try:
        raw = base64.b64decode(data, validate=True)
        with Image.open(io.BytesIO(raw)) as picture:
            info, comment = header_text(picture)
    except (binascii.Error, ValueError, OSError, Image.DecompressionBombError):
        raise Refusal(400, "image is not a base64-encoded image txt2img can read") from None
    text = info.get("parameters") if isinstance(info.get("parameters"), str) else None
    text = text or _user_comment(comment) or ""
    items = {k: v for k, v in info.items() if isinstance(v, str) and k != "parameters"}
    characters = sum(len(key) + len(value) for key, value in items.items())
    if characters > MAX_INFOTEXT_CHARS:  # 63 zTXt chunks of 1 MB each fit in 65 KB
        raise Refusal(400, f"the image's text chunks hold {characters} characters, more than "
                           f"txt2img reads ({MAX_INFOTEXT_CHARS})")  # fmt: skip
    try:
        parameters = parse_infotext(text) if text else {}
    except UsageError as exc:
        raise Refusal(400, exc.message) from None
    return {"info": text, "items": items, "parameters": parameters}


def _own_routes(app: FastAPI, service: Service) -> None:
    @app.post(DRAW_ROUTE)
    async def draw(request: Request) -> Any:
        started = time.perf_counter()
        raw = await request.body()
        gone = threading.Event()

        def client_gone(watch: asyncio.Task) -> None:
            if not watch.cancelled():
                service.log("a draw request's client went away while it was checked")
                gone.set()

        def read() -> dict[str, Any]:  # off the event loop, and no longer once the client goes
            pause_at(f"parse:{DRAW_ROUTE}")
            return read_draw_request(raw, service.config.max_pixels, gone.is_set)

        watch = asyncio.create_task(disconnected(request))
        watch.add_done_callback(client_gone)
        try:
            spec = await asyncio.to_thread(read)
        except UsageError as exc:
            return JSONResponse({**error_fields(exc), "detail": exc.message}, status_code=400)
        except ClientGone:
            service.log("the draw request of a client that went away: dropped")
            return Response(status_code=400)
        finally:
            watch.cancel()
        entry = await asyncio.to_thread(service.catalog.find_first, spec["models"])
        if spec["models"] and entry is None:
            message = f"the server has no model named {' or '.join(map(repr, spec['models']))}"
            return JSONResponse({"message": message, "detail": message, "exit_code": 3,
                                 "hint": "GET /sdapi/v1/sd-models lists them"},
                                status_code=404)  # fmt: skip
        return await _stream(service, request, spec, entry, started)


async def _stream(
    service: Service, request: Request, spec: dict[str, Any], entry: Any, started: float
) -> StreamingResponse:
    """The run's events, streamed as they come. Backpressure: at most STREAM_EVENTS wait
    for the client; then the drawing thread waits for room (the run pauses) up to
    --client-timeout, and after that the run is cancelled and the client dropped."""
    loop = asyncio.get_running_loop()
    events: asyncio.Queue = asyncio.Queue()
    room = threading.Semaphore(STREAM_EVENTS)
    dropped = asyncio.Event()

    def put(item: bytes | None) -> None:
        if item is not None:
            if task.stop:
                return  # the client gets nothing more
            if not room.acquire(timeout=service.config.client_timeout):
                service.worker.cancel(task, "cancelled")
                service.log(f"request {task.number} ({task.label}): the client read nothing "
                            f"for {service.config.client_timeout:g} s; cancelled")  # fmt: skip
                loop.call_soon_threadsafe(dropped.set)
                return
        loop.call_soon_threadsafe(events.put_nowait, item)

    def finished(task: Task) -> None:
        service.outcome(task, started)
        put(None)

    task = Task(
        f"{len(spec['jobs'])} images for txt2img --server", entry, spec["jobs"], spec["options"],
        StreamSink(put), StreamReporter(put), done=spec["done"], on_finish=finished,
        lora_hashes=spec["lora_hashes"],
    )  # fmt: skip
    service.submit(task)

    async def stream() -> Any:
        gone = asyncio.create_task(disconnected(request))
        get = asyncio.create_task(events.get())
        try:
            while True:
                ready, _ = await asyncio.wait(
                    {get, gone}, timeout=HEARTBEAT_SECONDS, return_when=asyncio.FIRST_COMPLETED
                )
                if gone in ready:
                    return
                if not ready:
                    yield event("wait")
                    continue
                item, get = get.result(), asyncio.create_task(events.get())
                if item is None:
                    yield _last_event(task)
                    return
                yield item  # returns once the client (or its socket) has taken it
                room.release()
        finally:
            get.cancel()
            gone.cancel()
            if not task.finished and not dropped.is_set():  # (dropped: cancelled already)
                service.worker.cancel(task, "cancelled")
                service.log(f"request {task.number} ({task.label}): the client went away; "
                            "cancelled")  # fmt: skip

    return DroppableStream(stream(), dropped, media_type="application/x-ndjson")


class DroppableStream(StreamingResponse):
    """A streamed response that ends, closing the connection, once `dropped` is set,
    even while the client leaves what was sent unread."""

    def __init__(self, content: Any, dropped: asyncio.Event, **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self.dropped = dropped

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        serving = asyncio.ensure_future(super().__call__(scope, receive, send))
        drop = asyncio.ensure_future(self.dropped.wait())
        try:
            await asyncio.wait({serving, drop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            drop.cancel()
            if not serving.done():
                serving.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await serving
                await self.body_iterator.aclose()  # its `finally` runs now, not at GC
        if not serving.cancelled():
            serving.result()


def _last_event(task: Task) -> bytes:
    if task.error is not None:
        return event("error", **error_fields(task.error))
    if task.stop:
        why = {"interrupted": "interrupted on the server (POST /sdapi/v1/interrupt)",
               "stopping": "the server is shutting down"}  # fmt: skip
        return event("error", message=why.get(task.stop, task.stop), hint="",
                     exit_code=int(ExitCode.SERVER))  # fmt: skip
    return event("done", failed=task.failed)


class RequestLog:
    """One line on stderr per request: client, method, path, status, time."""

    def __init__(self, app: Any, service: Service) -> None:
        self.app, self.service = app, service

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), [0]

        async def sending(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            client = scope.get("client") or ("-", 0)
            milliseconds = (time.perf_counter() - started) * 1000
            self.service.log(f"{client[0]} {scope['method']} {scope['path']} {status[0]} "
                             f"{milliseconds:.0f} ms")  # fmt: skip


class _Uvicorn(uvicorn.Server):
    """uvicorn, which on SIGINT or SIGTERM also stops the drawing thread's work, so the
    requests in flight end at once instead of holding the shutdown."""

    def __init__(self, config: uvicorn.Config, on_exit: Any) -> None:
        super().__init__(config)
        self.on_exit = on_exit

    def handle_exit(self, sig: int, frame: Any) -> None:
        if not self.should_exit:
            say(f"txt2img serve: {signal.Signals(sig).name}: finishing")
            try:
                asyncio.get_running_loop().call_soon_threadsafe(self.on_exit)
            except RuntimeError:
                self.on_exit()
        super().handle_exit(sig, frame)


def listening_socket(host: str, port: int) -> socket.socket:
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)  # the port is taken now; connections are taken by listen()
    except OSError as exc:
        raise UsageError(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}",
            "another program may use the port; choose another --port",
        ) from None
    return sock


def serve(config: ServeConfig) -> None:
    """Take the port (a port in use is said before minutes of loading), load the default
    model, and draw until SIGINT or SIGTERM."""
    sock = listening_socket(config.host, config.port)
    try:
        service = Service(config)
        service.worker.start()
        service.worker.load_default()
    except BaseException:
        sock.close()
        raise
    sock.listen(128)  # once the model is loaded: before, a client is refused at once
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    log(config, f"serving {service.models.current.name} on http://{shown}:{port} "
                f"(A1111 API at /sdapi/v1; Ctrl-C stops)")  # fmt: skip
    uv = uvicorn.Config(build_app(service), log_config=None, log_level="warning",
                        access_log=False, lifespan="off", ws="none")  # fmt: skip
    # A dropped --server client (DroppableStream) ends its response unfinished, on purpose.
    logging.getLogger("uvicorn.error").addFilter(
        lambda record: record.getMessage() != "ASGI callable returned without completing response."
    )
    for signum in (signal.SIGINT, signal.SIGTERM):
        # uvicorn handles these and, once it has stopped, raises them again for the
        # handler that was there before: that one has nothing left to do.
        signal.signal(signum, lambda *_: None)
    _Uvicorn(uv, on_exit=service.worker.stop).run(sockets=[sock])
    service.worker.stop()
    service.worker.thread.join(timeout=120)
    log(config, "stopped")
