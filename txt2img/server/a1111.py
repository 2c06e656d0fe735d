"""AUTOMATIC1111's API as its clients use it: the txt2img request and its defaults, the
sampler and schedule names, and the `info` a response carries.

A request becomes txt2img's own image jobs here, checked by the same rules as the
command line; what txt2img cannot draw as asked is refused, never ignored.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict

from .. import __version__
from ..errors import UsageError
from ..jobs import ImageJob, seeds_of
from ..model.schedulers import (
    SAMPLERS,
    SCHEDULE_TYPES,
    SCHEDULERS,
    find_sampler,
    scheduler_for,
    split_sampler,
)
from ..options import BY_KEY, EMPHASIS, MAX_CLIP_SKIP, MAX_SEED, RNG_BY_NAME, check_text
from ..prompt.syntax import check_prompts
from ..records.write import infotext
from ..settings import random_seed
from .wire import check_pixels

MAX_BATCH_SIZE = 16
MAX_ITERATIONS = 100


class Refusal(Exception):
    """A request refused before any work, answered in A1111's error shape."""

    def __init__(
        self, status: int, detail: str, error: str = "HTTPException", headers: dict | None = None
    ) -> None:
        super().__init__(detail)
        self.status, self.detail, self.error, self.headers = status, detail, error, headers


# override_settings keys that act on a request; A1111's others are ignored.
OVERRIDES = (
    "sd_model_checkpoint",
    "CLIP_stop_at_last_layers",
    "emphasis",
    "randn_source",
    "eta_noise_seed_delta",
)
EMPHASIS_BY_NAME = {name: key for key, name in EMPHASIS.items()}


def samplers() -> list[dict[str, Any]]:
    return [{"name": s.name, "aliases": list(s.aliases), "options": {}} for s in SAMPLERS]


def schedule_types() -> list[dict[str, Any]]:
    return [
        {"name": name, "label": label, "aliases": None, "default_rho": -1,
         "need_inner_model": False}
        for name, label, _ in SCHEDULE_TYPES
    ]  # fmt: skip


def request_scheduler(request: Txt2ImgRequest) -> str:
    """txt2img's scheduler for the request's sampler and schedule type."""
    sampler = request.sampler_name or request.value("sampler_index")
    try:
        return scheduler_for(sampler, request.scheduler, "the request")
    except UsageError as exc:
        known = find_sampler(split_sampler(sampler, request.scheduler)[0]) is not None
        raise Refusal(400, exc.message if known else f"Sampler not found: {exc.message}") from None


class Txt2ImgRequest(BaseModel):
    """A1111's txt2img fields that txt2img reads or refuses; unknown keys are ignored,
    as A1111 ignores them, and null takes the default."""

    model_config = ConfigDict(extra="ignore")

    prompt: str | None = ""
    negative_prompt: str | None = ""
    styles: list[str] | None = None
    seed: int | None = -1
    subseed: int | None = -1
    subseed_strength: float | None = 0
    seed_resize_from_w: int | None = -1
    seed_resize_from_h: int | None = -1
    sampler_name: str | None = None
    sampler_index: str | None = "Euler"
    scheduler: str | None = None
    batch_size: int | None = 1
    n_iter: int | None = 1
    steps: int | None = 50
    cfg_scale: float | None = 7.0
    width: int | None = 512
    height: int | None = 512
    restore_faces: bool | None = None
    tiling: bool | None = None
    enable_hr: bool | None = False
    script_name: str | None = None
    alwayson_scripts: dict[str, Any] | None = None
    override_settings: dict[str, Any] | None = None
    override_settings_restore_afterwards: bool | None = True
    send_images: bool | None = True
    save_images: bool | None = False

    def value(self, key: str) -> Any:
        """The field's value, its default where the request gave null."""
        value = getattr(self, key)
        return type(self).model_fields[key].default if value is None else value


@dataclass
class Plan:
    """What a request asks for, in txt2img's terms."""

    jobs: list[ImageJob]
    batch_size: int
    model: str | None  # an override_settings sd_model_checkpoint, as given
    ignored: list[str]  # override_settings keys that do not act
    timestamp: str


def plan_request(request: Txt2ImgRequest, defaults: dict[str, Any], max_pixels: int) -> Plan:
    """The jobs of a request: batch_size x n_iter images, seeds seed, seed + 1, ...
    `defaults`: the server's clip_skip and emphasis (POST /options)."""
    refuse_unsupported(request)
    prompt, negative = request.value("prompt"), request.value("negative_prompt")
    for field, text in (("prompt", prompt), ("negative_prompt", negative)):
        checked(lambda flag, text=text: check_text(flag, text), field)
    overrides, ignored = settings_overrides(request.override_settings or {}, defaults)
    values = {
        "negative_prompt": negative,
        "seed": 0,  # each job's own below
        "steps": request.value("steps"),
        "guidance": request.value("cfg_scale"),
        "width": request.value("width"),
        "height": request.value("height"),
        "scheduler": request_scheduler(request),
        "clip_skip": overrides["clip_skip"],
        "emphasis": overrides["emphasis"],
        "rng": overrides["rng"],
        "variation_seed": 0,  # each job's own below
        "variation_strength": request.value("subseed_strength"),
        "ensd": overrides["ensd"],
    }
    fields = {"steps": "steps", "guidance": "cfg_scale", "width": "width", "height": "height",
              "variation_strength": "subseed_strength"}  # fmt: skip
    for key, field in fields.items():
        checked(lambda flag, key=key: BY_KEY[key].validate(values[key]), field, BY_KEY[key].flag)
    checked(lambda flag: check_prompts(prompt, negative, values["emphasis"]), "prompt")
    batch_size, iterations = request.value("batch_size"), request.value("n_iter")
    check_count("batch_size", batch_size, MAX_BATCH_SIZE)
    check_count("n_iter", iterations, MAX_ITERATIONS)
    count = batch_size * iterations
    for key, field in (("seed", "seed"), ("variation_seed", "subseed")):
        values[key] = request.value(field) if request.value(field) >= 0 else random_seed()
        if values[key] > MAX_SEED - (count - 1):
            raise Refusal(400, f"{field} must be at most {MAX_SEED - (count - 1)}")
    if not values["variation_strength"]:
        values["variation_seed"] = None  # unused: not recorded
    jobs = [ImageJob(k, 0, prompt, seeds_of(values, k)) for k in range(count)]
    checked(lambda flag: check_pixels(jobs[:batch_size], max_pixels), "width")
    return Plan(jobs, batch_size, overrides["model"], ignored, time.strftime("%Y%m%d%H%M%S"))


def checked(check: Any, field: str, flag: str | None = None) -> None:
    """Run a command-line check on a request field; its message names the field."""
    try:
        check(field)
    except UsageError as exc:
        message = exc.message.replace(flag, field) if flag else exc.message
        raise Refusal(400, message) from None


def check_count(field: str, value: int, high: int) -> None:
    if not 1 <= value <= high:
        raise Refusal(400, f"{field} must be between 1 and {high}, got {value}")


def refuse_unsupported(request: Txt2ImgRequest) -> None:
    """What A1111 would draw and txt2img cannot: refused, so a client never gets
    another picture than it asked for."""
    unsupported = {
        "enable_hr (hires fix)": request.value("enable_hr"),
        "restore_faces": request.value("restore_faces"),
        "tiling": request.value("tiling"),
        "seed_resize_from_w/h": max(
            request.value("seed_resize_from_w") or 0, request.value("seed_resize_from_h") or 0
        )
        > 0,
        "script_name (scripts)": bool(request.script_name),
        "alwayson_scripts (extensions)": any(
            isinstance(script, dict) and script.get("args")
            for script in (request.alwayson_scripts or {}).values()
        ),
        "styles": bool(request.styles),
    }
    for name, used in unsupported.items():
        if used:
            raise Refusal(400, f"{name} is not supported by txt2img serve")


def settings_overrides(
    overrides: dict[str, Any], defaults: dict[str, Any]
) -> tuple[dict[str, Any], list[str]]:
    """The whitelisted override_settings (the model, Clip skip, emphasis), over the
    server's defaults; and the keys that do not act."""
    values = {**defaults, "model": None}
    if overrides.get("sd_model_checkpoint") is not None:
        values["model"] = str(overrides["sd_model_checkpoint"])
    if "CLIP_stop_at_last_layers" in overrides:
        values["clip_skip"] = clip_skip_option(overrides["CLIP_stop_at_last_layers"])
    if "emphasis" in overrides:
        values["emphasis"] = emphasis_option(overrides["emphasis"])
    if "randn_source" in overrides:
        values["rng"] = rng_option(overrides["randn_source"])
    if "eta_noise_seed_delta" in overrides:
        values["ensd"] = whole_option("eta_noise_seed_delta", overrides["eta_noise_seed_delta"])
    return values, [key for key in overrides if key not in OVERRIDES]


def rng_option(value: Any) -> str:
    """A1111's randn_source: GPU (an NVIDIA GPU's noise, as txt2img computes it) and NV
    are `nv`, CPU is `cpu`."""
    if not isinstance(value, str) or value not in RNG_BY_NAME:
        raise Refusal(400, f"randn_source must be one of {', '.join(RNG_BY_NAME)}")
    return RNG_BY_NAME[value]


def clip_skip_option(value: Any) -> int:
    value = whole_option("CLIP_stop_at_last_layers", value)
    if not 1 <= value <= MAX_CLIP_SKIP:
        raise Refusal(400, f"CLIP_stop_at_last_layers must be between 1 and {MAX_CLIP_SKIP}")
    return value


def whole_option(name: str, value: Any) -> int:
    whole = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    if isinstance(value, bool) or not whole or not 0 <= value <= MAX_SEED:
        raise Refusal(400, f"{name} must be a whole number from 0, got {value!r}")
    return int(value)


def emphasis_option(value: Any) -> str:
    if not isinstance(value, str) or value not in EMPHASIS_BY_NAME:
        raise Refusal(400, f"emphasis must be one of {', '.join(EMPHASIS_BY_NAME)}")
    return EMPHASIS_BY_NAME[value]


def parameters(request: Txt2ImgRequest, body: dict[str, Any]) -> dict[str, Any]:
    """A1111's `parameters`: the request as sent, over the defaults of its fields (so
    `seed` stays -1 when a seed was drawn; the seed used is in `info`)."""
    fields = {key: field.default for key, field in type(request).model_fields.items()}
    return {**fields, **{key: value for key, value in body.items() if key in fields}}


def info(plan: Plan, records: list[dict[str, Any]]) -> str:
    """A1111's `info`: a JSON string describing the images drawn."""
    jobs = plan.jobs
    first = records[0] if records else {"model_name": None, "model_hash": None}
    seeds = [job["seed"] for job in jobs]
    subseeds = [-1 if job["variation_seed"] is None else job["variation_seed"] for job in jobs]
    spec = SCHEDULERS[jobs[0]["scheduler"]]  # as the images' records say, where there are any
    sampler, schedule = (first["sampler"], first["schedule_type"]) if records else (
        spec.sampler, spec.schedule
    )  # fmt: skip
    return json.dumps({
        "prompt": jobs[0].prompt,
        "all_prompts": [job.prompt for job in jobs],
        "negative_prompt": jobs[0]["negative_prompt"],
        "all_negative_prompts": [job["negative_prompt"] for job in jobs],
        "seed": seeds[0], "all_seeds": seeds, "subseed": subseeds[0], "all_subseeds": subseeds,
        "subseed_strength": jobs[0]["variation_strength"], "width": jobs[0]["width"],
        "height": jobs[0]["height"],
        "sampler_name": sampler, "cfg_scale": jobs[0]["guidance"],
        "steps": jobs[0]["steps"], "batch_size": plan.batch_size, "restore_faces": False,
        "face_restoration_model": None, "sd_model_name": first["model_name"],
        "sd_model_hash": first["model_hash"], "sd_vae_name": None, "sd_vae_hash": None,
        "seed_resize_from_w": -1, "seed_resize_from_h": -1, "denoising_strength": None,
        "extra_generation_params": {"Schedule type": schedule},
        "index_of_first_image": 0, "infotexts": [infotext(record) for record in records],
        "styles": [], "job_timestamp": plan.timestamp, "clip_skip": jobs[0]["clip_skip"],
        "is_using_inpainting_conditioning": False, "version": f"txt2img {__version__}",
    })  # fmt: skip
