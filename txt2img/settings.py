"""The settings of one run, their defaults, and their validation.

Everything here is checked before any model is loaded, and nothing here imports
torch or diffusers.
"""

from __future__ import annotations

import math
import os
import secrets
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import OutputError, UsageError

if TYPE_CHECKING:
    from .prompts import PromptLine

DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
DEFAULT_OUTPUT_DIR = Path("outputs")
MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed accepts up to this
MAX_SIDE = 8192
MAX_STEPS = 500  # every scheduler here handles it; PNDM breaks at 1000


class Device(str, Enum):
    auto = "auto"
    cuda = "cuda"
    mps = "mps"
    cpu = "cpu"


class Dtype(str, Enum):
    auto = "auto"
    fp16 = "fp16"
    bf16 = "bf16"
    fp32 = "fp32"


class Existing(str, Enum):
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
class Settings:
    """One run. `None` means "the model's default", resolved once the model is loaded.

    `prompts` holds the command-line prompt or the lines of --prompts-file; their
    per-line options override the settings here.
    """

    prompts: tuple[PromptLine, ...]
    model: str = DEFAULT_MODEL
    negative_prompt: str = ""
    steps: int | None = None
    guidance: float | None = None
    width: int | None = None
    height: int | None = None
    seed: int = 0
    seed_is_random: bool = False
    num_images: int = 1
    scheduler: str | None = None
    output_dir: Path = DEFAULT_OUTPUT_DIR
    device: Device = Device.auto
    dtype: Dtype = Dtype.auto
    quiet: bool = False
    batch_size: int = 1
    json_lines: bool = False
    existing: Existing = Existing.refuse
    keep_going: bool = False
    config: str | None = None  # for single-file checkpoints: a built-in name or a folder
    offline: bool = False
    allow_pickle: bool = False
    memory: MemorySavers = field(default_factory=lambda: MemorySavers())
    compile_unet: bool = False
    fast: bool = False  # the speed-ups that won on this kind of device (see fast.py)
    safety_checker: bool = True
    vae: str | None = None  # a replacement VAE: folder, file or Hub id
    loras: tuple[tuple[str, float], ...] = ()  # (path or Hub id, scale), applied in order
    embeddings: tuple[tuple[str, str | None], ...] = ()  # (path or Hub id, trigger token)
    save_steps: int | None = None  # also write a strip of every N-th step's clean estimate


def random_seed() -> int:
    """A fresh base seed in A1111's 32-bit range, so it is easy to read and retype."""
    return secrets.randbelow(2**32)


def validate(settings: Settings) -> Settings:
    """Raise a `UsageError` or `OutputError` naming the first bad setting."""
    for line in settings.prompts:
        check_prompt(line.prompt)
    if not settings.model.strip():
        raise UsageError("--model is empty", "give a Hub id or a local model folder")
    check_image_options(
        steps=settings.steps,
        guidance=settings.guidance,
        width=settings.width,
        height=settings.height,
        num_images=settings.num_images,
        seed=settings.seed,
    )
    _check_range("--batch-size", settings.batch_size, 1, None)
    _check_range("--save-steps", settings.save_steps, 1, None)
    if settings.existing is Existing.skip and settings.seed_is_random:
        raise UsageError(
            "--resume needs the --seed of the run it resumes",
            "the seed was printed when that run started and is in its images' metadata",
        )
    _check_output_dir(settings.output_dir)
    return settings


def check_prompt(prompt: str) -> None:
    if not prompt.strip():
        raise UsageError("the prompt is empty", "give the text to draw, e.g. txt2img 'a red fox'")


def check_image_options(
    *,
    steps: int | None = None,
    guidance: float | None = None,
    width: int | None = None,
    height: int | None = None,
    num_images: int = 1,
    seed: int | None = None,
) -> None:
    """The per-image settings, checked the same way on the command line and per prompt."""
    _check_range("--steps", steps, 1, MAX_STEPS)
    if guidance is not None and not (math.isfinite(guidance) and guidance >= 0):
        raise UsageError(
            f"--guidance must be a finite number >= 0, got {guidance}",
            "7.5 is usual, 0 turns classifier-free guidance off",
        )
    for flag, side in (("--width", width), ("--height", height)):
        _check_range(flag, side, 8, MAX_SIDE)
        if side is not None and side % 8:
            lower, upper = side // 8 * 8, side // 8 * 8 + 8
            raise UsageError(
                f"{flag} must be a multiple of 8, got {side}", f"try {lower or 8} or {upper}"
            )
    _check_range("--num-images", num_images, 1, None)
    _check_range("--seed", seed, 0, MAX_SEED - (num_images - 1))


def _check_range(flag: str, value: int | None, low: int, high: int | None) -> None:
    if value is None:
        return
    if value < low or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise UsageError(f"{flag} must be {bounds}, got {value}")


def _check_output_dir(folder: Path) -> None:
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
