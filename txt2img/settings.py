"""The settings of one run, built from the command line's values and checked.

Everything here is checked before any model is loaded, and nothing here imports
torch or diffusers. Options and their defaults are declared in `options.py`.
"""

from __future__ import annotations

import math
import os
import secrets
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import OutputError, UsageError
from .options import BY_KEY, IMAGE_OPTIONS, MAX_IMAGES, MAX_SEED, Device, Dtype

if TYPE_CHECKING:
    from .prompt.files import PromptLine


class Existing(StrEnum):
    """What to do with an image whose file is already there."""

    refuse = "refuse"  # the default: the run does not start
    skip = "skip"  # --resume
    replace = "replace"  # --overwrite


@dataclass(frozen=True)
class MemorySavers:
    """What diffusers offers to fit a small GPU; --low-vram turns on all of them."""

    cpu_offload: bool = False  # whole models move to the GPU only while they run
    vae_tiling: bool = False  # decode large images tile by tile
    vae_slicing: bool = False  # decode a batch one image at a time
    attention_slicing: bool = False  # attention in slices (slower with SDPA)

    @classmethod
    def all(cls) -> MemorySavers:
        return cls(True, True, True, True)

    def names(self) -> list[str]:
        return [name for name, on in self.__dict__.items() if on]


@dataclass(frozen=True)
class LoadOptions:
    """How to load and place a model: what `model.load.open_model` needs, and no more."""

    device: Device = Device.auto
    dtype: Dtype = Dtype.auto
    fast: bool = False  # the speed-ups that won on this kind of device (see model/fast.py)
    compile: bool = False
    memory: MemorySavers = MemorySavers()
    safety_checker: bool = True
    offline: bool = False


@dataclass(frozen=True)
class FromImage:
    """What `--from` found in an image beside option values, to find files by."""

    lora_hashes: dict[str, str] = field(default_factory=dict)  # tag name -> Lora hash
    # --server: the names the server is asked for, in order: the Model hash, the name.
    model_names: tuple[str, ...] = ()
    # tag name -> the LoRA file the image records, where --from may use it (no --lora-dir)
    lora_files: dict[str, Path] = field(default_factory=dict)


@dataclass(frozen=True)
class Settings:
    """One run. `image` holds the command line's value of every per-image option
    (`options.IMAGE_OPTIONS`; None means the model's default); a prompt line's own
    options override them for that line."""

    prompts: tuple[PromptLine, ...]
    image: dict[str, Any]
    seed_is_random: bool
    model: str | None  # None only with --server: the server's current model
    output_dir: Path
    load: LoadOptions
    quiet: bool
    verbose: bool
    batch_size: int
    json_lines: bool
    existing: Existing
    keep_going: bool
    config: str | None  # for single-file checkpoints: a built-in name or a folder
    allow_pickle: bool
    vae: str | None  # a replacement VAE: folder, file or Hub id
    loras: tuple[tuple[str, float], ...]  # (path or Hub id, scale), applied in order
    embeddings: tuple[tuple[str, str | None], ...]  # (path or Hub id, trigger token)
    lora_dirs: tuple[Path, ...]  # where <lora:NAME:W> tags are looked up
    embedding_dirs: tuple[Path, ...]  # embeddings used by name in the prompts
    save_steps: int | None  # also write a strip of every N-th step's clean estimate
    server: str | None = None  # --server: the URL of a `txt2img serve` that draws
    from_image: FromImage = field(default_factory=FromImage)


@dataclass(frozen=True)
class DrawOptions:
    """What drawing needs of a run beside its jobs: from the command line's settings, or
    from a request to `txt2img serve`."""

    batch_size: int = 1
    keep_going: bool = False
    save_steps: int | None = None
    verbose: bool = False

    @classmethod
    def of(cls, settings: Settings) -> DrawOptions:
        return cls(settings.batch_size, settings.keep_going, settings.save_steps,
                   settings.verbose)  # fmt: skip


def random_seed() -> int:
    """A fresh base seed in A1111's 32-bit range, so it is easy to read and retype."""
    return secrets.randbelow(2**32)


def build_settings(
    prompts: tuple[PromptLine, ...],
    values: dict[str, Any],
    from_image: FromImage | None = None,
) -> Settings:
    """Settings from the command line's `values` (one per `options.OPTIONS` key), checked;
    raise a `UsageError` or `OutputError` naming the first bad one."""
    for key, value in values.items():
        BY_KEY[key].validate(value)
    image = {option.key: values[option.key] for option in IMAGE_OPTIONS}
    seed_is_random = image["seed"] is None
    if seed_is_random:
        image["seed"] = random_seed()
    check_seed_range(image["seed"], image["num_images"])
    if values["model"] is not None and not values["model"].strip():
        raise UsageError("--model is empty", "give a Hub id or a local model folder")
    existing = existing_policy(values["resume"], values["overwrite"])
    if existing is Existing.skip and seed_is_random:
        raise UsageError(
            "--resume needs the --seed of the run it resumes",
            "the seed was printed when that run started and is in its images' metadata",
        )
    settings = Settings(
        prompts=prompts,
        image=image,
        seed_is_random=seed_is_random,
        model=values["model"],
        output_dir=values["output_dir"],
        load=load_options(values),
        quiet=values["quiet"],
        verbose=values["verbose"],
        batch_size=values["batch_size"],
        json_lines=values["json_lines"],
        existing=existing,
        keep_going=values["keep_going"],
        config=values["config"],
        allow_pickle=values["allow_pickle"],
        vae=values["vae"],
        loras=tuple(parse_lora(value) for value in values["lora"] or ()),
        embeddings=tuple(split_suffix(v, "--embedding") for v in values["embedding"] or ()),
        save_steps=values["save_steps"],
        # With --server the server's folders count; the variables here are not read.
        lora_dirs=folders(values, "lora_dir") if values["server"] is None else (),
        embedding_dirs=folders(values, "embeddings_dir") if values["server"] is None else (),
        from_image=from_image or FromImage(),
        server=values["server"],
    )
    _check_output_dir(settings.output_dir)
    return settings


def load_options(values: dict[str, Any]) -> LoadOptions:
    """How to load and place models, from the command line's values."""
    savers = ("cpu_offload", "vae_tiling", "vae_slicing", "attention_slicing")
    memory = (
        MemorySavers.all()
        if values["low_vram"]
        else MemorySavers(*(values[name] for name in savers))
    )
    return LoadOptions(
        device=Device(values["device"]),
        dtype=Dtype(values["dtype"]),
        fast=values["fast"],
        compile=values["compile"],
        memory=memory,
        safety_checker=values["safety_checker"],
        offline=values["offline"],
    )


def folders(values: dict[str, Any], key: str) -> tuple[Path, ...]:
    """A repeatable folder option: its command-line values, else its environment
    variable split at ':' like PATH (empty entries skipped), each checked."""
    option = BY_KEY[key]
    given = values[key]
    if not given and option.envvar:
        given = [entry for entry in os.environ.get(option.envvar, "").split(os.pathsep) if entry]
        option.validate(given)
    return tuple(Path(folder).expanduser() for folder in given or ())


def check_seed_range(seed: int | None, num_images: int, flag: str = "--seed") -> None:
    """Every image's seed (seed + i) must fit the generator."""
    if seed is not None and seed > MAX_SEED - (num_images - 1):
        raise UsageError(
            f"{flag} {seed} + {num_images - 1} images is past the largest seed, {MAX_SEED}",
            f"choose a smaller {flag}",
        )


def check_image_count(count: int) -> None:
    if count > MAX_IMAGES:
        raise UsageError(
            f"the run would make more than {MAX_IMAGES} images",
            "split the job into several runs (--seed and file names follow the run's index)",
        )


def existing_policy(resume: bool, overwrite: bool) -> Existing:
    if resume and overwrite:
        raise UsageError("--resume and --overwrite contradict each other", "choose one")
    return Existing.skip if resume else Existing.replace if overwrite else Existing.refuse


def _check_output_dir(folder: Path) -> None:
    if folder.is_symlink() and not folder.exists():
        raise OutputError(
            f"--output-dir {folder} is a link to nothing ({os.readlink(folder)})",
            "create its target, or choose another --output-dir",
        )
    if folder.exists() and not folder.is_dir():
        raise OutputError(
            f"--output-dir {folder} exists and is not a folder", "choose another --output-dir"
        )
    existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(
            f"cannot write to {existing}", "check its permissions or choose another --output-dir"
        )


def split_suffix(value: str, flag: str) -> tuple[str, str | None]:
    """`PATH:SUFFIX` -> (PATH, SUFFIX); a bare `PATH` (even `C:\\x`) -> (PATH, None)."""
    head, sep, tail = value.rpartition(":")
    if not sep or not head or "/" in tail or "\\" in tail:
        return value, None
    if not tail:
        raise UsageError(f"{flag} {value!r} ends with ':'", f"write {flag} PATH or PATH:VALUE")
    return head, tail


def parse_lora(value: str) -> tuple[str, float]:
    ref, scale = split_suffix(value, "--lora")
    if scale is None:
        return ref, 1.0
    try:
        number = float(scale)
    except ValueError:
        raise UsageError(
            f"--lora {value!r}: the scale after ':' must be a number",
            "e.g. --lora style.safetensors:0.8",
        ) from None
    if not math.isfinite(number):
        raise UsageError(f"--lora {value!r}: the scale must be finite")
    return ref, number
