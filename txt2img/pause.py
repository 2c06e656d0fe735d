"""A pause point for tests of signals and pipes, so they never race the child process.

With `TXT2IMG_TEST_PAUSE=POINT` set, the process writes `txt2img: paused at POINT` on
stderr when it reaches that point, and waits there until a byte (or end of file) arrives
on the file descriptor named by `TXT2IMG_TEST_PAUSE_FD`, or a signal ends it. Points are
`step:INDEX:STEP` (the pipeline call drawing image INDEX has finished step STEP),
`write:NAME` (image NAME is written to its temporary file, not yet published) and
`parse:ROUTE` (`txt2img serve` is reading a request's body for ROUTE, off its event loop). Unset,
`pause_at` costs one dictionary look-up.
"""

from __future__ import annotations

import os

from .errors import say


def pause_at(point: str) -> None:
    if os.environ.get("TXT2IMG_TEST_PAUSE") != point:
        return
    say(f"txt2img: paused at {point}")
    os.read(int(os.environ["TXT2IMG_TEST_PAUSE_FD"]), 1)
