"""The draw loop, for the command line, the `--server` route and the A1111 routes alike:
`draw_jobs` draws a run's pipeline calls (`pipeline_calls`) one by one; `draw_call` is one
call for one or more parts (`txt2img serve` merges requests), each part's images checked,
recorded and handed to its sink; `render` is the diffusers pipeline call itself, the only
one in txt2img."""

from __future__ import annotations

import gc
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import diffusers
import numpy as np
import torch
import transformers

from . import __version__
from .errors import (
    OUT_OF_MEMORY_MESSAGE,
    BadImageError,
    ModelError,
    Txt2ImgError,
    UsageError,
    debug_enabled,
    first_line,
    is_out_of_memory,
)
from .jobs import ImageJob, at_line, batches
from .model.addons import AddOn
from .model.load import LoadedModel, open_model
from .model.schedulers import a1111_sampler, build_scheduler
from .model.source import ModelPlan
from .noise import starting_noise
from .options import BY_KEY
from .outputs.progress import Reporter
from .outputs.steps import StepRecorder, recording, strip
from .pause import pause_at
from .prompt.encode import PromptEncoder
from .records.write import image_record
from .settings import DrawOptions, LoadOptions


class Sink(Protocol):
    """Where drawn images go: files on disk here, or a client of `txt2img serve`."""

    def wants_image(self, job: ImageJob) -> bool: ...
    def image(self, job: ImageJob, image: Any, record: dict[str, Any], seconds: float) -> str: ...
    def strip(self, job: ImageJob, sheet: Any, note: str) -> None: ...
    def skipped(self, job: ImageJob) -> None: ...
    def failed(self, job: ImageJob, message: str) -> None: ...


@dataclass
class Drawing:
    """What every step of a run's drawing needs."""

    options: DrawOptions
    model: LoadedModel
    reporter: Reporter
    sink: Sink
    prompts: PromptEncoder


def load_model(
    plan: ModelPlan,
    load: LoadOptions,
    verbose: bool,
    reporter: Reporter,
    loras_later: bool = False,
) -> LoadedModel:
    """`open_model`, said on stderr (`loras_later`: see there)."""
    mute_library_logs(verbose)
    reporter.info(f"loading {plan.source.location}")
    model = open_model(plan, load, loras_later=loras_later, quiet=reporter.quiet)
    d = model.defaults
    savers = ", ".join(load.memory.names()) or "none"
    reporter.info(
        f"{d.family} model on {model.device} in {model.dtype_name}; memory savers: {savers}; "
        f"speed-ups: {', '.join(model.speedups) or 'none'}; "
        f"defaults: {d.steps} steps, guidance {d.guidance:g}, {d.width}x{d.height}"
    )
    return model


def draw_jobs(
    model: LoadedModel,
    options: DrawOptions,
    jobs: list[ImageJob],
    done: set[int],
    reporter: Reporter,
    sink: Sink,
) -> int:
    """Draw every job whose index is not in `done` and hand it to `sink`; return how
    many failed (only with keep_going). `jobs` is this process's whole share, so the
    calls are those of an uninterrupted run: a call with a done image is drawn whole
    and only its missing images are kept, which keeps --resume pixel-identical at any
    batch size."""
    drawing = Drawing(options, model, reporter, sink, model_prompts(model))
    calls = pipeline_calls(drawing, jobs)
    failed = 0
    reporter.start()
    try:
        for call in calls:
            part = Part(drawing, call, done)
            if part.wanted():
                draw_call([part], reporter.step_done)
                if part.error is not None:
                    raise part.error
                failed += part.failed
    finally:
        reporter.stop()
    return failed


def model_prompts(model: LoadedModel) -> PromptEncoder:
    return PromptEncoder(model.pipe, model.defaults.architecture, model.embedding_tokens)


def pipeline_calls(drawing: Drawing, jobs: list[ImageJob]) -> list[list[ImageJob]]:
    """The pipeline calls that draw `jobs`, checked against the model: the run's batches
    as planned (`jobs.batches`, the same in every process of a run), each with the
    model's defaults filled in and split where its prompts' chunk counts differ (they
    cannot share a call)."""
    defaults = drawing.model.defaults.values()
    calls = []
    for batch in batches(jobs, drawing.options.batch_size):
        filled = [job.with_defaults(defaults) for job in batch]
        calls += batches(filled, len(filled), drawing.prompts.batch_key)
    every = [job for call in calls for job in call]
    check_sizes(every)
    check_prompt_settings(drawing.prompts, every, drawing.reporter, drawing.options.verbose)
    return calls


@dataclass
class Part:
    """One party's share of a pipeline call: a run's (or a request's) jobs, and how it
    ended. Several parts share a call when `txt2img serve` merges requests."""

    drawing: Drawing
    jobs: list[ImageJob]
    done: set[int]  # --resume: drawn, but not handed over
    keep: Callable[[], bool] = lambda: True  # asked after the call: hand the images over?
    failed: int = 0
    error: Exception | None = None  # what stopped it (keep_going off)

    def wanted(self) -> list[tuple[int, ImageJob]]:
        return [(k, job) for k, job in enumerate(self.jobs) if job.index not in self.done]


def draw_call(parts: list[Part], on_step: Callable[[int, int], bool | None]) -> None:
    """The draw loop's one step: one pipeline call for every part's jobs, then each
    part's images checked, recorded and handed to its sink. A failure is counted in the
    part it hits (with keep_going) or kept as its `error`; the other parts go on.
    `on_step`: see `render`."""
    first = parts[0].drawing
    jobs = [job for part in parts for job in part.jobs]
    save_steps = first.options.save_steps if len(parts) == 1 else None
    started = time.perf_counter()
    for part in parts:
        part.drawing.reporter.image_started()
    try:
        drawn = render(first.model, first.prompts, jobs, on_step, save_steps)
    except Exception as exc:
        for part in parts:
            part_failed(part, [job for _, job in part.wanted()], exc)
        return
    seconds = (time.perf_counter() - started) / len(jobs)
    offset = 0
    for part in parts:
        if part.keep():
            wanted = [(offset + k, job) for k, job in part.wanted()]
            deliver(part, drawn, wanted, seconds)
        offset += len(part.jobs)


def deliver(part: Part, drawn: Drawn, wanted: list[tuple[int, ImageJob]], seconds: float) -> None:
    """Hand image k of a call to the part's sink for each (k, job) of `wanted`."""
    for k, job in wanted:
        if part.error is not None:
            return
        try:
            where = write_outputs(part.drawing, drawn, k, job, seconds)
        except Exception as exc:
            part_failed(part, [job], exc)
            continue
        if where is not None:
            part.drawing.reporter.image_done(where, seconds)


def check_sizes(jobs: list[ImageJob]) -> None:
    """A model's native size comes from its config, so it gets the checks a user's
    --width and --height get."""
    for job in jobs:
        for key in ("width", "height"):
            try:
                BY_KEY[key].validate(job[key])
            except UsageError as exc:
                raise ModelError(
                    f"the model's config declares a native size the run cannot use: {exc.message}",
                    "give --width and --height",
                ) from None


def check_prompt_settings(
    prompts: PromptEncoder, jobs: list[ImageJob], reporter: Reporter, verbose: bool
) -> None:
    """Clip skip against the model's text encoder, before anything is drawn; with
    --verbose, each prompt's token and chunk count."""
    skips = {job["clip_skip"]: job for job in reversed(jobs)}  # each value's first job
    for skip, job in skips.items():
        try:
            prompts.check_clip_skip(skip)
        except UsageError as exc:
            raise at_line(job.line, exc) from None
    if max(skips) > 1 and not prompts.clip_skip_applies:
        reporter.info("--clip-skip changes SD 1.x models only; this model uses its "
                      "penultimate layer as it is (as A1111 does)")  # fmt: skip
    if verbose:
        seen = set()
        for job in jobs:
            if job.line not in seen:
                seen.add(job.line)
                where = f"line {job.line}" if job.line else "the prompt"
                reporter.info(f"{where}: {prompts.describe(job)}")


def write_outputs(
    drawing: Drawing, drawn: Drawn, k: int, job: ImageJob, seconds: float
) -> str | None:
    """Image k of a call and its strip. Both are decoded before either is handed over,
    so a failure leaves neither. Returns where the image went (None if it was kept)."""
    model, sink = drawing.model, drawing.sink
    checked = checked_pixels(model, drawn, k, drawing.reporter) if sink.wants_image(job) else None
    sheet = strip(model.pipe, drawn.steps, k) if drawn.steps is not None else None
    where = None
    if checked is not None:
        where = sink.image(job, *image_and_record(drawing, job, *checked), seconds)
    else:
        sink.skipped(job)
    if sheet is not None:
        frames = len(model.pipe.scheduler.timesteps)
        sink.strip(job, sheet, f"every {drawing.options.save_steps} of {frames} scheduler steps")
    return where


def part_failed(part: Part, jobs: list[ImageJob], exc: Exception) -> None:
    """With keep_going, a failure of the image (out of memory, a bad image, settings the
    model refuses) is reported for each of `jobs` and the part goes on; anything else
    stops the part, as its `error`."""
    drawing = part.drawing
    out_of_memory = is_out_of_memory(exc)
    if not (
        drawing.options.keep_going
        and (out_of_memory or isinstance(exc, (UsageError, BadImageError)))
    ):
        part.error = part.error or exc
        return
    if out_of_memory:  # give the failed batch's memory back before the next one
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    message = exc.one_line() if isinstance(exc, Txt2ImgError) else OUT_OF_MEMORY_MESSAGE
    for job in jobs:
        drawing.reporter.failure(
            f"image {job.index} (line {job.line}, seed {job['seed']}): {message}"
        )
        drawing.sink.failed(job, message)
    part.failed += len(jobs)


@dataclass
class Drawn:
    """What one pipeline call gave: pixels in [0, 1], the final latents (for a second
    decode), and the safety checker's verdicts where the model has one."""

    pixels: np.ndarray
    latents: torch.Tensor
    nsfw: list[bool] | None
    steps: StepRecorder | None  # --save-steps


def render(
    model: LoadedModel,
    prompts: PromptEncoder,
    batch: list[ImageJob],
    on_step: Any,
    save_steps: int | None,
) -> Drawn:
    """One pipeline call for a batch of jobs that share their settings, with the prompt
    embeddings built by A1111's rules (`prompt/encode.py`). `on_step(done, total)` is
    told of every step; when it returns True the call stops there (`txt2img serve`'s
    interrupt and cancel) and the images are decoded from the latents reached.

    Each image's starting noise and step noise come from its own seed
    (`noise.starting_noise`): not from the device, the batch size, or what was drawn
    before."""
    first = batch[0]
    use_scheduler(model, first["scheduler"])
    model.loras.use(first.lora_tags)  # before the prompts are encoded: LoRAs act there too
    final: dict[str, torch.Tensor] = {}
    latents, generators = starting_noise(batch, latent_shape(model.pipe, first))
    unet = model.pipe.unet

    def step_callback(pipeline: Any, step: int, timestep: Any, tensors: dict) -> dict:
        final["latents"] = tensors["latents"]
        stop = on_step(step + 1, len(pipeline.scheduler.timesteps))
        pause_at(f"step:{first.index}:{step + 1}")
        if stop:
            pipeline._interrupt = True  # diffusers skips the remaining steps
        return tensors

    try:
        with recording(model.pipe, save_steps) as recorder:
            output = model.pipe(
                **prompts.embed(batch),
                num_inference_steps=first["steps"],
                guidance_scale=first["guidance"],
                width=first["width"],
                height=first["height"],
                generator=generators,
                # as a GPU's torch.randn gives them: in the U-Net's dtype
                latents=None if latents is None else latents.to(unet.device, unet.dtype),
                output_type="np",
                callback_on_step_end=step_callback,
            )
    except ValueError as exc:
        raise settings_or_model_error(exc) from exc
    except RuntimeError as exc:  # torch's shape and dtype mismatches
        if is_out_of_memory(exc):
            raise
        raise model_failed(exc) from exc
    nsfw = getattr(output, "nsfw_content_detected", None)
    return Drawn(output.images, final["latents"], nsfw, recorder)


def latent_shape(pipe: Any, job: ImageJob) -> tuple[int, int, int]:
    factor = pipe.vae_scale_factor
    return pipe.unet.config.in_channels, job["height"] // factor, job["width"] // factor


# Where diffusers checks the settings it is given; a ValueError from anywhere else in a
# pipeline call is a problem of the model, not of the settings.
_SETTINGS_CHECKS = ("check_inputs", "set_timesteps", "retrieve_timesteps")


def settings_or_model_error(exc: ValueError) -> Txt2ImgError:
    frame = traceback.extract_tb(exc.__traceback__)[-1]
    if frame.name in _SETTINGS_CHECKS:  # e.g. LCM above 50 steps, a size the VAE cannot take
        return UsageError(f"diffusers refused these settings: {first_line(exc)}")
    return model_failed(exc)


def model_failed(exc: Exception) -> ModelError:
    return ModelError(
        f"the model failed while drawing: {first_line(exc)}",
        "its files may not belong together (a U-Net, VAE, text encoder or add-on from another "
        "model)",
    )


def checked_pixels(
    model: LoadedModel, drawn: Drawn, k: int, reporter: Reporter
) -> tuple[np.ndarray, bool]:
    """Image k of a call, never NaN, black or censored; and whether it needed an fp32
    decode. Half-precision VAEs can overflow to NaN where fp32 does not, so a NaN image
    is decoded once more in fp32 before it counts as failed."""
    if drawn.nsfw is not None and drawn.nsfw[k]:
        raise BadImageError(
            "the safety checker flagged the image and blacked it out; it was not written",
            "--no-safety-checker turns the checker off",
        )
    pixels, retried = drawn.pixels[k], False
    if not np.isfinite(pixels).all():
        reporter.info("the image came out as NaN; decoding it again with the VAE in fp32")
        pixels, retried = decode_in_fp32(model.pipe, drawn.latents[k : k + 1]), True
    if not np.isfinite(pixels).all():
        raise BadImageError(
            "the image came out as NaN (not a number), also when decoded in fp32; "
            "it was not written",
            "try --dtype fp32"
            if model.dtype != torch.float32
            else "try another seed, or smaller prompt weights; the model's weights may hold NaN",
        )
    if not pixels.any():
        raise BadImageError("the image came out all black; it was not written", "try another seed")
    return pixels, retried


def decode_in_fp32(pipe: Any, latents: torch.Tensor) -> np.ndarray:
    vae = pipe.vae
    dtype = vae.dtype
    vae.to(torch.float32)
    try:
        with torch.no_grad():
            scaled = latents.to(vae.device, torch.float32) / vae.config.scaling_factor
            image = vae.decode(scaled, return_dict=False)[0]
    finally:
        vae.to(dtype)
    return pipe.image_processor.postprocess(image, output_type="np")[0]


def use_scheduler(model: LoadedModel, name: str | None) -> None:
    """Switch to the named scheduler (built once from the model's own config), or back."""
    if name is None:
        model.pipe.scheduler = model.own_scheduler
    else:
        if name not in model.schedulers:
            model.schedulers[name] = build_scheduler(name, model.own_scheduler.config)
        model.pipe.scheduler = model.schedulers[name]


def image_and_record(
    drawing: Drawing, job: ImageJob, pixels: np.ndarray, vae_fp32_retry: bool
) -> tuple[Any, dict[str, Any]]:
    model = drawing.model
    image = model.pipe.image_processor.numpy_to_pil(pixels[None])[0]
    addons = image_addons(drawing, job)
    facts = model_facts(model, job, vae_fp32_retry, addons, drawing.prompts.pads(job))
    return image, image_record(job, facts)


def image_addons(drawing: Drawing, job: ImageJob) -> list[AddOn]:
    """The add-ons that acted on `job`: the VAE, the LoRAs switched on for it, and the
    embeddings its prompts use (A1111's "TI hashes" lists only those)."""
    used = drawing.prompts.embedding_tokens(job)
    model = drawing.model
    vae = [addon for addon in model.addons if addon.kind == "vae"]
    embeddings = [a for a in model.addons if a.kind == "embedding" and a.token in used]
    return [*vae, *model.loras.records(job.lora_tags), *embeddings]


def model_facts(
    model: LoadedModel, job: ImageJob, vae_fp32_retry: bool, addons: list[AddOn], pad_conds: bool
) -> dict[str, Any]:
    """What the model and the device made of `job`: `records.write.MODEL_KEYS`."""
    scheduler = model.pipe.scheduler
    sampler, schedule = a1111_sampler(job["scheduler"], type(scheduler).__name__, scheduler.config)
    return {
        "scheduler_class": type(scheduler).__name__,
        "sampler": sampler,
        "schedule_type": schedule,
        "model": model.source.location,
        "model_name": model.source.name,
        "model_hash": model.model_hash,
        "model_family": model.defaults.family,
        "prediction_type": scheduler.config.get("prediction_type", "epsilon"),
        "pipeline": type(model.pipe).__name__,
        "device": model.device.type,
        "dtype": model.dtype_name,
        "vae_fp32_retry": vae_fp32_retry,
        "speedups": list(model.speedups),
        "pad_conds": pad_conds,
        "addons": [asdict(addon) for addon in addons],
        "versions": {
            "txt2img": __version__,
            "diffusers": diffusers.__version__,
            "transformers": transformers.__version__,
            "torch": torch.__version__,
        },
    }


def mute_library_logs(verbose: bool) -> None:
    """Our own progress replaces diffusers' bars; library logs only with --verbose or
    TXT2IMG_DEBUG=1 (their warnings are muted before the imports, in run.py)."""
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    if not (verbose or debug_enabled()):
        # Even their error lines: txt2img reports every failure itself, in one line.
        diffusers.utils.logging.set_verbosity(diffusers.utils.logging.CRITICAL)
        transformers.utils.logging.set_verbosity(transformers.utils.logging.CRITICAL)
