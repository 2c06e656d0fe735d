"""What a weights file really is, told from its first bytes, never from its name.

Pickle-based files (.ckpt, .pt, .bin, or anything else that is not safetensors) can run
code when loaded. They are refused unless the user passes --allow-pickle, and even then
they are read only by `load_pickle`, through torch's `weights_only` unpickler, after
`sniff` has bounded what the file may inflate to. torch is imported only there.
"""

from __future__ import annotations

import os
import pickle
import stat
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Any, BinaryIO

from ..errors import ModelError, UnsafeCheckpointError

ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default container, a zip of pickles
PICKLE_PROTOCOL_2_PLUS = b"\x80"  # torch.save(_use_new_zipfile_serialization=False)


class WeightsFormat(StrEnum):
    safetensors = "safetensors"
    pickle = "pickle"


def open_regular(path: Path) -> BinaryIO:
    """`path` opened for reading if it is a regular file (after links), else OSError.
    Opened without blocking, so a FIFO (or a link to /dev/urandom) is refused, not read
    forever."""
    if not stat.S_ISREG(os.stat(path).st_mode):  # a device is not even opened
        raise OSError(f"{path} is not a regular file")
    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    if not stat.S_ISREG(os.fstat(descriptor).st_mode):  # (replaced meanwhile)
        os.close(descriptor)
        raise OSError(f"{path} is not a regular file")
    return os.fdopen(descriptor, "rb")


def sniff(path: Path) -> WeightsFormat:
    """safetensors: an 8-byte little-endian header length, then a JSON header ('{')
    that fits in the file. Zip and raw pickles are pickle-based; anything else is refused."""
    try:
        with open_regular(path) as handle:
            size = os.fstat(handle.fileno()).st_size
            head = handle.read(9)
    except OSError as exc:
        raise ModelError(f"cannot read {path}: {exc.strerror or exc}", "check the path") from None
    if len(head) == 9 and head[8:9] == b"{":
        header_length = int.from_bytes(head[:8], "little")
        if 8 + header_length <= size:
            return WeightsFormat.safetensors
        raise ModelError(
            f"{path} is a truncated or damaged safetensors file",
            "download or copy it again",
        )
    if head.startswith(ZIP_MAGIC):
        _check_zip_size(path, size)
        return WeightsFormat.pickle
    if head.startswith(PICKLE_PROTOCOL_2_PLUS):
        return WeightsFormat.pickle
    raise UnsafeCheckpointError(
        f"{path} is neither a safetensors nor a PyTorch weights file",
        "txt2img loads safetensors files (and, with --allow-pickle, PyTorch .ckpt/.pt/.bin)",
    )


# torch.save stores its zip members uncompressed; a little room for the zip's own records.
_ZIP_SLACK = 1 << 20


def _check_zip_size(path: Path, size: int) -> None:
    """A zip whose members inflate past the file's own size is no torch.save file (a
    zip bomb is a few kilobytes that inflate to gigabytes): refused before any reading."""
    try:
        with zipfile.ZipFile(path) as archive:
            inflated = sum(member.file_size for member in archive.infolist())
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise ModelError(
            f"{path} is a damaged zip file: {exc}", "download or copy it again"
        ) from None
    if inflated > size + _ZIP_SLACK:
        raise UnsafeCheckpointError(
            f"{path} would inflate from {size} to {inflated} bytes; torch.save files never "
            "do, so it is refused",
            "use the original file, or convert it to safetensors with a tool you trust",
        )


def check_weights_file(path: Path, allow_pickle: bool) -> WeightsFormat:
    """Return the format of a weights file that may be loaded, or raise."""
    if not path.is_file() or not os.access(path, os.R_OK):
        raise ModelError(f"cannot read {path}", "check the path and its permissions")
    weights_format = sniff(path)
    if weights_format is WeightsFormat.pickle and not allow_pickle:
        raise UnsafeCheckpointError(
            f"{path} is a pickle-based file, which can run code when it is loaded; refused",
            "convert it to safetensors, or pass --allow-pickle if you trust its source "
            "(it is then read with torch's weights-only loader)",
        )
    return weights_format


def load_pickle(path: Path) -> dict[str, Any]:
    """The tensors of a pickle-based weights file that `check_weights_file` let in,
    through torch's weights-only unpickler (which never creates arbitrary objects); a
    zip file is memory-mapped, a legacy one read. A `state_dict` wrapper is unwrapped."""
    import torch

    with path.open("rb") as handle:
        is_zip = handle.read(len(ZIP_MAGIC)) == ZIP_MAGIC  # as `sniff` tells it
    if is_zip:
        _check_zip_size(path, path.stat().st_size)
    try:
        # Under a pickle's name: torch.load reads a path ending in .safetensors as one.
        with named_for_its_format(path, WeightsFormat.pickle) as named:
            state = torch.load(named, map_location="cpu", weights_only=True, mmap=is_zip)
    except pickle.UnpicklingError as exc:
        raise refused_pickle(exc, str(path)) from exc
    except Exception as exc:
        if isinstance(exc, MemoryError) or "memory" in str(exc).lower():
            raise
        raise ModelError(
            f"{path} is a damaged PyTorch file: {str(exc).splitlines()[0] if str(exc) else ''}",
            "download or copy it again",
        ) from exc
    while isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ModelError(f"{path} holds no weights (a {type(state).__name__})", "check the file")
    return state


@contextmanager
def named_for_its_format(path: Path, weights_format: WeightsFormat) -> Iterator[Path]:
    """The file under a name whose extension matches its bytes (a link in a temporary
    folder): diffusers picks its loader from the extension, and would otherwise
    unpickle a safetensors file named .ckpt or try safetensors on a renamed pickle."""
    suffix = ".safetensors" if weights_format is WeightsFormat.safetensors else ".ckpt"
    with tempfile.TemporaryDirectory() as folder:
        named = Path(folder) / f"{path.stem}{suffix}"
        named.symlink_to(path.resolve())
        yield named


def refused_pickle(exc: BaseException, what: str) -> UnsafeCheckpointError | None:
    """torch's weights-only loader refusing a file (anywhere in the exception chain)
    means the file holds more than tensors: report it as unsafe, not as damaged."""
    while exc is not None:
        if isinstance(exc, pickle.UnpicklingError):
            return UnsafeCheckpointError(
                f"{what} holds Python objects besides tensors, which the weights-only "
                "loader refuses to create",
                "convert it to safetensors with a tool you trust",
            )
        exc = exc.__cause__ or exc.__context__
    return None
