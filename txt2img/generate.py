"""Drawing images: diffusers' own pipeline call per batch, then safe PNG writes."""

from __future__ import annotations

import gc
import time
import warnings
from dataclasses import asdict, dataclass
from typing import Any

import diffusers
import numpy as np
import torch
import transformers

from . import __version__
from .errors import BadImageError, Txt2ImgError, UsageError, is_out_of_memory
from .fast import speedups_for
from .jobs import ImageJob, batches
from .metadata import ImageRecord, text_chunks
from .model_source import ModelPlan
from .models import LoadedModel, load_model, pick_device, pick_dtype
from .outputs import Results, write_png
from .previews import StepRecorder, recording, strip
from .progress import Reporter
from .schedulers import a1111_sampler, build_scheduler
from .settings import Existing, Settings


def generate(
    settings: Settings,
    plan: ModelPlan,
    jobs: list[ImageJob],
    reporter: Reporter,
    results: Results,
) -> int:
    """Draw and write every job; return how many failed (only with --keep-going)."""
    quiet_libraries(settings.quiet)
    device = pick_device(settings.device)
    speedups = speedups_for(settings, device, has_loras=bool(plan.loras))
    dtype = pick_dtype(settings.dtype, device, speedups)
    reporter.info(f"loading {plan.source.location}")
    model = load_model(settings, plan, device, dtype, speedups)
    d = model.defaults
    savers = ", ".join(settings.memory.names()) or "none"
    reporter.info(
        f"{d.family} model on {device} in {model.dtype_name}; memory savers: {savers}; "
        f"speed-ups: {', '.join(speedups) or 'none'}; "
        f"defaults: {d.steps} steps, guidance {d.guidance:g}, {d.width}x{d.height}"
    )
    jobs = [job.with_defaults(d.steps, d.guidance, d.width, d.height) for job in jobs]
    failed = 0
    reporter.start()
    try:
        for batch in batches(jobs, settings.batch_size):
            started = time.perf_counter()
            reporter.image_started()
            try:
                drawn = render(model, batch, reporter.step_done, settings.save_steps)
            except Exception as exc:
                failed += fail_or_raise(settings, batch, exc, reporter, results)
                continue
            seconds = (time.perf_counter() - started) / len(batch)
            for k, job in enumerate(batch):
                try:
                    pixels, retried = checked_pixels(model, drawn, k, reporter)
                    write_image(settings, model, job, pixels, retried, seconds, results)
                    if drawn.steps is not None:
                        write_strip(settings, model, job, strip(model.pipe, drawn.steps, k))
                except BadImageError as exc:
                    failed += fail_or_raise(settings, [job], exc, reporter, results)
                    continue
                reporter.image_done(str(settings.output_dir / job.file_name), seconds)
    finally:
        reporter.stop()
    return failed


def fail_or_raise(
    settings: Settings, jobs: list[ImageJob], exc: Exception, reporter: Reporter, results: Results
) -> int:
    """With --keep-going, report a failed item and go on; otherwise stop the run."""
    out_of_memory = is_out_of_memory(exc)
    if not (
        settings.keep_going and (out_of_memory or isinstance(exc, (UsageError, BadImageError)))
    ):
        raise exc
    if out_of_memory:  # give the failed batch's memory back before the next one
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    message = exc.one_line() if isinstance(exc, Txt2ImgError) else str(exc).splitlines()[0]
    for job in jobs:
        reporter.failure(f"image {job.index} (line {job.line}, seed {job.seed}): {message}")
        results.failed(message, asdict(job))
    return len(jobs)


@dataclass
class Drawn:
    """What one pipeline call gave: pixels in [0, 1], the final latents (for a second
    decode), and the safety checker's verdicts where the model has one."""

    pixels: np.ndarray
    latents: torch.Tensor
    nsfw: list[bool] | None
    steps: StepRecorder | None  # --save-steps


def render(
    model: LoadedModel, batch: list[ImageJob], on_step: Any, save_steps: int | None
) -> Drawn:
    """One pipeline call for a batch of jobs that share their settings.

    Each image gets its own fresh CPU generator, so its starting noise depends only on
    its seed: not on the device, the batch size, or what was drawn before."""
    first = batch[0]
    use_scheduler(model, first.scheduler)
    final: dict[str, torch.Tensor] = {}

    def step_callback(pipeline: Any, step: int, timestep: Any, tensors: dict) -> dict:
        final["latents"] = tensors["latents"]
        on_step(step + 1, len(pipeline.scheduler.timesteps))
        return tensors

    try:
        with recording(model.pipe, save_steps) as recorder:
            output = model.pipe(
                prompt=[job.prompt for job in batch],
                # None, not "": SDXL then uses zero embeddings for the unconditional branch,
                # exactly as a plain diffusers call does.
                negative_prompt=[job.negative_prompt for job in batch]
                if first.negative_prompt
                else None,
                num_inference_steps=first.steps,
                guidance_scale=first.guidance,
                width=first.width,
                height=first.height,
                generator=[torch.Generator("cpu").manual_seed(job.seed) for job in batch],
                output_type="np",
                callback_on_step_end=step_callback,
            )
    except ValueError as exc:  # diffusers' own input checks, e.g. LCM above 50 steps
        raise UsageError(f"diffusers refused these settings: {exc}".splitlines()[0]) from exc
    nsfw = getattr(output, "nsfw_content_detected", None)
    return Drawn(output.images, final["latents"], nsfw, recorder)


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
            "try --dtype fp32",
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


def write_image(
    settings: Settings,
    model: LoadedModel,
    job: ImageJob,
    pixels: np.ndarray,
    vae_fp32_retry: bool,
    seconds: float,
    results: Results,
) -> None:
    image = model.pipe.image_processor.numpy_to_pil(pixels[None])[0]
    record = image_record(model, job, vae_fp32_retry)
    target = settings.output_dir / job.file_name
    write_png(image, target, text_chunks(record), replace=settings.existing is Existing.replace)
    results.written(target, {**asdict(record), "line": job.line, "seconds": round(seconds, 3)})


def write_strip(settings: Settings, model: LoadedModel, job: ImageJob, sheet: Any) -> None:
    frames = len(model.pipe.scheduler.timesteps)
    chunks = {"txt2img-steps": f"every {settings.save_steps} of {frames} scheduler steps"}
    # With --resume the image is being drawn again, so its strip may be replaced too.
    replace = settings.existing is not Existing.refuse
    write_png(sheet, settings.output_dir / job.strip_name, chunks, replace=replace)


def image_record(model: LoadedModel, job: ImageJob, vae_fp32_retry: bool) -> ImageRecord:
    scheduler = model.pipe.scheduler
    sampler, schedule = a1111_sampler(job.scheduler, type(scheduler).__name__, scheduler.config)
    return ImageRecord(
        prompt=job.prompt,
        negative_prompt=job.negative_prompt,
        seed=job.seed,
        steps=job.steps,
        guidance=job.guidance,
        width=job.width,
        height=job.height,
        index=job.index,
        scheduler=job.scheduler,
        scheduler_class=type(scheduler).__name__,
        sampler=sampler,
        schedule_type=schedule,
        model=model.source.location,
        model_name=model.source.name,
        model_family=model.defaults.family,
        prediction_type=scheduler.config.get("prediction_type", "epsilon"),
        pipeline=type(model.pipe).__name__,
        device=model.device.type,
        dtype=model.dtype_name,
        vae_fp32_retry=vae_fp32_retry,
        speedups=list(model.speedups),
        addons=[asdict(addon) for addon in model.addons],
        versions={
            "txt2img": __version__,
            "diffusers": diffusers.__version__,
            "transformers": transformers.__version__,
            "torch": torch.__version__,
        },
    )


def quiet_libraries(quiet: bool) -> None:
    """Our own progress replaces diffusers' bars; --quiet also mutes library warnings."""
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    if quiet:
        diffusers.utils.logging.set_verbosity_error()
        transformers.utils.logging.set_verbosity_error()
        warnings.filterwarnings("ignore")
