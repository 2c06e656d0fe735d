"""What `--model` names: a local diffusers folder, a single-file checkpoint, or a Hugging
Face Hub id.

Decided from the string and the file system alone, with no download and no torch, so a
mistyped path fails at once and never reaches the Hub, and an unsafe file is refused
before anything is loaded.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from ..errors import ModelError, UnsafeCheckpointError, UsageError
from .weights import WeightsFormat, check_weights_file

HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
PATH_PREFIXES = ("/", "./", "../", "~", "\\")
CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin", ".sft")


class SourceKind(StrEnum):
    folder = "folder"  # a diffusers-format folder (model_index.json)
    file = "file"  # a single-file checkpoint in the original (LDM) layout
    hub = "hub"  # a Hugging Face Hub id


@dataclass(frozen=True)
class ModelSource:
    location: str  # absolute path, or the Hub id
    kind: SourceKind
    weights_format: WeightsFormat = WeightsFormat.safetensors
    in_folder: bool = False  # the weights file of a LoRA or embedding folder given as such

    @property
    def is_local(self) -> bool:
        return self.kind is not SourceKind.hub

    @property
    def name(self) -> str:
        """The short name A1111 shows as `Model:`: file name without extension, folder
        name, or the Hub id."""
        if self.kind is SourceKind.hub:
            return self.location
        if self.in_folder:
            return Path(self.location).parent.name
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
    if path.exists():
        raise ModelError(f"{path} is neither a regular file nor a folder", "check the path")
    if model.lower().endswith(CHECKPOINT_SUFFIXES):
        raise ModelError(f"checkpoint file {model} does not exist", "check the path")
    if model.startswith(PATH_PREFIXES) or not HUB_ID.fullmatch(model):
        raise ModelError(
            f"model {model!r} is neither an existing folder or file nor a Hub id like owner/name",
            "check the path, or give a Hugging Face Hub id",
        )
    return ModelSource(model, SourceKind.hub)


def hub_storage(repo: str) -> Path:
    """Hub id `repo`'s folder in the Hugging Face cache (blobs, snapshots, refs)."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    return Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo, repo_type="model")


def in_hub_cache(repo: str) -> bool:
    """Whether the Hugging Face cache holds a snapshot of Hub id `repo`."""
    snapshots = hub_storage(repo) / "snapshots"
    return snapshots.is_dir() and any(snapshots.iterdir())


CONFIGS = Path(__file__).parent / "configs"
CLIP_VOCAB = CONFIGS / "clip-vocab"  # the one copy of CLIP's vocab.json and merges.txt
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
    _check_model_index(folder / "model_index.json")
    return folder.resolve()


def _check_model_index(path: Path) -> None:
    """`--config DIR` must describe a pipeline txt2img runs; said of --config, not of the
    checkpoint, when it does not."""
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise UsageError(f"--config: {path} is not valid JSON ({exc})".split("\n")[0]) from None
    class_name = index.get("_class_name") if isinstance(index, dict) else None
    if class_name not in PIPELINE_CLASSES:
        raise UsageError(
            f"--config: {path} describes a {class_name}, not a pipeline txt2img runs",
            f"use a folder of a {' or '.join(PIPELINE_CLASSES)}",
        )
    listed = [key for key, value in index.items() if isinstance(value, list) and value[0]]
    missing = [key for key in listed if not (path.parent / key).is_dir()]
    if missing:
        raise UsageError(
            f"--config: {path.parent} has no {missing[0]}/ folder, which model_index.json lists",
            "give a whole diffusers model folder (its configs; weights are not needed)",
        )


PIPELINE_CLASSES = ("StableDiffusionPipeline", "StableDiffusionXLPipeline")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


def pickled_files(component: Path) -> list[Path]:
    """A component folder's pickle weights, where it has no safetensors file to read
    instead (diffusers and transformers prefer that one)."""
    files = [p for p in component.iterdir() if p.is_file()]
    if any(p.suffix == ".safetensors" for p in files):
        return []
    return [p for p in files if p.suffix in PICKLE_SUFFIXES]


def check_folder_weights(folder: Path, allow_pickle: bool, what: str, model: bool = True) -> bool:
    """Whether a diffusers model folder (`model`: its component subfolders; else the
    folder of one component, such as a VAE) is read from pickles somewhere; refused
    (exit 4) without --allow-pickle, and each pickle checked by its bytes with it."""
    components = sorted(p for p in folder.iterdir() if p.is_dir()) if model else [folder]
    pickled = [path for component in components for path in pickled_files(component)]
    if pickled and not allow_pickle:
        raise UnsafeCheckpointError(
            f"{what} {folder} has only pickle-based weights ({pickled[0].relative_to(folder)}), "
            "which can run code when loaded; refused",
            "convert it to safetensors, or pass --allow-pickle if you trust its source",
        )
    for path in pickled:
        check_weights_file(path, allow_pickle)
    return bool(pickled)


# The files diffusers saves a LoRA or a textual inversion as, safetensors first.
ADDON_FILES = {
    "--lora": ("pytorch_lora_weights.safetensors", "pytorch_lora_weights.bin"),
    "--embedding": ("learned_embeds.safetensors", "learned_embeds.bin"),
}


def locate_addon(ref: str, flag: str, allow_pickle: bool) -> ModelSource:
    """A LoRA, VAE or embedding: a file (checked like a checkpoint), a folder, or a Hub id.
    A LoRA or embedding folder is taken as the weights file in it, checked the same way;
    a VAE folder is a diffusers component folder (config.json and its weights)."""
    path = Path(ref).expanduser()
    in_folder = path.is_dir() and flag in ADDON_FILES
    if in_folder:
        path = _weights_in(path, flag)
    if path.is_file():
        weights_format = check_weights_file(path, allow_pickle)
        return ModelSource(str(path.resolve()), SourceKind.file, weights_format, in_folder)
    if path.is_dir():  # a --vae folder: one diffusers component
        if not (path / "config.json").is_file():
            raise ModelError(
                f"{flag} {path} is not a diffusers VAE folder (it has no config.json)",
                "point it at the folder that holds config.json, or at a VAE file",
            )
        check_folder_weights(path, allow_pickle, flag, model=False)
        return ModelSource(str(path.resolve()), SourceKind.folder)
    if path.exists():
        raise ModelError(f"{flag} {ref} is not a file or folder", "check the path")
    if ref.startswith(PATH_PREFIXES) or ref.lower().endswith(CHECKPOINT_SUFFIXES):
        raise ModelError(f"{flag} {ref} does not exist", "check the path")
    if not HUB_ID.fullmatch(ref):
        raise ModelError(
            f"{flag} {ref!r} is neither an existing file or folder nor a Hub id like owner/name",
            "check the path",
        )
    return ModelSource(ref, SourceKind.hub)


def _weights_in(folder: Path, flag: str) -> Path:
    """The file diffusers saved in the folder, or the folder's only .safetensors file."""
    for name in ADDON_FILES[flag]:
        if (folder / name).is_file():
            return folder / name
    others = list(folder.glob("*.safetensors"))
    if len(others) == 1:
        return others[0]
    raise ModelError(
        f"{flag} {folder} holds no {' or '.join(ADDON_FILES[flag])}",
        "point it at the weights file itself",
    )


@dataclass(frozen=True)
class EmbeddingRef:
    """A textual inversion to load. Its token is the one given, else for a file its
    name (as A1111 does), else for a folder or Hub id the token it was trained with."""

    source: ModelSource  # the weights file, or a Hub id
    token: str | None

    @property
    def default_token_is_name(self) -> bool:
        return self.source.kind is SourceKind.file and not self.source.in_folder


@dataclass(frozen=True)
class ModelPlan:
    """Everything to load, found and checked before anything is loaded."""

    source: ModelSource
    config: Path | None  # config folder for a single-file checkpoint; None: by family
    vae: ModelSource | None
    loras: tuple[tuple[ModelSource, float], ...]  # --lora: always on
    embeddings: tuple[EmbeddingRef, ...]
    named_loras: dict[str, ModelSource] = field(default_factory=dict)  # <lora:NAME> tags
    allow_pickle: bool = False
    pickled_folder: bool = False  # a diffusers folder whose weights are .bin pickles


def plan_model(
    model: str,
    *,
    allow_pickle: bool = False,
    config: str | None = None,
    vae: str | None = None,
    loras: tuple[tuple[str, float], ...] = (),
    embeddings: tuple[tuple[str, str | None], ...] = (),
    named_loras: dict[str, Path] | None = None,
    named_embeddings: dict[str, Path] | None = None,
) -> ModelPlan:
    """Find and check everything a run loads (the model, --config, --vae, --lora,
    --embedding, and the add-ons the prompts name from --lora-dir and --embeddings-dir,
    each loaded under its name), before anything is loaded."""
    source = locate(model, allow_pickle)
    # An embedding named in a prompt is loaded with its name as its token (once, if
    # --embedding gives the same file).
    given = {Path(ref).expanduser().resolve() for ref, _ in embeddings}
    embeddings += tuple(
        (str(path), name)
        for name, path in (named_embeddings or {}).items()
        if path.resolve() not in given
    )
    pickled_folder = source.kind is SourceKind.folder and check_folder_weights(
        Path(source.location), allow_pickle, "the model folder"
    )
    return ModelPlan(
        source=source,
        allow_pickle=allow_pickle,
        pickled_folder=pickled_folder,
        config=resolve_config(config, source),
        vae=locate_addon(vae, "--vae", allow_pickle) if vae else None,
        loras=tuple((locate_addon(ref, "--lora", allow_pickle), scale) for ref, scale in loras),
        embeddings=tuple(
            EmbeddingRef(locate_addon(ref, "--embedding", allow_pickle), token)
            for ref, token in embeddings
        ),
        named_loras={
            name: locate_addon(str(path), "--lora", allow_pickle)
            for name, path in (named_loras or {}).items()
        },
    )


@contextmanager
def readable_config(config: Path) -> Iterator[Path]:
    """`config` as diffusers reads it. The built-in folders' tokenizers share one copy of
    CLIP's vocabulary (`CLIP_VOCAB`), so diffusers is given a temporary folder of links:
    to the folder's own files, and to the vocabulary in each tokenizer folder."""
    built_in = config.parent == CONFIGS
    tokenizers = [d for d in config.glob("tokenizer*") if d.is_dir()]
    tokenizers = [d for d in tokenizers if built_in and not (d / "vocab.json").exists()]
    if not tokenizers:
        yield config
        return
    with tempfile.TemporaryDirectory(prefix="txt2img-config-") as temporary:
        linked = Path(temporary) / config.name
        linked.mkdir()
        for entry in config.iterdir():
            if entry in tokenizers:
                (linked / entry.name).mkdir()
                for file in [*entry.iterdir(), *CLIP_VOCAB.iterdir()]:
                    (linked / entry.name / file.name).symlink_to(file)
            else:
                (linked / entry.name).symlink_to(entry)
        yield linked
