"""Every failure a user can meet, its one-line message, and its exit code.

`handle_errors` is the one place where exceptions become messages and exit codes.
Set TXT2IMG_DEBUG=1 to see the full traceback instead.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from enum import IntEnum
from typing import Any


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
    SERVER = 9
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


class ServerError(Txt2ImgError):
    """`txt2img --server URL`: the server cannot be reached, or answered in a way a
    txt2img server never does."""

    exit_code = ExitCode.SERVER


class RemoteError(Txt2ImgError):
    """A failure the server reported for a `--server` run, with the exit code the same
    failure has in a local run."""

    def __init__(self, message: str, hint: str, exit_code: int) -> None:
        super().__init__(message, hint)
        # A failure's code, as a local run would give it; anything else (0 included, or a
        # code a server cannot mean: Ctrl-C, a closed stdout here) is the server's.
        remote = set(ExitCode) - {ExitCode.OK, ExitCode.INTERRUPTED, ExitCode.STDOUT_CLOSED}
        self.exit_code = ExitCode(exit_code) if exit_code in remote else ExitCode.SERVER


class StdoutClosed(Exception):
    """The reader of our stdout went away (`txt2img ... | head -1`)."""


class Terminated(BaseException):
    """SIGTERM or SIGHUP arrived (docker stop, systemd, a batch scheduler, a closed
    terminal). Raised in the main thread like KeyboardInterrupt, so every `finally`
    runs and no temporary file is left."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


_HANDLED_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name)
)


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated(signum)


def debug_enabled() -> bool:
    return os.environ.get("TXT2IMG_DEBUG", "") not in ("", "0")


# A library message's f-string field that was never filled in, like
# "{input_embeddings.shape[-1]}": code, not words, so it is left out.
_UNFILLED = re.compile(r"\s*\{[A-Za-z_][\w.]*(?:\[[^\]{}\s]*\])*\}")


def first_line(exc: BaseException) -> str:
    """The gist of a library's message: its first line, without terminal codes or
    unfilled {placeholders}, short."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()
    line = (text.splitlines() or [type(exc).__name__])[0]
    if not isinstance(exc, OSError):  # an OSError's {braces} are a file's name
        line = _UNFILLED.sub("", line)
    return line if len(line) <= 200 else line[:200] + "..."


def fail(message: str) -> None:
    say(f"txt2img: error: {message}")


OUT_OF_MEMORY_MESSAGE = (
    "the device ran out of memory (try --low-vram, a smaller --width/--height, or --batch-size 1)"
)
_OUT_OF_MEMORY = ("out of memory", "can't allocate memory", "cannot allocate memory")


def is_out_of_memory(exc: BaseException) -> bool:
    """torch.OutOfMemoryError for CUDA; MPS reports a RuntimeError ("out of memory"),
    the CPU allocator another ("DefaultCPUAllocator: can't allocate memory"), and
    Python a MemoryError. Matched by name so this module never imports torch."""
    name = type(exc).__name__
    text = str(exc).lower()
    return (
        name == "OutOfMemoryError"
        or isinstance(exc, MemoryError)
        or (isinstance(exc, RuntimeError) and any(mark in text for mark in _OUT_OF_MEMORY))
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
    if isinstance(exc, Terminated):
        name = signal.Signals(exc.signum).name
        fail(f"stopped by {name}; finished images are complete, the one in progress was discarded")
        return 128 + exc.signum
    if isinstance(exc, (StdoutClosed, BrokenPipeError)):
        with suppress(OSError, ValueError):  # stdout may not be a real file (test runners)
            _silence_stdout()
        return int(ExitCode.STDOUT_CLOSED)
    if is_out_of_memory(exc):
        fail(OUT_OF_MEMORY_MESSAGE)
        return int(ExitCode.OUT_OF_MEMORY)
    fail(
        f"unexpected {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} "
        "(run again with TXT2IMG_DEBUG=1 for the traceback and report it)"
    )
    return int(ExitCode.INTERNAL)


@contextmanager
def handle_errors() -> Iterator[None]:
    """Turn any exception into a one-line report and `SystemExit` with its exit code;
    SIGTERM and SIGHUP end the run as Ctrl-C does (exit 128 + the signal's number)."""
    previous = _handle_signals()
    try:
        yield
    except SystemExit:
        raise
    except BaseException as exc:
        if debug_enabled() and not isinstance(exc, StdoutClosed):
            raise
        raise SystemExit(exit_code_for(exc)) from None
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _handle_signals() -> dict[int, Any]:
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {signum: signal.signal(signum, _raise_terminated) for signum in _HANDLED_SIGNALS}


def say(line: str) -> None:
    """One line on stderr, in one write: lines from `txt2img serve`'s threads (the web
    server's and the drawing thread's) never run into each other, as `print`'s two
    writes (the text, then the newline) can."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()
