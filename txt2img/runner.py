"""The order of a run: plan the images, settle what is already on disk, then load and draw.

Kept free of torch so that everything that can be refused is refused before the slow
imports and the model load.
"""

from __future__ import annotations

import os
from dataclasses import asdict

from .errors import PartialFailure, UsageError
from .jobs import plan_jobs, process_share, world
from .model_source import plan_model
from .outputs import Results, prepare_output_dir, refuse_existing
from .progress import Reporter
from .settings import Existing, Settings


def run(settings: Settings) -> None:
    if settings.seed_is_random and world()[1] > 1:
        raise UsageError(
            "several processes need one shared --seed (each would draw its own)",
            "pass --seed to accelerate launch / torchrun runs",
        )
    plan = plan_model(settings)
    jobs = process_share(plan_jobs(settings))
    names = [job.file_name for job in jobs]
    if settings.save_steps:
        names += [job.strip_name for job in jobs]
    taken = prepare_output_dir(settings.output_dir, names)
    results = Results(settings.json_lines)
    if taken and settings.existing is Existing.refuse:
        raise refuse_existing(settings.output_dir, sorted(taken))
    if settings.existing is Existing.skip:
        for job in jobs:
            if job.file_name in taken:
                results.skipped(settings.output_dir / job.file_name, asdict(job))
        jobs = [job for job in jobs if job.file_name not in taken]
    reporter = Reporter(settings.quiet, total_images=len(jobs))
    if settings.seed_is_random:
        reporter.info(f"seed: {settings.seed} (drawn at random; --seed {settings.seed} repeats it)")
    if not jobs:
        reporter.info(
            f"nothing to do: all {len(taken)} images are already in {settings.output_dir}"
        )
        return
    if settings.offline:
        os.environ["HF_HUB_OFFLINE"] = "1"  # read by huggingface_hub when it is imported
    if settings.quiet:
        # Read by transformers and diffusers when they are first imported, just below.
        os.environ["TRANSFORMERS_VERBOSITY"] = os.environ["DIFFUSERS_VERBOSITY"] = "error"
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    from .generate import generate  # torch and diffusers load only from here on

    failed = generate(settings, plan, jobs, reporter, results)
    if failed:
        raise PartialFailure(f"{failed} of {len(jobs)} images failed", "see the messages above")
