"""Every failure a user can meet, its one-line message, and its exit code.

`handle_errors` is the one place where exceptions become messages and exit codes.
Set TXT2IMG_DEBUG=1 to see the full traceback instead.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    INTERNAL = 1
    USAGE = 2
    MODEL = 3
    UNSAFE_CHECKPOINT = 4
    OUT_OF_MEMORY = 5
    BAD_IMAGE = 6
    OUTPUT = 7
    PARTIAL = 8
    INTERRUPTED = 130
    STDOUT_CLOSED = 141


class Txt2ImgError(Exception):
    """A failure with a message for the user, a hint on what to do, and an exit code."""

    exit_code = ExitCode.INTERNAL

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def one_line(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class UsageError(Txt2ImgError):
    exit_code = ExitCode.USAGE


class ModelError(Txt2ImgError):
    exit_code = ExitCode.MODEL


class UnsafeCheckpointError(Txt2ImgError):
    exit_code = ExitCode.UNSAFE_CHECKPOINT


class OutputError(Txt2ImgError):
    exit_code = ExitCode.OUTPUT


class BadImageError(Txt2ImgError):
    exit_code = ExitCode.BAD_IMAGE


class PartialFailure(Txt2ImgError):
    exit_code = ExitCode.PARTIAL


class StdoutClosed(Exception):
    """The reader of our stdout went away (`txt2img ... | head -1`)."""


def debug_enabled() -> bool:
    return os.environ.get("TXT2IMG_DEBUG", "") not in ("", "0")


def fail(message: str) -> None:
    print(f"txt2img: error: {message}", file=sys.stderr, flush=True)


def is_out_of_memory(exc: BaseException) -> bool:
    # torch.OutOfMemoryError for CUDA; MPS reports a RuntimeError. Matched by name so
    # this module never imports torch.
    name = type(exc).__name__
    return name == "OutOfMemoryError" or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
    )


def _silence_stdout() -> None:
    """After EPIPE, point stdout at /dev/null so the interpreter's final flush is quiet."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def exit_code_for(exc: BaseException) -> int:
    """Report `exc` on stderr in one line and return the process exit code."""
    if isinstance(exc, Txt2ImgError):
        fail(exc.one_line())
        return int(exc.exit_code)
    if isinstance(exc, KeyboardInterrupt):
        fail("interrupted; finished images are complete, the one in progress was discarded")
        return int(ExitCode.INTERRUPTED)
    if isinstance(exc, (StdoutClosed, BrokenPipeError)):
        with suppress(OSError, ValueError):  # stdout may not be a real file (test runners)
            _silence_stdout()
        return int(ExitCode.STDOUT_CLOSED)
    if is_out_of_memory(exc):
        fail(
            "the device ran out of memory "
            "(try --low-vram, a smaller --width/--height, or --batch-size 1)"
        )
        return int(ExitCode.OUT_OF_MEMORY)
    fail(
        f"unexpected {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} "
        "(run again with TXT2IMG_DEBUG=1 for the traceback and report it)"
    )
    return int(ExitCode.INTERNAL)


@contextmanager
def handle_errors() -> Iterator[None]:
    """Turn any exception into a one-line report and `SystemExit` with its exit code."""
    try:
        yield
    except SystemExit:
        raise
    except BaseException as exc:
        if debug_enabled() and not isinstance(exc, StdoutClosed):
            raise
        raise SystemExit(exit_code_for(exc)) from None
