"""sha256 of model files, each hashed once: A1111's `Model hash` (its first 10 hex digits)
names a checkpoint on Civitai and similar sites, and hashing a 7 GB file on every run is not
acceptable.

The cache is a JSON file in the user cache folder ($XDG_CACHE_HOME/txt2img, else
~/.cache/txt2img), keyed by absolute path and valid while the file's size and modification
time are unchanged. Two runs may write it at once: each holds an flock on a lock file while
it reads, merges and replaces the cache (written to a temporary file, then renamed).

Pure Python: no torch here.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

from ..errors import Txt2ImgError
from .weights import WeightsFormat, sniff

BLOCK = 1 << 20


def cache_file() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "txt2img" / "hashes.json"


def file_sha256(path: Path, after_header: bool = False) -> str:
    """The file's sha256 (hex), from the cache when the file is unchanged; with
    `after_header`, of what follows a safetensors file's header (A1111's LoRA hash)."""
    path = path.resolve()
    cached = cached_sha256(path, after_header)
    if cached is not None:
        return cached
    key, stamp = _key(path, after_header)
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        if after_header:
            handle.seek(8 + int.from_bytes(handle.read(8), "little"))
        for block in iter(lambda: handle.read(BLOCK), b""):
            digest.update(block)
    _store(key, {"stamp": stamp, "sha256": digest.hexdigest()})
    return digest.hexdigest()


def cached_sha256(path: Path, after_header: bool = False) -> str | None:
    """The file's sha256 if the cache has it for the file as it is now, else None
    (nothing is read but the cache)."""
    key, stamp = _key(path.resolve(), after_header)
    cached = _read().get(key)
    if (
        isinstance(cached, dict)
        and cached.get("stamp") == stamp
        and isinstance(cached.get("sha256"), str)
        and re.fullmatch(r"[0-9a-f]{64}", cached["sha256"])
    ):
        return cached["sha256"]
    return None


def _key(path: Path, after_header: bool) -> tuple[str, list[int]]:
    stat = path.stat()
    return str(path) + ("#tensors" if after_header else ""), [stat.st_size, stat.st_mtime_ns]


def model_hash(path: Path) -> str:
    """A1111's `Model hash` of a single-file checkpoint (Civitai's "AutoV2")."""
    return file_sha256(path)[:10]


def lora_hash(path: Path) -> str:
    """A1111's `Lora hashes` entry: the tensor data of a safetensors file ("AutoV3"), else
    the whole file, 12 hex digits. The format is told from the bytes, as for loading."""
    try:
        safetensors = sniff(path) is WeightsFormat.safetensors
    except Txt2ImgError:  # neither format: hashed whole, and refused if it is loaded
        safetensors = False
    return file_sha256(path, after_header=safetensors)[:12]


def _read() -> dict:
    try:
        data = json.loads(cache_file().read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


def _store(key: str, entry: dict) -> None:
    """Merge one entry into the cache; a cache that cannot be written is no error (the
    file is hashed again next time)."""
    target = cache_file()
    with contextlib.suppress(OSError), _locked(target.with_suffix(".lock")):
        data = _read()
        data[key] = entry
        temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        try:
            temporary.write_text(json.dumps(data, sort_keys=True), encoding="utf-8")
            os.replace(temporary, target)
        finally:
            temporary.unlink(missing_ok=True)


@contextlib.contextmanager
def _locked(lock: Path) -> Iterator[None]:
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
