"""Add-ons that prompts name: LoRAs in --lora-dir (`<lora:NAME:W>`) and textual-inversion
embeddings in --embeddings-dir (NAME as a word of a prompt), as in A1111. NAME is a file's
stem, never a path, so a prompt reaches nothing outside the folders the user gave.

Pure Python: the folders are searched, and every name checked, before a model loads.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path

from ..errors import ModelError, UsageError
from ..prompt.syntax import words_pattern
from .hashes import lora_hash

# Safetensors first: where a folder has NAME.safetensors and NAME.pt, the prompt's NAME
# is the safetensors file. The pickles are refused later without --allow-pickle.
SUFFIXES = (".safetensors", ".pt", ".ckpt", ".bin")
MAX_FILES = 100_000  # in all the folders of one option


def folder_index(folders: Iterable[Path], flag: str) -> dict[str, Path]:
    """Every add-on file in `folders` (and their subfolders) by its stem. A name found in
    an earlier folder wins; within one folder, safetensors before pickles, then the
    shallowest and alphabetically first path."""
    index: dict[str, Path] = {}
    files = 0
    for folder in folders:
        found = []
        for path in _addon_files(folder):
            files += 1
            if files > MAX_FILES:
                raise UsageError(
                    f"{flag} holds more than {MAX_FILES} add-on files",
                    "point it at the add-ons' own folder",
                )
            found.append(path)
        found.sort(key=lambda p: (SUFFIXES.index(p.suffix.lower()), len(p.parts), str(p)))
        for path in found:
            index.setdefault(path.stem, path)
    return index


def _addon_files(folder: Path) -> Iterator[Path]:
    """The regular files (links followed) with an add-on suffix; a FIFO or a link to a
    device is passed over, never opened."""
    for root, dirs, names in os.walk(folder):
        dirs[:] = [name for name in dirs if not name.startswith(".")]
        for name in names:
            path = Path(root) / name
            if not name.startswith(".") and path.suffix.lower() in SUFFIXES and _is_regular(path):
                yield path


def _is_regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(path.stat().st_mode)
    except OSError:  # a dangling link
        return False


def find_lora(
    index: dict[str, Path], name: str, folders: tuple[Path, ...], digest: str | None = None
) -> Path:
    """The file a `<lora:NAME:...>` tag names: NAME exactly, else NAME in any case if
    only one file matches so, else (for --from) the file with the image's recorded
    `Lora hashes` entry for NAME, `digest`."""
    if not folders:
        raise UsageError(
            f"the prompt names <lora:{name}>, but no --lora-dir was given",
            "pass --lora-dir DIR (or set TXT2IMG_LORA_DIR) with the folder that holds it",
        )
    if name in index:
        return index[name]
    folded = [key for key in index if key.lower() == name.lower()]
    if len(folded) == 1:
        return index[folded[0]]
    if folded:
        raise UsageError(
            f"<lora:{name}> matches {len(folded)} LoRAs that differ only in case: "
            + ", ".join(map(str, (index[key] for key in folded))),
            "write the name as its file is spelled",
        )
    by_hash = _with_hash(index, digest) if digest else None
    if by_hash is not None:
        return by_hash
    where = ", ".join(map(str, folders))
    raise ModelError(
        f"<lora:{name}> names no LoRA in --lora-dir {where}"
        + (f" (nor one with its hash {digest})" if digest else ""),
        f"NAME is the file's stem; the folders hold {len(index)} add-on files",
    )


def _with_hash(index: dict[str, Path], digest: str) -> Path | None:
    for path in sorted(index.values()):
        try:
            if lora_hash(path) == digest.lower():
                return path
        except OSError:  # a dangling link or an unreadable file
            continue
    return None


def embeddings_named(index: dict[str, Path], texts: Iterable[str]) -> dict[str, Path]:
    """The embeddings whose name appears in any of `texts` as a word, in any case (A1111
    matches the name's tokens, and CLIP reads lower case)."""
    by_folded: dict[str, str] = {}
    for name in sorted(index, key=len, reverse=True):
        by_folded.setdefault(name.lower(), name)
    pattern = words_pattern(by_folded)
    used: dict[str, Path] = {}
    for text in texts if pattern else ():
        for match in pattern.finditer(text):
            name = by_folded[match.group(1).lower()]
            used[name] = index[name]
    return dict(sorted(used.items()))
