"""A run as a list of image jobs: what to draw, with which seed, under which file name,
and which of them this process draws."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, replace

from .errors import UsageError
from .outputs import image_file_name
from .settings import Settings, check_image_options


@dataclass(frozen=True)
class ImageJob:
    """One image. `None` settings take the model's defaults (see `with_defaults`)."""

    index: int  # position in the whole run, counting from 0; names the file
    line: int  # line of --prompts-file it came from (0 for the command-line prompt)
    prompt: str
    negative_prompt: str
    seed: int
    steps: int | None
    guidance: float | None
    width: int | None
    height: int | None
    scheduler: str | None

    @property
    def file_name(self) -> str:
        return image_file_name(self.index, self.seed, self.prompt)

    @property
    def strip_name(self) -> str:
        """--save-steps: the strip of denoising steps beside the image."""
        return self.file_name.removesuffix(".png") + "-steps.png"

    def with_defaults(self, steps: int, guidance: float, width: int, height: int) -> ImageJob:
        return replace(
            self,
            steps=self.steps if self.steps is not None else steps,
            guidance=self.guidance if self.guidance is not None else guidance,
            width=self.width if self.width is not None else width,
            height=self.height if self.height is not None else height,
        )

    @property
    def batch_key(self) -> tuple:
        """Jobs with equal keys can share one pipeline call. An empty negative prompt is
        its own case: SDXL then uses zero embeddings, unlike for any text."""
        return (self.steps, self.guidance, self.width, self.height, self.scheduler,
                bool(self.negative_prompt))  # fmt: skip


def plan_jobs(settings: Settings) -> list[ImageJob]:
    """Image i of the run (counting from 0) gets seed + i, unless its prompt line sets a
    seed: then that line's images get that seed, + 1, + 2..."""
    jobs: list[ImageJob] = []
    for line in settings.prompts:
        options = line.overrides
        count = options.get("num_images", settings.num_images)
        first_seed = options.get("seed", settings.seed + len(jobs))
        try:
            check_image_options(num_images=count, seed=first_seed)
        except UsageError as exc:
            raise UsageError(f"prompt on line {line.line}: {exc.message}", exc.hint) from exc
        for k in range(count):
            jobs.append(
                ImageJob(
                    index=len(jobs),
                    line=line.line,
                    prompt=line.prompt,
                    negative_prompt=options.get("negative_prompt", settings.negative_prompt),
                    seed=first_seed + k,
                    steps=options.get("steps", settings.steps),
                    guidance=options.get("guidance", settings.guidance),
                    width=options.get("width", settings.width),
                    height=options.get("height", settings.height),
                    scheduler=options.get("scheduler", settings.scheduler),
                )
            )
    return jobs


def world() -> tuple[int, int]:
    """(this process's rank, number of processes), as `accelerate launch` and `torchrun`
    set them; (0, 1) for a plain run."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def process_share(jobs: list[ImageJob]) -> list[ImageJob]:
    """Every process takes every world-th image. File names come from the global index,
    so the processes never write the same file and together write exactly the run."""
    rank, size = world()
    return jobs[rank::size]


def batches(jobs: list[ImageJob], size: int) -> Iterator[list[ImageJob]]:
    """Consecutive jobs that share their settings, at most `size` at a time."""
    batch: list[ImageJob] = []
    for job in jobs:
        if batch and (len(batch) == size or job.batch_key != batch[0].batch_key):
            yield batch
            batch = []
        batch.append(job)
    if batch:
        yield batch
