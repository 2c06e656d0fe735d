"""The models a server offers, by A1111's names for them, and those it keeps loaded.

A request names a model only as the server lists it (title, name, file name or hash),
never by a path; LoRAs and embeddings only by their names in the server's folders.
"""

from __future__ import annotations

import gc
import os
import re
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..draw import load_model, model_prompts
from ..errors import Txt2ImgError
from ..jobs import ImageJob
from ..model import hashes
from ..model.addons import addon_errors, load_embeddings
from ..model.folders import embeddings_named, find_lora, folder_index
from ..model.load import LoadedModel
from ..model.source import EmbeddingRef, ModelSource, SourceKind, locate, locate_addon, plan_model
from ..outputs.progress import Reporter
from ..prompt.encode import PromptEncoder
from .config import ServeConfig


@dataclass(frozen=True)
class Entry:
    """One model the server lists."""

    source: ModelSource
    filename: str  # relative to its --models-dir folder; the location given for -m

    @property
    def name(self) -> str:
        return self.source.name

    def sha256(self, compute: bool = False) -> str | None:
        """A checkpoint file's sha256: from the hash cache, or (`compute`) read."""
        if self.source.kind is not SourceKind.file:
            return None
        path = Path(self.source.location)
        try:
            return hashes.file_sha256(path) if compute else hashes.cached_sha256(path)
        except OSError:
            return None

    @property
    def title(self) -> str:
        digest = self.sha256()
        return f"{self.name} [{digest[:10]}]" if digest else self.name

    def item(self) -> dict[str, Any]:
        """A1111's /sd-models entry."""
        digest = self.sha256()
        return {
            "title": self.title, "model_name": self.name, "hash": digest[:10] if digest else None,
            "sha256": digest, "filename": self.filename, "config": None,
        }  # fmt: skip

    def aliases(self, compute: bool = False) -> set[str]:
        names = {self.title, self.name, self.filename, Path(self.filename).name}
        digest = self.sha256(compute)
        if digest:
            names |= {digest, digest[:10], f"{self.name} [{digest[:10]}]"}
        return names


class Catalog:
    """-m's model, and in --models-dir the diffusers folders (one level down) and the
    checkpoints (safetensors; .ckpt too with --allow-pickle)."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.default = Entry(locate(config.model, config.allow_pickle), config.model)
        self.entries: list[Entry] = []
        self.refresh()

    def refresh(self) -> None:
        suffixes = (".safetensors", ".ckpt") if self.config.allow_pickle else (".safetensors",)
        found = [self.default]
        for folder in self.config.models_dirs:
            files = sorted(folder_index([folder], "--models-dir").values())
            pipelines = sorted(
                sub for sub in folder.iterdir() if (sub / "model_index.json").is_file()
            )
            for path in [*pipelines, *(p for p in files if p.suffix.lower() in suffixes)]:
                if path.resolve() == Path(self.default.source.location):
                    continue
                try:
                    source = locate(str(path), self.config.allow_pickle)
                except Txt2ImgError:  # not a model txt2img can read
                    continue
                found.append(Entry(source, str(path.relative_to(folder))))
        self.entries = found

    def find_first(self, names: list[str]) -> Entry | None:
        """The entry of the first of `names` that the catalog lists (as `--from` looks
        for a model by its hash, then by its name)."""
        return next((e for e in map(self.find, names) if e is not None), None)

    def find(self, name: str) -> Entry | None:
        """The entry any of whose A1111 names is `name`; a hash not yet known is looked
        for by hashing the checkpoints (once: hashes are cached)."""
        for entry in self.entries:
            if name in entry.aliases():
                return entry
        if re.fullmatch(r"[0-9a-fA-F]{10}|[0-9a-fA-F]{64}", name):
            try:
                return next(
                    (e for e in self.entries if name.lower() in e.aliases(compute=True)), None
                )
            finally:
                hashes.flush()  # the server runs long: what it hashed is kept now
        return None


@dataclass
class Served:
    """A loaded model, its prompt encoder, and the add-ons loaded into it so far."""

    entry: Entry
    model: LoadedModel
    prompts: PromptEncoder
    weight_bytes: int


class LoadedModels:
    """The models in memory, least recently used first; a model that would pass the
    budget unloads the oldest ones (never the one asked for)."""

    def __init__(self, config: ServeConfig, catalog: Catalog, reporter: Reporter) -> None:
        self.config, self.catalog, self.reporter = config, catalog, reporter
        self.loaded: OrderedDict[str, Served] = OrderedDict()
        self.current = catalog.default  # what a request that names no model draws with
        self.lora_index = folder_index(config.lora_dirs, "--lora-dir")
        self.embedding_index = folder_index(config.embedding_dirs, "--embeddings-dir")

    def refresh_addons(self) -> None:
        self.lora_index = folder_index(self.config.lora_dirs, "--lora-dir")
        self.embedding_index = folder_index(self.config.embedding_dirs, "--embeddings-dir")

    def get(self, entry: Entry | None = None) -> Served:
        entry = entry or self.current
        key = entry.source.location
        if key in self.loaded:
            self.loaded.move_to_end(key)
            return self.loaded[key]
        plan = plan_model(key, allow_pickle=self.config.allow_pickle)
        model = load_model(plan, self.config.load, self.config.verbose, self.reporter, True)
        served = Served(entry, model, model_prompts(model), weight_bytes(model.pipe))
        self.loaded[key] = served
        self._unload_over_budget(keep=key)
        return served

    def _unload_over_budget(self, keep: str) -> None:
        budget = self.budget_bytes(self.loaded[keep].model)
        while len(self.loaded) > 1 and sum(s.weight_bytes for s in self.loaded.values()) > budget:
            oldest = next(key for key in self.loaded if key != keep)
            self.reporter.info(f"unloading {self.loaded[oldest].entry.name} (--models-memory)")
            del self.loaded[oldest]
            release_memory()

    def budget_bytes(self, model: LoadedModel) -> float:
        if self.config.models_memory is not None:
            return self.config.models_memory * 2**30
        import torch

        if model.device.type == "cuda":
            return torch.cuda.get_device_properties(model.device).total_memory / 2
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2

    def add_addons(
        self, served: Served, jobs: list[ImageJob], lora_hashes: dict[str, str] | None = None
    ) -> None:
        """Load the LoRAs the jobs' tags name and the embeddings their prompts use that
        the model does not have yet. A tag that names no file is found by its hash in
        `lora_hashes` (--from), as a local run finds it."""
        with addon_errors():
            self._add_addons(served, jobs, lora_hashes or {})

    def _add_addons(self, served: Served, jobs: list[ImageJob], lora_hashes: dict) -> None:
        model, allow_pickle = served.model, self.config.allow_pickle
        for name in missing_loras(served, jobs):
            digest = lora_hashes.get(name)
            path = find_lora(self.lora_index, name, self.config.lora_dirs, digest)
            model.loras.load(locate_addon(str(path), "--lora", allow_pickle), name)
        new = missing_embeddings(served, jobs, self.embedding_index)
        if new:
            refs = [EmbeddingRef(locate_addon(str(path), "--embedding", allow_pickle), name)
                    for name, path in new.items()]  # fmt: skip
            first = sum(1 for addon in model.addons if addon.kind == "embedding")
            records, tokens = load_embeddings(
                model.pipe, refs, self.config.load.offline, allow_pickle, first
            )
            model.addons += records
            model.embedding_tokens.update(tokens)
            served.prompts = model_prompts(model)

    def needs_addons(self, served: Served, jobs: list[ImageJob]) -> bool:
        return bool(missing_loras(served, jobs) or missing_embeddings(
            served, jobs, self.embedding_index
        ))  # fmt: skip


def missing_loras(served: Served, jobs: list[ImageJob]) -> list[str]:
    names = dict.fromkeys(tag.name for job in jobs for tag in job.lora_tags)
    return [name for name in names if name not in served.model.loras.named]


def missing_embeddings(
    served: Served, jobs: list[ImageJob], index: dict[str, Path]
) -> dict[str, Path]:
    texts = [text for job in jobs for text in (job.prompt, job["negative_prompt"])]
    used = embeddings_named(index, texts)
    return {name: path for name, path in used.items() if name not in served.model.embedding_tokens}


def weight_bytes(pipe: Any) -> int:
    total = 0
    for component in pipe.components.values():
        for tensor in [*getattr(component, "parameters", list)(),
                       *getattr(component, "buffers", list)()]:  # fmt: skip
            total += tensor.numel() * tensor.element_size()
    return total


def release_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
