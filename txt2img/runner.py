"""The order of a run: plan the images, check the output folder, then load and draw.

Kept free of torch so that everything that can be refused is refused before the slow
imports and the model load.
"""

from __future__ import annotations

import os

from .jobs import plan_jobs
from .model_source import locate
from .outputs import prepare_output_dir
from .progress import Reporter
from .settings import Settings


def run(settings: Settings) -> None:
    source = locate(settings.model)
    jobs = plan_jobs(settings)
    prepare_output_dir(settings.output_dir, [job.file_name for job in jobs])
    reporter = Reporter(settings.quiet, total_images=len(jobs))
    if settings.seed_is_random:
        reporter.info(f"seed: {settings.seed} (drawn at random; --seed {settings.seed} repeats it)")
    if settings.quiet:
        # Read by transformers and diffusers when they are first imported, just below.
        os.environ["TRANSFORMERS_VERBOSITY"] = os.environ["DIFFUSERS_VERBOSITY"] = "error"
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    from .generate import generate  # torch and diffusers load only from here on

    generate(settings, source, jobs, reporter)
