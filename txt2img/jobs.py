"""A run as a list of image jobs: what to draw, with which seed, under which file name,
which of them this process draws, and how they are grouped into pipeline calls."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from .errors import Txt2ImgError, UsageError
from .options import IMAGE_OPTIONS, RECORDED_OPTIONS
from .outputs.files import image_file_name
from .prompt.syntax import LoraTag, check_prompts, take_lora_tags
from .settings import Settings, check_image_count, check_seed_range, random_seed

# Per-image values that decide which jobs may share one pipeline call.
_BATCH_KEYS = tuple(option for option in RECORDED_OPTIONS if option.batch != "free")


@dataclass(frozen=True)
class ImageJob:
    """One image. `values` holds every recorded per-image option (`RECORDED_OPTIONS`);
    None takes the model's default (see `with_defaults`)."""

    index: int  # position in the whole run, counting from 0; names the file
    line: int  # line of --prompts-file it came from (0 for the command-line prompt)
    prompt: str
    values: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    @property
    def file_name(self) -> str:
        return image_file_name(self.index, self["seed"], self.prompt)

    @property
    def strip_name(self) -> str:
        """--save-steps: the strip of denoising steps beside the image."""
        return self.file_name.removesuffix(".png") + "-steps.png"

    def with_defaults(self, defaults: dict[str, Any]) -> ImageJob:
        """Fill the values left to the model (None) from its `defaults`."""
        filled = {
            key: defaults[key] if value is None and key in defaults else value
            for key, value in self.values.items()
        }
        return ImageJob(self.index, self.line, self.prompt, filled)

    @cached_property
    def lora_tags(self) -> tuple[LoraTag, ...]:
        return take_lora_tags(self.prompt)[1]

    @property
    def batch_key(self) -> tuple:
        """Jobs with equal keys can share one pipeline call (see `Option.batch`); the
        LoRAs a prompt's tags switch on are the call's too."""
        values = (bool(self[o.key]) if o.batch == "given" else self[o.key] for o in _BATCH_KEYS)
        return (*values, self.lora_tags)


def plan_jobs(settings: Settings) -> list[ImageJob]:
    """Image i of the run (counting from 0) gets seed + i, unless its prompt line sets a
    seed: then that line's images get that seed, + 1, + 2... (and so for the variation
    seed; see `seeds_of`)."""
    jobs: list[ImageJob] = []
    for line in settings.prompts:
        options = {option.key: line.overrides.get(option.key, settings.image[option.key])
                   for option in IMAGE_OPTIONS}  # fmt: skip
        count = options["num_images"]
        options["seed"] = line.overrides.get("seed", settings.image["seed"] + len(jobs))
        options["variation_seed"] = _first_variation_seed(settings, line.overrides, len(jobs))
        if options["variation_strength"] and options["variation_seed"] is None:
            options["variation_seed"] = random_seed()
        try:
            check_image_count(len(jobs) + count)
            check_seed_range(options["seed"], count)
            check_seed_range(options["variation_seed"], count, "--variation-seed")
            check_prompts(line.prompt, options["negative_prompt"], options["emphasis"])
        except UsageError as exc:
            raise at_line(line.line, exc) from exc
        for k in range(count):
            values = {option.key: options[option.key] for option in RECORDED_OPTIONS}
            jobs.append(ImageJob(len(jobs), line.line, line.prompt, seeds_of(values, k)))
    return jobs


def _first_variation_seed(settings: Settings, overrides: dict, before: int) -> int | None:
    """A prompt line's variation seed, continuing the command line's as seeds do; None
    (no variation) unless one is given or a variation strength asks for a random one."""
    if "variation_seed" in overrides:
        return overrides["variation_seed"]
    given = settings.image["variation_seed"]
    return None if given is None else given + before


def seeds_of(values: dict[str, Any], k: int) -> dict[str, Any]:
    """`values` of the k-th image of a prompt (its `seed` and `variation_seed` the
    first's): A1111's rule. Image k gets seed + k; with a variation strength above 0
    every image keeps the seed and gets variation seed + k instead."""
    variation = values["variation_seed"]
    varied = {**values, "variation_seed": None if variation is None else variation + k}
    return varied if values["variation_strength"] else {**varied, "seed": values["seed"] + k}


def at_line(line: int, exc: Txt2ImgError) -> Txt2ImgError:
    """`exc` (of the same kind) naming the prompt line it is about, if any."""
    where = f"prompt on line {line}: " if line else ""
    return type(exc)(f"{where}{exc.message}", exc.hint)


def world() -> tuple[int, int]:
    """(this process's rank, number of processes), as `accelerate launch` and `torchrun`
    set them; (0, 1) for a plain run."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def process_share(jobs: list[ImageJob], batch_size: int) -> list[ImageJob]:
    """This process's share of the run: every world-th batch, whole, so that each image
    is drawn in the same pipeline call as in a run of one process (pixels do not depend
    on the process count at any batch size). File names come from the global index, so
    the processes never write the same file and together write exactly the run."""
    rank, size = world()
    share = list(batches(jobs, batch_size))[rank::size]
    return [job for batch in share for job in batch]


def batches(
    jobs: list[ImageJob], size: int, key: Callable[[ImageJob], Any] = lambda job: job.batch_key
) -> Iterator[list[ImageJob]]:
    """Consecutive jobs with equal `key`s (their settings), at most `size` at a time; a
    batch never spans a gap in the indices, so a process's share (whole batches) is
    grouped as the whole run was. Always called on a process's whole share (done images
    included), so that a resumed run groups its images exactly as the uninterrupted one
    did."""
    batch: list[ImageJob] = []
    for job in jobs:
        if batch and (
            len(batch) == size or key(job) != key(batch[0]) or job.index != batch[-1].index + 1
        ):
            yield batch
            batch = []
        batch.append(job)
    if batch:
        yield batch
