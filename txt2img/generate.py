"""Drawing images: diffusers' own pipeline call per batch, then safe PNG writes."""

from __future__ import annotations

import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import diffusers
import numpy as np
import torch
import transformers

from . import __version__
from .errors import BadImageError, Txt2ImgError, UsageError, is_out_of_memory
from .jobs import ImageJob, batches
from .metadata import ImageRecord, text_chunks
from .model_source import ModelSource
from .models import LoadedModel, load_model, pick_device, pick_dtype
from .outputs import Results, write_png
from .progress import Reporter
from .schedulers import a1111_sampler, build_scheduler
from .settings import Existing, Settings


def generate(
    settings: Settings,
    source: ModelSource,
    config: Path | None,
    jobs: list[ImageJob],
    reporter: Reporter,
    results: Results,
) -> int:
    """Draw and write every job; return how many failed (only with --keep-going)."""
    quiet_libraries(settings.quiet)
    device = pick_device(settings.device)
    dtype = pick_dtype(settings.dtype, device)
    reporter.info(f"loading {source.location}")
    model = load_model(source, config, device, dtype, offline=settings.offline)
    d = model.defaults
    reporter.info(
        f"{d.family} model on {device} in {model.dtype_name}; "
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
                images = render(model, batch, reporter.step_done)
            except Exception as exc:
                failed += fail_or_raise(settings, batch, exc, reporter, results)
                continue
            seconds = (time.perf_counter() - started) / len(batch)
            for job, image in zip(batch, images, strict=True):
                try:
                    write_image(settings, model, job, image, seconds, results)
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
    item_error = isinstance(exc, (UsageError, BadImageError)) or is_out_of_memory(exc)
    if not (settings.keep_going and item_error):
        raise exc
    message = exc.one_line() if isinstance(exc, Txt2ImgError) else str(exc).splitlines()[0]
    for job in jobs:
        reporter.failure(f"image {job.index} (line {job.line}, seed {job.seed}): {message}")
        results.failed(message, asdict(job))
    return len(jobs)


def render(model: LoadedModel, batch: list[ImageJob], on_step: Any) -> np.ndarray:
    """One pipeline call for a batch of jobs that share their settings.

    Each image gets its own fresh CPU generator, so its starting noise depends only on
    its seed: not on the device, the batch size, or what was drawn before."""
    first = batch[0]
    use_scheduler(model, first.scheduler)

    def step_callback(pipeline: Any, step: int, timestep: Any, tensors: dict) -> dict:
        on_step(step + 1, len(pipeline.scheduler.timesteps))
        return tensors

    try:
        return model.pipe(
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
        ).images
    except ValueError as exc:  # diffusers' own input checks, e.g. LCM above 50 steps
        raise UsageError(f"diffusers refused these settings: {exc}".splitlines()[0]) from exc


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
    seconds: float,
    results: Results,
) -> None:
    if not np.isfinite(pixels).all():
        raise BadImageError(
            "the image came out as NaN (not a number) and was not written",
            "try --dtype fp32",
        )
    image = model.pipe.image_processor.numpy_to_pil(pixels[None])[0]
    record = image_record(model, job)
    target = settings.output_dir / job.file_name
    write_png(image, target, text_chunks(record), replace=settings.existing is Existing.replace)
    results.written(target, {**asdict(record), "line": job.line, "seconds": round(seconds, 3)})


def image_record(model: LoadedModel, job: ImageJob) -> ImageRecord:
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
