"""What `txt2img --server` and `txt2img serve` say to each other on txt2img's own route.

The client sends its planned jobs as JSON; the server answers with a stream of JSON
lines, one event each: `info`, `step`, `image` (the PNG's pixels and its record),
`strip`, `failed`, `error`, `wait` (a heartbeat while queued or loading) and `done`.
Pure Python, so the client never imports torch or the server's stack.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from ..errors import UsageError
from ..jobs import ImageJob, batches
from ..options import BY_KEY, MAX_IMAGES, RECORDED_OPTIONS, check_range, from_json
from ..prompt.syntax import check_prompts
from ..settings import DrawOptions

DRAW_ROUTE = "/txt2img/v1/draw"
HEARTBEAT_SECONDS = 5.0  # the server sends `wait` when it has said nothing for this long
SILENCE_SECONDS = 60.0  # the client gives up on a server silent this long
_VALUE_KEYS = tuple(option.key for option in RECORDED_OPTIONS)
MAX_LORA_HASHES = 100
# All of one request's prompt text (prompts and negative prompts): checking it is linear,
# and this keeps one request's checking to seconds, not minutes, of one core.
MAX_REQUEST_PROMPT_CHARS = 4 << 20


class ClientGone(Exception):
    """The client closed its connection while its request was being checked."""


HASH = re.compile(r"[0-9a-fA-F]{8,64}")


def event(kind: str, **fields: Any) -> bytes:
    return (json.dumps({"event": kind, **fields}, ensure_ascii=False) + "\n").encode()


def job_json(job: ImageJob) -> dict[str, Any]:
    return {"index": job.index, "line": job.line, "prompt": job.prompt, "values": job.values}


def read_draw_request(
    raw: bytes, max_pixels: int, client_gone: Callable[[], bool] = lambda: False
) -> dict[str, Any]:
    """The checked contents of a draw request's JSON body: `models` (names the server
    may list, the first it lists is drawn with; none: its current model), `lora_hashes` (a
    prompt tag's file found by its hash when no file has its name), `jobs`, `done`, and
    `options` (from `batch_size`, `keep_going`, `save_steps`, `verbose`). Every value is
    checked as the command line checks it, and pipeline calls of more than `max_pixels`
    are refused; a `UsageError` names the first bad one. Checking stops (`ClientGone`)
    once `client_gone()`."""
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        raise UsageError("the body is not JSON") from None
    if not isinstance(body, dict):
        raise UsageError("the request is not a JSON object")
    jobs = body.get("jobs")
    if not isinstance(jobs, list) or not 0 < len(jobs) <= MAX_IMAGES:
        raise UsageError(f"jobs must be a list of 1 to {MAX_IMAGES} images")
    models = body.get("model")
    models = [models] if isinstance(models, str) else [] if models is None else models
    if not isinstance(models, list) or len(models) > 4 or not all(_is_name(m) for m in models):
        raise UsageError("model must be a model's name, or a list of up to 4 names")
    lora_hashes = body.get("lora_hashes", {})
    if (
        not isinstance(lora_hashes, dict)
        or len(lora_hashes) > MAX_LORA_HASHES
        or not all(
            _is_name(name) and isinstance(digest, str) and HASH.fullmatch(digest)
            for name, digest in lora_hashes.items()
        )
    ):
        raise UsageError("lora_hashes must map LoRA names to hex hashes")
    done = body.get("done", [])
    if not isinstance(done, list) or len(done) > MAX_IMAGES or not all(map(_is_int, done)):
        raise UsageError(f"done must be a list of at most {MAX_IMAGES} image indices")
    options = {key: body.get(key, BY_KEY[key].default)
               for key in ("batch_size", "keep_going", "save_steps", "verbose")}  # fmt: skip
    for key, kind in (("batch_size", int), ("save_steps", int), ("keep_going", bool),
                      ("verbose", bool)):  # fmt: skip
        if options[key] is not None or key != "save_steps":
            options[key] = _of_kind(options[key], kind, key)
        BY_KEY[key].validate(options[key])
    check_range("batch_size", options["batch_size"], 1, MAX_IMAGES)
    characters = _prompt_chars(jobs)
    if characters > MAX_REQUEST_PROMPT_CHARS:
        raise UsageError(
            f"the jobs' prompts hold {characters} characters, more than the "
            f"{MAX_REQUEST_PROMPT_CHARS} one request may",
            "split the prompts into smaller runs",
        )
    checked = []
    for item in jobs:
        if client_gone():
            raise ClientGone
        checked.append(_job(item))
    if len({job.index for job in checked}) != len(checked):
        raise UsageError("two jobs have the same index")
    for batch in batches(checked, options["batch_size"]):
        check_pixels(batch, max_pixels)
    return {"models": models, "lora_hashes": lora_hashes, "jobs": checked, "done": set(done),
            "options": DrawOptions(**options)}  # fmt: skip


def check_pixels(batch: list[ImageJob], max_pixels: int) -> None:
    """A pipeline call of width x height x images over `max_pixels` is refused (a size
    left to the model's default is checked once the model is known)."""
    width, height = batch[0]["width"], batch[0]["height"]
    if width is None or height is None or width * height * len(batch) <= max_pixels:
        return
    raise UsageError(
        f"a pipeline call of {len(batch)} images of {width}x{height} is "
        f"{width * height * len(batch)} pixels, more than the server's --max-pixels {max_pixels}",
        "draw smaller images or a smaller --batch-size",
    )


def _prompt_chars(jobs: list[Any]) -> int:
    """The characters of every job's prompt and negative prompt (whatever else is wrong
    with a job is found when it is checked)."""
    total = 0
    for item in jobs:
        values = item.get("values") if isinstance(item, dict) else None
        for text in (
            item.get("prompt") if isinstance(item, dict) else None,
            values.get("negative_prompt") if isinstance(values, dict) else None,
        ):
            total += len(text) if isinstance(text, str) else 0
    return total


def _is_name(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= 1000


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _job(item: Any) -> ImageJob:
    if not isinstance(item, dict) or set(item) != {"index", "line", "prompt", "values"}:
        raise UsageError("each job must have index, line, prompt and values")
    values = item["values"]
    if not isinstance(values, dict) or tuple(values) != _VALUE_KEYS:
        raise UsageError(f"a job's values must be {', '.join(_VALUE_KEYS)}, in that order")
    if not (_is_int(item["index"]) and _is_int(item["line"]) and isinstance(item["prompt"], str)):
        raise UsageError("a job's index and line must be integers and its prompt text")
    values = dict(values)
    for key, value in values.items():
        option = BY_KEY[key]
        if value is None and option.default is not None:
            raise UsageError(f"{option.flag} must be given, got null")
        if value is not None:
            values[key] = _of_kind(value, option.kind, option.flag)
        option.validate(values[key])
    if values["seed"] is None:
        raise UsageError("every job needs its seed")
    BY_KEY["negative_prompt"].validate(item["prompt"])
    check_prompts(item["prompt"], values["negative_prompt"], values["emphasis"])
    return ImageJob(item["index"], item["line"], item["prompt"], values)


def _of_kind(value: Any, kind: type, name: str) -> Any:
    try:
        return from_json(value, kind)
    except TypeError:
        raise UsageError(f"{name} must be {kind.__name__}, got {value!r}") from None
