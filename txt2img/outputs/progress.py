"""What the user sees on stderr while a run works: logs and progress, never results.

A live rich progress bar is drawn only when stderr is a terminal and NO_COLOR is
unset; otherwise each event is one plain line, free of ANSI codes. --quiet drops both.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from ..errors import say


class RateColumn(ProgressColumn):
    """Images (or steps) per second."""

    def render(self, task: Task) -> Text:
        return Text(f"{task.speed:.2f}/s" if task.speed else "")


def wants_live_display() -> bool:
    return (
        sys.stderr.isatty()
        and "NO_COLOR" not in os.environ
        and os.environ.get("TERM", "") != "dumb"
    )


class Reporter:
    def __init__(self, quiet: bool, total_images: int) -> None:
        self.quiet = quiet
        self.total_images = total_images
        self._progress: Any = None
        self._image_task: Any = None
        self._steps_task: Any = None
        self.done = 0
        self.started = time.monotonic()

    def info(self, message: str) -> None:
        if self.quiet:
            return
        if self._progress is not None:
            self._progress.console.print(message, markup=False, highlight=False)
        else:
            say(message)

    def start(self) -> None:
        self.started = time.monotonic()
        if self.quiet or not wants_live_display():
            return

        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            RateColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        self._image_task = self._progress.add_task("images", total=self.total_images)
        self._steps_task = self._progress.add_task("steps", total=1)
        self._progress.start()

    def image_started(self) -> None:
        if self._progress is not None:
            self._progress.reset(self._steps_task)

    def step_done(self, done: int, total: int) -> None:
        """`total` counts the scheduler's timesteps: Heun takes two per step, PLMS one extra."""
        if self._progress is not None:
            self._progress.update(self._steps_task, completed=done, total=total)

    def image_done(self, path: str, seconds: float) -> None:
        self._count_image()
        self.info(f"[{self.done}/{self.total_images}] {path} ({seconds:.1f} s){self._eta()}")

    def failure(self, message: str) -> None:
        """A failed image (--keep-going): shown even with --quiet."""
        self._count_image()
        line = f"txt2img: failed: {message}"
        if self._progress is not None:
            self._progress.console.print(line, markup=False, highlight=False)
        else:
            say(line)

    def _count_image(self) -> None:
        self.done += 1
        if self._progress is not None:
            self._progress.advance(self._image_task)

    def _eta(self) -> str:
        elapsed = time.monotonic() - self.started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        left = self.total_images - self.done
        if not (left and rate):
            return ""
        return f", {rate:.2f} images/s, about {left / rate:.0f} s left"

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
