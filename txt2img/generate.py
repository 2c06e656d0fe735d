"""Drawing images: diffusers' own pipeline call per image, then a safe PNG write."""

from __future__ import annotations

import time
import warnings
from typing import Any

import diffusers
import torch
import transformers
from PIL import Image

from . import __version__
from .errors import UsageError
from .jobs import ImageJob
from .metadata import ImageRecord, text_chunks
from .model_source import ModelSource
from .models import LoadedModel, load_model, pick_device, pick_dtype
from .outputs import emit, write_png
from .progress import Reporter
from .schedulers import a1111_sampler
from .settings import Settings


def generate(
    settings: Settings, source: ModelSource, jobs: list[ImageJob], reporter: Reporter
) -> None:
    quiet_libraries(settings.quiet)
    device = pick_device(settings.device)
    dtype = pick_dtype(settings.dtype, device)
    reporter.info(f"loading {source.location}")
    model = load_model(source, settings.scheduler, device, dtype)
    d = model.defaults
    reporter.info(
        f"{d.family} model on {model.device.type} in {model.dtype_name}; "
        f"defaults: {d.steps} steps, guidance {d.guidance:g}, {d.width}x{d.height}"
    )
    reporter.start()
    try:
        for number, job in enumerate(jobs, start=1):
            job = job.with_defaults(d.steps, d.guidance, d.width, d.height)
            started = time.perf_counter()
            reporter.image_started()
            image = render(model.pipe, job, reporter.step_done)
            target = settings.output_dir / job.file_name
            write_png(image, target, text_chunks(image_record(settings, model, job)))
            emit(str(target))
            reporter.image_done(number, str(target), time.perf_counter() - started)
    finally:
        reporter.stop()


def render(pipe: Any, job: ImageJob, on_step: Any) -> Image.Image:
    """One pipeline call with a fresh CPU generator, so the starting noise depends only
    on the seed: not on the device, the batch, or what was drawn before."""

    def step_callback(pipeline: Any, step: int, timestep: Any, tensors: dict) -> dict:
        on_step(step + 1, len(pipeline.scheduler.timesteps))
        return tensors

    try:
        result = call_pipeline(pipe, job, step_callback)
    except ValueError as exc:  # diffusers' own input checks, e.g. LCM above 50 steps
        raise UsageError(f"diffusers refused these settings: {exc}".splitlines()[0]) from exc
    return pipe.image_processor.numpy_to_pil(result.images)[0]


def call_pipeline(pipe: Any, job: ImageJob, step_callback: Any) -> Any:
    return pipe(
        prompt=job.prompt,
        # None, not "": SDXL then uses zero embeddings for the unconditional branch,
        # exactly as a plain diffusers call does.
        negative_prompt=job.negative_prompt or None,
        num_inference_steps=job.steps,
        guidance_scale=job.guidance,
        width=job.width,
        height=job.height,
        generator=torch.Generator("cpu").manual_seed(job.seed),
        output_type="np",
        callback_on_step_end=step_callback,
    )


def image_record(settings: Settings, model: LoadedModel, job: ImageJob) -> ImageRecord:
    scheduler = model.pipe.scheduler
    sampler, schedule = a1111_sampler(
        settings.scheduler, type(scheduler).__name__, scheduler.config
    )
    return ImageRecord(
        prompt=job.prompt,
        negative_prompt=job.negative_prompt,
        seed=job.seed,
        steps=job.steps,
        guidance=job.guidance,
        width=job.width,
        height=job.height,
        index=job.index,
        scheduler=settings.scheduler,
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
