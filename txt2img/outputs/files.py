"""Where images go: safe file names, no-clobber atomic PNG writes, paths on stdout."""

from __future__ import annotations

import errno
import fcntl
import io
import os
import re
import sys
import unicodedata
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from ..errors import OutputError, StdoutClosed
from ..pause import pause_at
from ..records.write import json_line, text_chunks
from ..settings import Existing

if TYPE_CHECKING:
    from ..jobs import ImageJob
    from ..settings import Settings

MAX_SLUG_LENGTH = 60


def slugify(prompt: str) -> str:
    """A short, ASCII, lower-case name part: no separators, dots or control characters."""
    ascii_text = unicodedata.normalize("NFKD", prompt).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")
    return slug[:MAX_SLUG_LENGTH].rstrip("-") or "image"


def image_file_name(index: int, seed: int, prompt: str) -> str:
    return f"{index:05d}-{seed}-{slugify(prompt)}.png"


def taken_names(folder: Path, file_names: list[str]) -> set[str]:
    """Which of the run's file names are taken: by a file, a folder or a link, even a
    dangling one (`lexists`), since publishing under any of them would fail or replace
    it. Nothing is created: the folder appears with the first image."""
    return {name for name in file_names if os.path.lexists(folder / name)}


def remove_stale_temporaries(folder: Path, file_names: list[str]) -> None:
    """Remove the temporary files of the run's images that a killed run left behind
    (SIGKILL, power loss). A writer holds an exclusive lock on its temporary file until
    the image is published, so a temporary file that can be locked has no live writer,
    whatever host, container or PID made it."""
    if not folder.is_dir():
        return
    wanted = set(file_names)
    for entry in os.scandir(folder):  # one listing, however many images the run has
        match = _TEMPORARY.fullmatch(entry.name)
        if match is None or match[1] not in wanted:
            continue
        with suppress(OSError), open(entry.path, "rb") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # a live run is writing it
            os.unlink(entry.path)


_TEMPORARY = re.compile(r"\.(.+)\.[0-9]+\.tmp")  # what `temporary_name` makes of NAME


def temporary_name(target: Path) -> Path:
    """Hidden, in the image's folder, so that publishing it is a link or a rename on one
    file system."""
    return target.with_name(f".{target.name}.{os.getpid()}.tmp")


def refuse_existing(folder: Path, taken: list[str]) -> OutputError:
    more = f" and {len(taken) - 1} more" if len(taken) > 1 else ""
    return OutputError(
        f"{folder / taken[0]}{more} already exists and is never overwritten",
        "--resume skips finished images, --overwrite replaces them, or choose another -o",
    )


def write_png(
    image: Image.Image, target: Path, text_chunks: dict[str, str], replace: bool = False
) -> None:
    """Write `image` to `target` whole or not at all; replace a file only if `replace`.

    The PNG goes to a hidden temporary file in the same folder first; a hard link then
    publishes it under its name, which fails if the name is taken (or, with `replace`,
    an atomic rename swaps it in). The temporary file stays locked until then (see
    `remove_stale_temporaries`). Ctrl-C, SIGTERM or SIGHUP at any point leave either no
    file or a complete one; after SIGKILL the temporary file stays until the next run for
    that image removes it.
    """
    info = PngInfo()
    for key, value in text_chunks.items():
        info.add_text(key, value)
    make_output_dir(target.parent)
    temporary = temporary_name(target)
    try:
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(descriptor, "wb") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            image.save(handle, format="PNG", pnginfo=info)
            handle.flush()
            os.fsync(handle.fileno())
            pause_at(f"write:{target.name}")
            if replace:
                os.replace(temporary, target)
            else:
                _publish(temporary, target)
    except FileExistsError as exc:
        raise OutputError(f"{target} already exists and is never overwritten") from exc
    except OSError as exc:
        raise OutputError(f"cannot write {target}: {exc.strerror or exc}") from exc
    finally:
        temporary.unlink(missing_ok=True)


def make_output_dir(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(
            f"cannot create --output-dir {folder}: {exc.strerror or exc}",
            "check the path (a dangling link, a file in the way?) or choose another -o",
        ) from exc


def _publish(temporary: Path, target: Path) -> None:
    try:
        os.link(temporary, target)
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOSYS, errno.EXDEV):
            raise
        # Filesystems without hard links (FAT, some network shares): check, then rename.
        if target.exists():
            raise FileExistsError(errno.EEXIST, "exists", str(target)) from exc
        os.rename(temporary, target)


def check_stdout() -> None:
    """Refuse to start when stdout is closed (`>&-`): the run's results could not be
    told, and the first file it opened would take descriptor 1."""
    stream = sys.stdout
    try:
        if stream is None:
            raise OSError(errno.EBADF, "closed")
        os.fstat(stream.fileno())
    except (AttributeError, ValueError, io.UnsupportedOperation):
        return  # not a real file (a test runner's buffer): nothing to check
    except OSError as exc:
        raise OutputError(
            "standard output is closed; the images' paths could not be printed",
            "run without >&-, or send stdout to a file or /dev/null",
        ) from exc


def emit(line: str) -> None:
    """Print one result line on stdout right away."""
    try:
        try:
            sys.stdout.write(line + "\n")
        except UnicodeEncodeError:  # a path whose bytes are not UTF-8: the bytes as they are
            sys.stdout.buffer.write(os.fsencode(line) + b"\n")
        sys.stdout.flush()
    except BrokenPipeError as exc:
        raise StdoutClosed from exc
    except OSError as exc:  # /dev/full, a full disk, an I/O error
        raise OutputError(
            f"cannot write to standard output: {exc.strerror or exc}",
            "the images written so far are complete; free space or send stdout elsewhere",
        ) from exc


class Results:
    """stdout: one path per written image, or with --json one object per image,
    including those skipped (--resume) or failed (--keep-going), all with the same keys
    (`records.write.JSON_KEYS`)."""

    def __init__(self, json_lines: bool) -> None:
        self.json_lines = json_lines

    def written(self, path: Path, job: Any, record: dict[str, Any], seconds: float) -> None:
        if self.json_lines:
            emit(json_line("ok", str(path), job, **record, seconds=round(seconds, 3)))
        else:
            emit(str(path))

    def skipped(self, path: Path, job: Any) -> None:
        if self.json_lines:
            emit(json_line("skipped", str(path), job))

    def failed(self, path: Path, job: Any, error: str) -> None:
        if self.json_lines:
            emit(json_line("failed", str(path), job, error=error))


class FileSink:
    """A local run: PNGs written safely into --output-dir, results on stdout."""

    def __init__(self, settings: Settings, taken: set[str], results: Results) -> None:
        self.settings, self.taken, self.results = settings, taken, results

    def wants_image(self, job: ImageJob) -> bool:
        """Under --resume an image already there is kept (only its strip was missing)."""
        return job.file_name not in self.taken or self.settings.existing is Existing.replace

    def image(self, job: ImageJob, image: Any, record: dict[str, Any], seconds: float) -> str:
        target = self.settings.output_dir / job.file_name
        replace = self.settings.existing is Existing.replace
        write_png(image, target, text_chunks(record), replace=replace)
        self.results.written(target, job, record, seconds)
        return str(target)

    def strip(self, job: ImageJob, sheet: Any, note: str) -> None:
        # With --resume the image is being drawn again, so its strip may be replaced too.
        replace = self.settings.existing is not Existing.refuse
        write_png(sheet, self.settings.output_dir / job.strip_name, {"txt2img-steps": note},
                  replace=replace)  # fmt: skip

    def skipped(self, job: ImageJob) -> None:
        self.results.skipped(self.settings.output_dir / job.file_name, job)

    def failed(self, job: ImageJob, message: str) -> None:
        self.results.failed(self.settings.output_dir / job.file_name, job, message)
