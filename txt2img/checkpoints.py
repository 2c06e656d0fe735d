"""What a weights file really is, told from its first bytes, never from its name.

Pickle-based files (.ckpt, .pt, .bin, or anything else that is not safetensors) can run
code when loaded. They are refused unless the user passes --allow-pickle, and even then
they are read only by torch's `weights_only` unpickler.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path

from .errors import ModelError, UnsafeCheckpointError

ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default container, a zip of pickles
PICKLE_PROTOCOL_2_PLUS = b"\x80"  # torch.save(_use_new_zipfile_serialization=False)


class WeightsFormat(str, Enum):
    safetensors = "safetensors"
    pickle = "pickle"


def sniff(path: Path) -> WeightsFormat:
    """safetensors: an 8-byte little-endian header length, then a JSON header ('{')
    that fits in the file. Zip and raw pickles are pickle-based; anything else is refused."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        head = handle.read(9)
    if len(head) == 9 and head[8:9] == b"{":
        header_length = int.from_bytes(head[:8], "little")
        if 8 + header_length <= size:
            return WeightsFormat.safetensors
        raise ModelError(
            f"{path} is a truncated or damaged safetensors file",
            "download or copy it again",
        )
    if head.startswith(ZIP_MAGIC) or head.startswith(PICKLE_PROTOCOL_2_PLUS):
        return WeightsFormat.pickle
    raise UnsafeCheckpointError(
        f"{path} is neither a safetensors nor a PyTorch weights file",
        "txt2img loads safetensors files (and, with --allow-pickle, PyTorch .ckpt/.pt/.bin)",
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
