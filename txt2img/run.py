"""The order of a run, as numbered steps (`run`): plan the images, find the model,
settle what is already on disk, then load and draw, here or on a `txt2img serve`.

Free of torch until step 4, so that everything that can be refused is refused before
the slow imports and the model load.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from .errors import PartialFailure, Txt2ImgError, UsageError, debug_enabled
from .jobs import ImageJob, at_line, plan_jobs, process_share, world
from .model.folders import embeddings_named, find_lora, folder_index
from .model.source import ModelPlan, plan_model
from .outputs.files import (
    FileSink,
    Results,
    check_stdout,
    refuse_existing,
    remove_stale_temporaries,
    taken_names,
)
from .outputs.progress import Reporter
from .prompt.syntax import take_lora_tags
from .settings import DrawOptions, Existing, Settings


def run(settings: Settings) -> None:
    """A run, in order. Steps 1 to 3 import no torch: everything that can be refused is
    refused before the slow imports and the model load."""
    # 1. plan the images (no torch)
    check_stdout()
    if settings.seed_is_random and world()[1] > 1:
        raise UsageError(
            "several processes need one shared --seed (each would draw its own)",
            "pass --seed to accelerate launch / torchrun runs",
        )
    jobs = process_share(plan_jobs(settings), settings.batch_size)
    # 2. find the model and add-ons (no torch; --server: the server finds them)
    plan = None if settings.server else local_model(settings)
    # 3. settle what is on disk: no clobbering; --resume skips finished images
    results = Results(settings.json_lines)
    taken, done = settle_outputs(settings, jobs, results)
    to_draw = len(jobs) - len(done)
    reporter = Reporter(settings.quiet, total_images=to_draw)
    if settings.seed_is_random:
        reporter.info(f"seed: {settings.image['seed']} (drawn at random; "
                      f"--seed {settings.image['seed']} repeats it)")  # fmt: skip
    if not to_draw:
        reporter.info(nothing_to_do(settings, len(jobs)))
        return
    sink = FileSink(settings, taken, results)
    if plan is None:
        # 4-5. load and draw on the server; its images are written here
        from .server.client import draw_remotely

        failed = draw_remotely(settings, jobs, done, sink, reporter)
    else:
        # 4. load
        quiet_libraries(settings.load.offline, settings.verbose)
        from .draw import draw_jobs, load_model  # torch loads from here on

        model = load_model(plan, settings.load, settings.verbose, reporter)
        # 5. for each pipeline call: encode, draw, check, record, write
        failed = draw_jobs(model, DrawOptions.of(settings), jobs, done, reporter, sink)
    if failed:
        raise PartialFailure(f"{failed} of {to_draw} images failed", "see the messages above")


def settle_outputs(
    settings: Settings, jobs: list[ImageJob], results: Results
) -> tuple[set[str], set[int]]:
    """The run's file names already taken, and (--resume) the indices of the images
    already there. Temporary files that a killed run left are removed; taken names are
    refused unless --resume or --overwrite says what to do with them."""
    names = [job.file_name for job in jobs]
    if settings.save_steps:
        names += [job.strip_name for job in jobs]
    remove_stale_temporaries(settings.output_dir, names)
    taken = taken_names(settings.output_dir, names)
    if taken and settings.existing is Existing.refuse:
        raise refuse_existing(settings.output_dir, sorted(taken))
    done = set()
    if settings.existing is Existing.skip:
        done = {job.index for job in jobs if is_done(settings, job, taken)}
        for job in jobs:
            if job.index in done:
                results.skipped(settings.output_dir / job.file_name, job)
    return taken, done


def local_model(settings: Settings) -> ModelPlan:
    """The model and add-ons a local run loads, found before anything is loaded."""
    assert settings.model is not None
    named_loras, named_embeddings = prompt_addons(settings)
    return plan_model(
        settings.model,
        allow_pickle=settings.allow_pickle,
        config=settings.config,
        vae=settings.vae,
        loras=settings.loras,
        embeddings=settings.embeddings,
        named_loras=named_loras,
        named_embeddings=named_embeddings,
    )


def prompt_addons(settings: Settings) -> tuple[dict[str, Path], dict[str, Path]]:
    """The LoRAs the prompts' tags name, by name, from --lora-dir; and the embeddings of
    --embeddings-dir whose names the prompts use."""
    loras: dict[str, Path] | None = None  # the folders are searched once, if a tag needs it
    named: dict[str, Path] = {}
    texts = []
    for line in settings.prompts:
        negative = line.overrides.get("negative_prompt", settings.image["negative_prompt"])
        text, tags = take_lora_tags(line.prompt)
        texts += [text, negative]
        for tag in tags:
            recorded = settings.from_image.lora_files.get(tag.name)
            if recorded is not None:
                named.setdefault(tag.name, recorded)
                continue
            if loras is None:
                loras = folder_index(settings.lora_dirs, "--lora-dir")
            try:
                digest = settings.from_image.lora_hashes.get(tag.name)
                named.setdefault(tag.name, find_lora(loras, tag.name, settings.lora_dirs, digest))
            except Txt2ImgError as exc:
                raise at_line(line.line, exc) from None
    embeddings = folder_index(settings.embedding_dirs, "--embeddings-dir")
    return named, embeddings_named(embeddings, texts)


def nothing_to_do(settings: Settings, share: int) -> str:
    if not share:
        return "nothing to do: this process's share of the run is empty"
    whose = "this process's" if world()[1] > 1 else "all"
    return f"nothing to do: {whose} {share} images are already in {settings.output_dir}"


def is_done(settings: Settings, job: ImageJob, taken: set[str]) -> bool:
    """Under --resume: an image is done when its file (and, with --save-steps, its
    strip) is there."""
    return job.file_name in taken and (not settings.save_steps or job.strip_name in taken)


def quiet_libraries(offline: bool, verbose: bool) -> None:
    """stderr carries txt2img's own lines; the libraries' warnings, logs and progress
    bars only with --verbose or TXT2IMG_DEBUG=1. Set before the libraries are imported,
    which read these variables then."""
    if offline:
        os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    if verbose or debug_enabled():
        return
    os.environ["TRANSFORMERS_VERBOSITY"] = os.environ["DIFFUSERS_VERBOSITY"] = "critical"
    os.environ["TRANSFORMERS_NO_ADVISORY_WARNINGS"] = "1"
    warnings.filterwarnings("ignore")
