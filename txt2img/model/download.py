"""A Hub model's download, visible and resumable.

Before anything is fetched, stderr says what is fetched, its size and where the cache is;
then progress with speed and time left (a live bar on a terminal, a line now and then
otherwise, nothing with --quiet). A download cut short resumes where it stopped on the
next run, and says so.

huggingface_hub downloads each file to a temporary name that dies with its process, so a
cut download starts over. txt2img fetches a repository's files itself, into the Hugging
Face cache's own layout (`blobs/<etag>`, `snapshots/<commit>/<path>`, `refs/main`), where
diffusers then finds them: a partial file keeps a fixed name beside its blob, and a large
(LFS) file's sha256 is checked before it takes its place. The files are the ones diffusers
loads: model_index.json, and per component its configs and its safetensors weights (the
fp16 variant's where asked for and present).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import importlib
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ModelError, OutputError, Txt2ImgError, first_line, say
from ..outputs.progress import wants_live_display
from .hashes import SHA256_HEX
from .source import hub_storage, in_hub_cache

CHUNK = 1 << 20
ATTEMPTS = 3  # per file, while each attempt brings new bytes; then the next run resumes
_WEIGHTS = (".safetensors", ".bin", ".ckpt", ".pt", ".pth", ".msgpack", ".h5", ".onnx", ".pb")
_SHA256 = SHA256_HEX  # a large (LFS) file's ETag: its sha256
_GIT_SHA1 = re.compile(r"[0-9a-f]{40}")  # a small file's ETag: its git blob id
_COMMIT = _GIT_SHA1


@dataclass(frozen=True)
class RepoFile:
    path: str  # in the repository
    size: int


def fetch_model(repo: str, fp16: bool, safety_checker: bool, quiet: bool) -> bool | None:
    """Download what diffusers loads of `repo` into the Hugging Face cache, unless it is
    there; True if the fp16 variant is among it. None offline (HF_HUB_OFFLINE): the
    cache is all there is."""
    from huggingface_hub import HfApi, constants

    if constants.HF_HUB_OFFLINE:
        return None
    try:
        info = HfApi().model_info(repo, files_metadata=True)
    except Exception as exc:
        if not in_hub_cache(repo):
            raise hub_error(repo, exc) from exc
        if not quiet:  # as diffusers does: the cached copy, when the Hub cannot be asked
            say(f"txt2img: {hub_error(repo, exc).message}; drawing with the cached copy")
        return None
    try:
        if not (isinstance(info.sha, str) and _COMMIT.fullmatch(info.sha)):
            raise ValueError(f"the Hub gave {repo} no commit id, or a malformed one")
        sizes = {s.rfilename: _size(s) for s in info.siblings or [] if _safe_path(s.rfilename)}
        index = _read_index(repo, info.sha)
        files, variant = chosen_files(sizes, index, fp16, safety_checker)
        missing = [f for f in files if not _cached(repo, info.sha, f.path)]
        if missing:
            _download(repo, info.sha, missing, quiet, Path(constants.HF_HUB_CACHE))
        _write_ref(repo, info.sha)
    except Txt2ImgError:
        raise
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise OutputError(
                f"cannot write {repo} into the Hugging Face cache: {exc.strerror}",
                "free some space (what was downloaded is kept and resumed), or point HF_HOME "
                "at a larger disk",
            ) from None
        raise hub_error(repo, exc) from exc
    except Exception as exc:
        raise hub_error(repo, exc) from exc
    return variant


def _safe_path(name: str) -> bool:
    """A repository file name the cache may hold: relative, without `..`."""
    parts = Path(name).parts
    return bool(parts) and not Path(name).is_absolute() and ".." not in parts


def _size(sibling: Any) -> int:
    lfs = getattr(sibling, "lfs", None)
    return int((lfs.size if lfs else None) or sibling.size or 0)


def _read_index(repo: str, commit: str) -> dict[str, Any]:
    from huggingface_hub import hf_hub_download

    path = hf_hub_download(repo, "model_index.json", revision=commit)
    index = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(index, dict):
        raise ValueError("model_index.json is not a JSON object")
    return index


def chosen_files(
    sizes: dict[str, int], index: dict[str, Any], fp16: bool, safety_checker: bool
) -> tuple[list[RepoFile], bool]:
    """The files diffusers loads from a repository listing `sizes`: model_index.json,
    and in each component folder its configs and its safetensors weights, the fp16
    variant's where `fp16` and the folder has one. Also whether any folder has one."""
    components = [
        name for name, value in index.items()
        if not name.startswith("_") and isinstance(value, list) and None not in value
        and (safety_checker or name != "safety_checker")
    ]  # fmt: skip
    chosen = ["model_index.json"]
    any_variant = False
    for component in components:
        inside = [path for path in sizes if path.startswith(f"{component}/")]
        weights = [p for p in inside if p.endswith(".safetensors")]
        variant = [p for p in weights if ".fp16" in Path(p).name]
        any_variant |= bool(variant)
        chosen += [p for p in inside if not p.endswith(_WEIGHTS)]
        if fp16 and variant:
            chosen += variant
        else:
            chosen += [p for p in weights if Path(p).name.count(".") == 1]
    return [RepoFile(path, sizes.get(path, 0)) for path in chosen if path in sizes], (
        fp16 and any_variant
    )


def _cached(repo: str, commit: str, path: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo, path, revision=commit), str)


def _download(repo: str, commit: str, files: list[RepoFile], quiet: bool, cache: Path) -> None:
    storage = hub_storage(repo)
    total = sum(f.size for f in files)
    partial = sum(p.stat().st_size for p in (storage / "blobs").glob("*.incomplete"))
    if not quiet:
        say(f"txt2img: downloading {repo}: {len(files)} files, {human_bytes(total)}, "
            f"into the Hugging Face cache {cache}")  # fmt: skip
        if partial:
            say(f"txt2img: resuming: {human_bytes(partial)} were downloaded before")
    progress = DownloadProgress(total, quiet)
    try:
        for file in files:
            _fetch_file(repo, commit, file, storage, progress)
    finally:
        progress.close()


def _fetch_file(
    repo: str, commit: str, file: RepoFile, storage: Path, progress: DownloadProgress
) -> None:
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    url = hf_hub_url(repo, file.path, revision=commit)
    meta = get_hf_file_metadata(url)
    etag = meta.etag or ""
    if meta.size is None or not (_SHA256.fullmatch(etag) or _GIT_SHA1.fullmatch(etag)):
        raise ValueError(f"the Hub gave no usable ETag or size for {file.path}")
    blob = storage / "blobs" / etag
    blob.parent.mkdir(parents=True, exist_ok=True)
    part = blob.with_name(blob.name + ".incomplete")
    try:
        with open(part, "ab") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)  # another run fetching the same file
            if not blob.exists():
                if handle.tell() > meta.size:  # not a part of this file: start over
                    handle.seek(0)
                    handle.truncate()
                progress.resumed(handle.tell())
                # The Hub's own address: a redirect to its storage carries no token.
                _receive(url, handle, meta.size, file.path, progress)
                _check_digest(part, etag, meta.size, file.path)
                os.chmod(part, 0o644)
                os.replace(part, blob)
            else:
                progress.resumed(file.size)
    finally:
        if blob.exists():
            part.unlink(missing_ok=True)
    link = storage / "snapshots" / commit / file.path
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.exists():
        link.unlink(missing_ok=True)  # a dangling link
        link.symlink_to(os.path.relpath(blob, link.parent))


def _receive(url: str, handle: Any, size: int, name: str, progress: DownloadProgress) -> None:
    """The rest of the file, from where `handle` ends, in up to ATTEMPTS requests while
    each brings new bytes."""
    from huggingface_hub import constants
    from huggingface_hub.utils import build_hf_headers, get_session, hf_raise_for_status

    session = get_session()
    # huggingface_hub's HTTP client: httpx, or httpx2 from huggingface_hub 2.
    client = importlib.import_module(type(session).__module__.split(".")[0])
    for attempt in range(1, ATTEMPTS + 1):
        start = handle.tell()
        if start >= size:
            break
        headers = {**build_hf_headers(), **({"Range": f"bytes={start}-"} if start else {})}
        try:
            with session.stream(
                "GET", url, headers=headers, follow_redirects=True,
                timeout=constants.HF_HUB_DOWNLOAD_TIMEOUT,
            ) as got:  # fmt: skip
                hf_raise_for_status(got)
                resumed_at = _range_start(got.headers.get("Content-Range"))
                if start and (got.status_code != 206 or resumed_at != start):
                    handle.seek(0)  # the range was ignored: start over
                    handle.truncate()
                    progress.resumed(-start)
                    if got.status_code == 206:
                        raise ValueError(f"the Hub sent {name} from byte {resumed_at}")
                for chunk in got.iter_bytes():
                    handle.write(chunk)
                    progress.advance(len(chunk))
        except client.TransportError as exc:
            handle.flush()
            if attempt == ATTEMPTS or handle.tell() == start:
                raise ModelError(
                    f"the download of {name} stopped at {human_bytes(handle.tell())} of "
                    f"{human_bytes(size)}: {first_line(exc)}",
                    "run again: the download resumes where it stopped",
                ) from None
    handle.flush()
    if handle.tell() != size:
        raise ModelError(f"the Hub sent {handle.tell()} bytes of {name}, not {size}", "run again")


def _range_start(header: str | None) -> int | None:
    match = re.fullmatch(r"bytes (\d+)-\d+/\d+", header or "")
    return int(match[1]) if match else None


def _check_digest(part: Path, etag: str, size: int, name: str) -> None:
    """The ETag names the content: a large file's sha256, or a small one's git blob id
    (sha1 of "blob SIZE\\0" and the bytes). A file that does not match is discarded."""
    digest = hashlib.sha256() if _SHA256.fullmatch(etag) else hashlib.sha1(b"blob %d\0" % size)
    with open(part, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK), b""):
            digest.update(block)
    if digest.hexdigest() != etag:
        part.unlink()
        raise ModelError(f"the downloaded {name} does not match its ETag: damaged", "run again")


def _write_ref(repo: str, commit: str) -> None:
    """refs/main names the commit, so an offline run finds the snapshot."""
    ref = hub_storage(repo) / "refs" / "main"
    if ref.is_file() and ref.read_text().strip() == commit:
        return
    ref.parent.mkdir(parents=True, exist_ok=True)
    temporary = ref.with_name(f".main.{os.getpid()}")
    temporary.write_text(commit)
    os.replace(temporary, ref)


def _causes(exc: BaseException) -> list[BaseException]:
    """`exc` and what caused it, in turn (diffusers wraps huggingface_hub's errors)."""
    chain = [exc]
    while chain[-1].__cause__ is not None and len(chain) < 8:
        chain.append(chain[-1].__cause__)
    return chain


def hub_cause(exc: BaseException) -> bool:
    """Whether huggingface_hub's own error is among `exc`'s causes."""
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    return any(isinstance(e, (HfHubHTTPError, LocalEntryNotFoundError)) for e in _causes(exc))


def hub_error(repo: str, exc: BaseException) -> ModelError:
    """A failure to reach or read the Hub for `repo` (raised by huggingface_hub, or by
    diffusers with the Hub's error as its cause), in one line with its remedy."""
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    chain = _causes(exc)

    def found(kind: type) -> BaseException | None:
        return next((e for e in chain if isinstance(e, kind)), None)

    if found(GatedRepoError):
        return ModelError(
            f"{repo} is gated on the Hub: it needs an account that accepted its licence",
            "accept it on the model's Hub page, then log in with `hf auth login` "
            "(`huggingface-cli login` in older versions) or set HF_TOKEN",
        )
    if found(RepositoryNotFoundError):
        return ModelError(
            f"there is no model {repo} on the Hub (or it is private)",
            "check the id, or log in (`hf auth login`) for a private model",
        )
    if (http := found(HfHubHTTPError)) is not None:
        return ModelError(
            f"the Hub could not serve {repo}: {first_line(http)}",
            "try again later; what was downloaded is kept",
        )
    if constants.HF_HUB_OFFLINE or found(LocalEntryNotFoundError):
        return ModelError(
            f"{repo} is not in the Hugging Face cache and the Hub cannot be reached",
            "run once with network access to cache it, then it works offline",
        )
    return ModelError(
        f"cannot download {repo} from the Hub: {first_line(exc)}",
        "check the network and HF_ENDPOINT; what was downloaded is kept",
    )


def human_bytes(count: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(count) < 1000 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    raise AssertionError("unreachable")


class DownloadProgress:
    """Bytes of one download on stderr: a live bar on a terminal; otherwise a line at
    every tenth of the total (or after 30 s without one); nothing when quiet."""

    def __init__(self, total: int, quiet: bool) -> None:
        self.total, self.quiet, self.done, self.before = total, quiet, 0, 0
        self.started = self.said = time.monotonic()
        self.tenth = 0
        self.bar: Any = None
        if not quiet and wants_live_display():
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            self.bar = Progress(
                BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn(),
                console=Console(stderr=True), transient=True,
            )  # fmt: skip
            self.task = self.bar.add_task("download", total=total)
            self.bar.start()

    def resumed(self, count: int) -> None:
        """Bytes that were there already (not counted in the speed)."""
        self.before += count
        self.advance(count)

    def advance(self, count: int) -> None:
        self.done += count
        if self.bar is not None:
            self.bar.update(self.task, completed=self.done)
        elif not self.quiet and self.total:
            tenth = 10 * self.done // self.total
            if tenth > self.tenth or time.monotonic() - self.said >= 30:
                self.tenth, self.said = tenth, time.monotonic()
                say(f"txt2img: downloaded {self._line()}")

    def _line(self) -> str:
        seconds = time.monotonic() - self.started
        rate = (self.done - self.before) / seconds if seconds > 0 else 0.0
        left = (self.total - self.done) / rate if rate else None
        return (
            f"{human_bytes(self.done)} of {human_bytes(self.total)} "
            f"({100 * self.done // self.total}%), {human_bytes(rate)}/s"
            + (f", about {left:.0f} s left" if left and self.done < self.total else "")
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
