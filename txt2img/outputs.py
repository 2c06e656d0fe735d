"""Where images go: safe file names, no-clobber atomic PNG writes, paths on stdout."""

from __future__ import annotations

import errno
import json
import os
import re
import sys
import unicodedata
from pathlib import Path
from typing import Any

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from .errors import OutputError, StdoutClosed

MAX_SLUG_LENGTH = 60


def slugify(prompt: str) -> str:
    """A short, ASCII, lower-case name part: no separators, dots or control characters."""
    ascii_text = unicodedata.normalize("NFKD", prompt).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")
    return slug[:MAX_SLUG_LENGTH].rstrip("-") or "image"


def image_file_name(index: int, seed: int, prompt: str) -> str:
    return f"{index:05d}-{seed}-{slugify(prompt)}.png"


def prepare_output_dir(folder: Path, file_names: list[str]) -> set[str]:
    """Create the folder and return which of the run's file names are already taken."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create --output-dir {folder}: {exc.strerror}") from exc
    return {name for name in file_names if (folder / name).exists()}


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
    an atomic rename swaps it in). A crash or Ctrl-C at any point leaves either no file
    or a complete one.
    """
    info = PngInfo()
    for key, value in text_chunks.items():
        info.add_text(key, value)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(descriptor, "wb") as handle:
            image.save(handle, format="PNG", pnginfo=info)
            handle.flush()
            os.fsync(handle.fileno())
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


def emit(line: str) -> None:
    """Print one result line on stdout right away."""
    try:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
    except BrokenPipeError as exc:
        raise StdoutClosed from exc


class Results:
    """stdout: one path per written image, or with --json one object per image,
    including those skipped (--resume) or failed (--keep-going)."""

    def __init__(self, json_lines: bool) -> None:
        self.json_lines = json_lines

    def written(self, path: Path, details: dict[str, Any]) -> None:
        if self.json_lines:
            emit(json.dumps({"status": "ok", "path": str(path), **details}, ensure_ascii=False))
        else:
            emit(str(path))

    def skipped(self, path: Path, details: dict[str, Any]) -> None:
        if self.json_lines:
            emit(
                json.dumps({"status": "skipped", "path": str(path), **details}, ensure_ascii=False)
            )

    def failed(self, error: str, details: dict[str, Any]) -> None:
        if self.json_lines:
            emit(json.dumps({"status": "failed", "error": error, **details}, ensure_ascii=False))
