"""A run as a list of image jobs: what to draw, with which seed, under which file name."""

from __future__ import annotations

from dataclasses import dataclass, replace

from .outputs import image_file_name
from .settings import Settings


@dataclass(frozen=True)
class ImageJob:
    """One image. `None` settings take the model's defaults (see `with_defaults`)."""

    index: int
    prompt: str
    negative_prompt: str
    seed: int
    steps: int | None
    guidance: float | None
    width: int | None
    height: int | None

    @property
    def file_name(self) -> str:
        return image_file_name(self.index, self.seed, self.prompt)

    def with_defaults(self, steps: int, guidance: float, width: int, height: int) -> ImageJob:
        return replace(
            self,
            steps=self.steps if self.steps is not None else steps,
            guidance=self.guidance if self.guidance is not None else guidance,
            width=self.width if self.width is not None else width,
            height=self.height if self.height is not None else height,
        )


def plan_jobs(settings: Settings) -> list[ImageJob]:
    """Image i of the run (counting from 0) gets seed + i, so any image can be redone alone."""
    return [
        ImageJob(
            index=i,
            prompt=settings.prompt,
            negative_prompt=settings.negative_prompt,
            seed=settings.seed + i,
            steps=settings.steps,
            guidance=settings.guidance,
            width=settings.width,
            height=settings.height,
        )
        for i in range(settings.num_images)
    ]
