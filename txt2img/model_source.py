"""What `--model` names: a local diffusers folder, a single-file checkpoint, or a Hugging
Face Hub id.

Decided from the string and the file system alone, with no download and no torch, so a
mistyped path fails at once and never reaches the Hub, and an unsafe file is refused
before anything is loaded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from .checkpoints import WeightsFormat, check_weights_file
from .errors import ModelError, UsageError
from .settings import Settings

HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
PATH_PREFIXES = ("/", "./", "../", "~", "\\")
CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".sft")


class SourceKind(str, Enum):
    folder = "folder"  # a diffusers-format folder (model_index.json)
    file = "file"  # a single-file checkpoint in the original (LDM) layout
    hub = "hub"  # a Hugging Face Hub id


@dataclass(frozen=True)
class ModelSource:
    location: str  # absolute path, or the Hub id
    kind: SourceKind
    weights_format: WeightsFormat = WeightsFormat.safetensors

    @property
    def is_local(self) -> bool:
        return self.kind is not SourceKind.hub

    @property
    def name(self) -> str:
        """The short name A1111 shows as `Model:`: file name without extension, folder
        name, or the Hub id."""
        if self.kind is SourceKind.hub:
            return self.location
        return (
            Path(self.location).stem if self.kind is SourceKind.file else Path(self.location).name
        )


DEMO_MODEL = Path(__file__).parent / "demo_model"


def locate(model: str, allow_pickle: bool = False) -> ModelSource:
    """`demo` is the small model shipped inside the package (a folder named demo in the
    current directory is `./demo`)."""
    if model == "demo":
        if not (DEMO_MODEL / "model_index.json").is_file():
            raise ModelError("the demo model is missing from this install", "reinstall txt2img")
        return ModelSource(str(DEMO_MODEL), SourceKind.folder)
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise ModelError(
                f"{path} is not a diffusers model folder (it has no model_index.json)",
                "point --model at the folder that holds model_index.json, or at a checkpoint file",
            )
        return ModelSource(str(path.resolve()), SourceKind.folder)
    if path.is_file():
        weights_format = check_weights_file(path, allow_pickle)
        return ModelSource(str(path.resolve()), SourceKind.file, weights_format)
    if model.lower().endswith(CHECKPOINT_SUFFIXES):
        raise ModelError(f"checkpoint file {model} does not exist", "check the path")
    if model.startswith(PATH_PREFIXES) or not HUB_ID.fullmatch(model):
        raise ModelError(
            f"model {model!r} is neither an existing folder or file nor a Hub id like owner/name",
            "check the path, or give a Hugging Face Hub id",
        )
    return ModelSource(model, SourceKind.hub)


CONFIGS = Path(__file__).parent / "configs"
BUILT_IN_CONFIGS = ("sd1", "sd2", "sd2-v", "sdxl")


def resolve_config(config: str | None, source: ModelSource) -> Path | None:
    """The diffusers config folder for a single-file checkpoint: `--config` as a built-in
    name or a folder; None lets the loader tell the family from the weights."""
    if config is None:
        return None
    if source.kind is not SourceKind.file:
        raise UsageError(
            "--config only applies to single-file checkpoints",
            "a diffusers folder or Hub id brings its own configs",
        )
    if config in BUILT_IN_CONFIGS:
        return CONFIGS / config
    folder = Path(config).expanduser()
    if not (folder / "model_index.json").is_file():
        raise UsageError(
            f"--config {config} is neither {', '.join(BUILT_IN_CONFIGS)} nor a folder with "
            "model_index.json",
            "use a built-in name or a diffusers model folder (weights are not needed)",
        )
    return folder.resolve()


def locate_addon(ref: str, flag: str, allow_pickle: bool) -> ModelSource:
    """A LoRA, VAE or embedding: a file (checked like a checkpoint), a folder, or a Hub id."""
    path = Path(ref).expanduser()
    if path.is_file():
        return ModelSource(
            str(path.resolve()), SourceKind.file, check_weights_file(path, allow_pickle)
        )
    if path.is_dir():
        return ModelSource(str(path.resolve()), SourceKind.folder)
    if ref.startswith(PATH_PREFIXES) or ref.lower().endswith(CHECKPOINT_SUFFIXES):
        raise ModelError(f"{flag} {ref} does not exist", "check the path")
    if not HUB_ID.fullmatch(ref):
        raise ModelError(
            f"{flag} {ref!r} is neither an existing file or folder nor a Hub id like owner/name",
            "check the path",
        )
    return ModelSource(ref, SourceKind.hub)


@dataclass(frozen=True)
class ModelPlan:
    """Everything to load, found and checked before anything is loaded."""

    source: ModelSource
    config: Path | None  # config folder for a single-file checkpoint; None: by family
    vae: ModelSource | None
    loras: tuple[tuple[ModelSource, float], ...]
    embeddings: tuple[tuple[ModelSource, str | None], ...]


def plan_model(settings: Settings) -> ModelPlan:
    source = locate(settings.model, settings.allow_pickle)
    return ModelPlan(
        source=source,
        config=resolve_config(settings.config, source),
        vae=locate_addon(settings.vae, "--vae", settings.allow_pickle) if settings.vae else None,
        loras=tuple(
            (locate_addon(ref, "--lora", settings.allow_pickle), scale)
            for ref, scale in settings.loras
        ),
        embeddings=tuple(
            (locate_addon(ref, "--embedding", settings.allow_pickle), token)
            for ref, token in settings.embeddings
        ),
    )
