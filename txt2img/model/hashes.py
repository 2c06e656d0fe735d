"""sha256 of model files, each hashed once: A1111's `Model hash` (its first 10 hex digits)
names a checkpoint on Civitai and similar sites, and hashing a 7 GB file on every run is not
acceptable.

The cache is a JSON file in the user cache folder ($XDG_CACHE_HOME/txt2img, else
~/.cache/txt2img), keyed by absolute path and valid while the file's size and modification
time are unchanged. A process reads it once and writes it once (`flush`, at the end of a
server's model search and at exit), however many files it hashes. Two runs may write it at once:
each holds an flock on a lock file while it reads, merges and replaces the cache (written
to a temporary file, then renamed); entries for files that are gone or changed are pruned
then, and the cache is bounded. Only regular files are hashed, and the cache and its lock
are opened without blocking, so a FIFO or a device in their place hangs nothing.

Pure Python: no torch here.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import hashlib
import json
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path

from ..errors import Txt2ImgError
from .weights import WeightsFormat, open_regular, sniff

BLOCK = 1 << 20
MAX_CACHE_BYTES = 16 << 20  # a larger cache is not read (and is rewritten, pruned)
MAX_ENTRIES = 50_000  # beyond this, the oldest entries are dropped when it is written
SHA256_HEX = re.compile(r"[0-9a-f]{64}")


def cache_file() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "txt2img" / "hashes.json"


def file_sha256(path: Path, after_header: bool = False) -> str:
    """The file's sha256 (hex), from the cache when the file is unchanged; with
    `after_header`, of what follows a safetensors file's header (A1111's LoRA hash).
    OSError for anything but a regular file."""
    path = path.resolve()
    cached = cached_sha256(path, after_header)
    if cached is not None:
        return cached
    key, stamp = _key(path, after_header)
    digest = hashlib.sha256()
    with open_regular(path) as handle:
        if after_header:
            handle.seek(8 + int.from_bytes(handle.read(8), "little"))
        for block in iter(lambda: handle.read(BLOCK), b""):
            digest.update(block)
    _CACHE.add(key, {"stamp": stamp, "sha256": digest.hexdigest()})
    return digest.hexdigest()


def cached_sha256(path: Path, after_header: bool = False) -> str | None:
    """The file's sha256 if the cache has it for the file as it is now, else None
    (nothing is read but the cache)."""
    key, stamp = _key(path.resolve(), after_header)
    return _valid(_CACHE.entries().get(key), stamp)


def _valid(entry: object, stamp: list[int]) -> str | None:
    if isinstance(entry, dict) and entry.get("stamp") == stamp:
        digest = entry.get("sha256")
        if isinstance(digest, str) and SHA256_HEX.fullmatch(digest):
            return digest
    return None


def _key(path: Path, after_header: bool) -> tuple[str, list[int]]:
    return str(path) + ("#tensors" if after_header else ""), _stamp(path.stat())


def _stamp(status: os.stat_result) -> list[int]:
    return [status.st_size, status.st_mtime_ns]


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


def flush() -> None:
    """Write the entries hashed since the last flush (nothing when there are none)."""
    _CACHE.flush()


class _Cache:
    """The cache file as this process knows it: read on first use (again only when
    XDG_CACHE_HOME points elsewhere), with the entries added since, unwritten."""

    def __init__(self) -> None:
        self.path: Path | None = None
        self.known: dict = {}
        self.added: dict = {}
        atexit.register(self.flush)

    def entries(self) -> dict:
        if self.path != cache_file():
            self.flush()
            self.path = cache_file()
            self.known = _read(self.path)
        return self.known

    def add(self, key: str, entry: dict) -> None:
        self.entries()[key] = entry
        self.added[key] = entry

    def flush(self) -> None:
        """Merge the added entries into the file as it is now; a cache that cannot be
        written is no error (the files are hashed again next time)."""
        if not self.added or self.path is None:
            return
        added, self.added = self.added, {}
        with contextlib.suppress(OSError), _locked(self.path.with_suffix(".lock")):
            data = _pruned({**_read(self.path), **added})
            temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            try:
                temporary.write_text(json.dumps(data), encoding="utf-8")  # oldest first
                os.replace(temporary, self.path)
            finally:
                temporary.unlink(missing_ok=True)


def _pruned(data: dict) -> dict:
    """The entries whose file is still there, unchanged; the newest MAX_ENTRIES."""
    kept = {}
    for key, entry in data.items():
        try:
            status = os.stat(key.removesuffix("#tensors"))
        except (OSError, ValueError):
            continue
        if stat.S_ISREG(status.st_mode) and _valid(entry, _stamp(status)):
            kept[key] = entry
    return dict(list(kept.items())[-MAX_ENTRIES:])


def _read(path: Path) -> dict:
    try:
        with open_regular(path) as handle:
            if os.fstat(handle.fileno()).st_size > MAX_CACHE_BYTES:
                return {}
            data = json.loads(handle.read(MAX_CACHE_BYTES).decode("utf-8"))
    except (OSError, ValueError, RecursionError):
        return {}
    return data if isinstance(data, dict) else {}


@contextlib.contextmanager
def _locked(lock: Path) -> Iterator[None]:
    """An flock on `lock`, opened without blocking: a lock that is not a regular file
    (a FIFO someone put there) is an OSError, so the cache is not written."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NONBLOCK, 0o644)
    try:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            raise OSError(f"{lock} is not a regular file")
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(descriptor, fcntl.LOCK_UN)
    finally:
        os.close(descriptor)


_CACHE = _Cache()
