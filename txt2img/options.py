"""Every option of the command, declared once.

The command line (`cli.py`), the prompts-file parser (`prompt/files.py`), the job plan and its
batch grouping (`jobs.py`), the JSON records and the PNG metadata (`records/write.py`) all
derive from `OPTIONS`. A per-image option is one `Option(..., per_image=True)` entry here
plus its behaviour where it acts on the pipeline.

Pure Python: no torch, diffusers or typer here.
"""

from __future__ import annotations

import math
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from .errors import UsageError
from .model.schedulers import SCHEDULERS

DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
MAX_SEED = 2**64 - 1  # torch.Generator.manual_seed accepts up to this
MAX_SIDE = 8192
MAX_STEPS = 500  # every scheduler here handles it; PNDM breaks at 1000
MAX_IMAGES = 100_000  # images one run may plan; a larger job is split into runs
MAX_PROMPT_CHARS = 16_384  # about 4,000 CLIP tokens
MAX_LINE_BYTES = 65_536  # one line of a prompts file
MAX_LINES = 1_000_000  # lines of a prompts file, blank and comment lines included
MAX_PROMPTS_BYTES = 64 << 20  # a whole prompts file
MAX_CLIP_SKIP = 12  # A1111's range; a model with fewer text-encoder layers allows fewer
# Where the starting noise comes from (--rng, see noise.py) and A1111's `RNG` for each;
# read back, A1111's default GPU is an NVIDIA GPU's noise, which is what txt2img can give.
RNG = {"cpu": "CPU", "nv": "NV"}
RNG_BY_NAME = {"GPU": "nv", **{name: key for key, name in RNG.items()}}
# A1111's emphasis modes (--emphasis) and the names its infotext gives them.
EMPHASIS = {"original": "Original", "no-norm": "No norm", "ignore": "Ignore", "none": "None"}


class Device(StrEnum):
    auto = "auto"
    cuda = "cuda"
    mps = "mps"
    cpu = "cpu"


class Dtype(StrEnum):
    auto = "auto"
    fp16 = "fp16"
    bf16 = "bf16"
    fp32 = "fp32"


@dataclass(frozen=True)
class FamilyDefaults:
    """Steps and guidance where the user gives none (the size is the model's own)."""

    steps: int
    guidance: float


STANDARD = FamilyDefaults(steps=30, guidance=7.5)
TURBO = FamilyDefaults(steps=1, guidance=0.0)  # distilled for one step, no guidance


def check_range(flag: str, value: int | None, low: int, high: int | None) -> None:
    if value is None:
        return
    if value < low or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise UsageError(f"{flag} must be {bounds}, got {value}")


def check_text(flag: str, text: str) -> None:
    """Text must be encodable Unicode (no lone surrogates from undecodable argv bytes or
    a JSON "\\ud800") and of a bounded length, so it cannot fail later in a tokenizer."""
    if len(text) > MAX_PROMPT_CHARS:
        raise UsageError(
            f"{flag} is {len(text)} characters long, more than {MAX_PROMPT_CHARS}",
            "shorten it; CLIP reads about 4 characters a token",
        )
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise UsageError(
            f"{flag} is not valid Unicode (a lone surrogate at character {exc.start + 1})",
            "it came from bytes that are not UTF-8; pass the text as UTF-8",
        ) from None


def _check_guidance(flag: str, value: float | None) -> None:
    if value is not None and not (math.isfinite(value) and value >= 0):
        raise UsageError(
            f"{flag} must be a finite number >= 0, got {value}",
            "7.5 is usual, 0 turns classifier-free guidance off",
        )


def _check_fraction(flag: str, value: float | None) -> None:
    if value is not None and not (math.isfinite(value) and 0 <= value <= 1):
        raise UsageError(f"{flag} must be between 0 and 1, got {value}")


def _check_gib(flag: str, value: float | None) -> None:
    if value is not None and not (math.isfinite(value) and value > 0):
        raise UsageError(f"{flag} must be a number of GiB above 0, got {value}")


def _check_side(flag: str, side: int | None) -> None:
    check_range(flag, side, 8, MAX_SIDE)
    if side is not None and side % 8:
        lower, upper = side // 8 * 8, side // 8 * 8 + 8
        raise UsageError(
            f"{flag} must be a multiple of 8, got {side}", f"try {lower or 8} or {upper}"
        )


def _check_folders(flag: str, folders: list[str]) -> None:
    """Folders from the command line or, split at ':', from the option's variable."""
    for folder in folders:
        if not Path(folder).expanduser().is_dir():
            raise UsageError(f"{flag} {folder} is not a folder", "give folders that exist")


def _check_url(flag: str, url: str | None) -> None:
    """An http(s) URL with a host and, if any, a numeric port."""
    if not url:  # '': draw here, whatever TXT2IMG_SERVER says
        return
    example = "e.g. --server http://127.0.0.1:7860"
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 (a port that is not a number raises here)
    except ValueError as exc:
        raise UsageError(f"{flag} {url!r} is not a URL: {exc}", example) from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise UsageError(f"{flag} {url!r} is not an http:// URL with a host", example)


def _check_seconds(flag: str, value: float) -> None:
    if not 0 < value <= 3600:
        raise UsageError(f"{flag} must be more than 0 and at most 3600 seconds, got {value:g}")


def _checked_range(low: int, high: int | None) -> Callable[[str, Any], None]:
    return lambda flag, value: check_range(flag, value, low, high)


@dataclass(frozen=True)
class Option:
    """One option. `default` None for a per-image option means "the model's default",
    resolved once the model is loaded (or, for --seed, drawn at random)."""

    key: str  # Settings / ImageJob key, JSON key, per-line JSONL key
    flags: tuple[str, ...]  # command-line spellings, the long one first
    help: str
    kind: type = str  # int, float, str, bool or Path
    default: Any = None
    per_image: bool = False  # may be set per prompt line; recorded with every image
    choices: tuple[str, ...] | None = None
    check: Callable[[str, Any], None] | None = None  # (flag, value) -> raise UsageError
    repeat: bool = False
    envvar: str | None = None
    off_flag: str | None = None  # the flag that turns a bool option off
    infotext: str | None = None  # AUTOMATIC1111's key, where it has one of its own
    infotext_default: Any = None  # a value A1111 leaves out of the infotext
    # How a per-image option groups jobs into one pipeline call: "equal" (the same
    # value), "free" (may differ within a call), or "given" (set or not, e.g. an SDXL
    # empty negative prompt uses zero embeddings, unlike any text).
    batch: str = "equal"
    recorded: bool = True  # part of an image's record (num_images is not)

    @property
    def flag(self) -> str:
        return self.flags[0]

    @property
    def spellings(self) -> str:
        return "/".join(self.flags)

    def validate(self, value: Any) -> None:
        """Check a typed value (from the command line, a prompt line or JSON); errors
        name the option by its long flag."""
        if value is None:
            return
        flag = self.flag
        if self.choices is not None and value not in self.choices:
            choices = ", ".join(self.choices)
            raise UsageError(f"unknown {flag} {value!r}", f"choose one of {choices}")
        if self.per_image and isinstance(value, str):  # text for the model, not a path
            check_text(flag, value)
        elif value == "" or (self.repeat and "" in value):  # a path or name left empty
            raise UsageError(f"{flag} is empty", "give a path, or leave the option out")
        if self.check is not None:
            self.check(flag, value)


OPTIONS: tuple[Option, ...] = (
    # Per image: settable on the command line, on a prompts-file line and in JSONL.
    Option("negative_prompt", ("--negative-prompt", "-n"), "What to keep out of the image.",
           default="", per_image=True, batch="given"),
    Option("seed", ("--seed",), "Base seed; image i uses seed + i (default: random, printed "
           "on stderr).", int, per_image=True, check=_checked_range(0, MAX_SEED),
           infotext="Seed", batch="free"),
    Option("steps", ("--steps", "-s"), "Denoising steps (default: 30; Turbo models: 1).", int,
           per_image=True, check=_checked_range(1, MAX_STEPS), infotext="Steps"),
    Option("guidance", ("--guidance", "-g"), "Classifier-free guidance scale (default: 7.5; "
           "Turbo: 0).", float, per_image=True, check=_check_guidance, infotext="CFG scale"),
    Option("width", ("--width", "-W"), "Image width, a multiple of 8 (default: model's native "
           "size).", int, per_image=True, check=_check_side),
    Option("height", ("--height", "-H"), "Image height, a multiple of 8 (default: model's "
           "native size).", int, per_image=True, check=_check_side),
    Option("num_images", ("--num-images", "-N"), "Images to make from the prompt.", int,
           default=1, per_image=True, check=_checked_range(1, MAX_IMAGES), recorded=False),
    Option("scheduler", ("--scheduler",), "Sampler, built from the model's own scheduler "
           "config (default: the model's saved scheduler).", per_image=True,
           choices=tuple(SCHEDULERS)),
    Option("clip_skip", ("--clip-skip",), "Text-encoder layers to skip from the end, in "
           "A1111's numbering: 1 uses the last, 2 the penultimate (SD 1.x models made for "
           "'Clip skip: 2'). SD 1.x only: SD 2.x and SDXL always use their penultimate "
           "layer, and A1111 ignores Clip skip there too.", int, default=1, per_image=True,
           check=_checked_range(1, MAX_CLIP_SKIP), infotext="Clip skip", infotext_default=1),
    Option("emphasis", ("--emphasis",), "How (word:1.2) weights act, as in A1111: original "
           "(weights, then each chunk's mean restored), no-norm (weights only), ignore "
           "(brackets parsed, weights dropped), none (the prompt taken literally).",
           default="original", per_image=True, choices=tuple(EMPHASIS)),
    Option("variation_seed", ("--variation-seed",), "A second seed, whose noise is mixed "
           "into the seed's by --variation-strength (A1111's Variation seed); image i uses "
           "it + i (default: random).", int, per_image=True, check=_checked_range(0, MAX_SEED),
           infotext="Variation seed", batch="free"),
    Option("variation_strength", ("--variation-strength",), "How much of the variation "
           "seed's noise to mix in, from 0 to 1, by A1111's spherical mix; above 0 every "
           "image of a prompt keeps the seed and only the variation seed goes +1.", float,
           default=0.0, per_image=True, check=_check_fraction,
           infotext="Variation seed strength", infotext_default=0.0),
    Option("ensd", ("--ensd",), "A1111's eta noise seed delta: samplers that add noise at "
           "every step (euler-a, lcm) draw it from seed + ENSD.", int, default=0,
           per_image=True, check=_checked_range(0, MAX_SEED), infotext="ENSD",
           infotext_default=0),
    Option("rng", ("--rng",), "Where the starting noise comes from: cpu (torch's CPU "
           "generator for the seed) or nv (what an NVIDIA GPU's torch.randn gives for the "
           "seed, A1111's default on NVIDIA cards, computed the same on any device).",
           default="cpu", per_image=True, choices=tuple(RNG)),
    # Per run.
    Option("prompts_file", ("--prompts-file", "-f"), "One prompt per line, with optional "
           "per-line options; .jsonl for JSON objects; - reads standard input."),
    Option("from_image", ("--from",), "Draw again with the settings an image records "
           "(txt2img's or A1111's metadata): prompt, seed, sampler, model, add-ons...; the "
           "options given here override them.", Path),
    Option("ignore_unsupported", ("--ignore-unsupported",), "With --from: draw an image "
           "whose metadata records what txt2img does not draw (hires fix, a refiner, "
           "ControlNet...) without it, instead of refusing it.", bool, default=False),
    Option("models_dir", ("--models-dir",), "Folder of checkpoints where --from finds the "
           "model an image names, by its A1111 Model hash, then by name. Repeatable. "
           "Default: $TXT2IMG_MODELS_DIR, folders separated by ':'.", Path, repeat=True,
           envvar="TXT2IMG_MODELS_DIR", check=_check_folders),
    Option("model", ("--model", "-m"), "Hugging Face Hub id, local diffusers folder, or "
           "single-file checkpoint (.safetensors). With --server: a model the server "
           "lists (default: its current one).", default=DEFAULT_MODEL,
           envvar="TXT2IMG_MODEL"),
    Option("server", ("--server",), "Draw in a running `txt2img serve` at this URL "
           "(http://[USER:PASS@]HOST:PORT) and write the images here. The options that "
           "say how to load a model are the server's. --server '' draws here.",
           envvar="TXT2IMG_SERVER",
           check=_check_url),
    Option("output_dir", ("--output-dir", "-o"), "Folder for the PNGs.", Path,
           default=Path("outputs")),
    Option("device", ("--device",), "Where to run; auto picks cuda, then mps, then cpu.",
           default="auto", choices=tuple(Device)),
    Option("dtype", ("--dtype",), "Weights precision; auto is fp16 on CUDA, else fp32.",
           default="auto", choices=tuple(Dtype)),
    Option("quiet", ("--quiet", "-q"), "Print only the image paths.", bool, default=False),
    Option("verbose", ("--verbose", "-v"), "Also show the libraries' own warnings and logs.",
           bool, default=False),
    Option("batch_size", ("--batch-size", "-b"), "Images with the same settings drawn per "
           "pipeline call.", int, default=1, check=_checked_range(1, None)),
    Option("json_lines", ("--json",), "One JSON object per image on stdout, not paths.", bool,
           default=False),
    Option("resume", ("--resume",), "Skip images already on disk; draw only the missing.",
           bool, default=False),
    Option("overwrite", ("--overwrite",), "Replace images already on disk.", bool,
           default=False),
    Option("keep_going", ("--keep-going",), "Report a failed image and go on (exit code 8).",
           bool, default=False),
    Option("config", ("--config",), "For a single-file checkpoint: sd1, sd2, sd2-v, sdxl, or "
           "a diffusers config folder (default: told from the weights)."),
    Option("offline", ("--offline",), "Never use the network; Hub models must be cached.",
           bool, default=False),
    Option("allow_pickle", ("--allow-pickle",), "Allow pickle-based weights (.ckpt/.pt/.bin), "
           "read with torch's weights-only loader. Only for files you trust.", bool,
           default=False),
    Option("vae", ("--vae",), "Replacement VAE: diffusers folder, .safetensors or Hub id."),
    Option("lora", ("--lora",), "LoRA file or Hub id, with an optional :SCALE (default 1). "
           "Repeatable.", repeat=True),
    Option("lora_dir", ("--lora-dir",), "Folder of LoRAs that prompts name with "
           "<lora:NAME:WEIGHT> (NAME: the file's stem). Repeatable; searched in order. "
           "Default: $TXT2IMG_LORA_DIR, folders separated by ':'.", Path,
           repeat=True, envvar="TXT2IMG_LORA_DIR", check=_check_folders),
    Option("embeddings_dir", ("--embeddings-dir",), "Folder of textual-inversion embeddings, "
           "each used when its file's stem appears in a prompt as a word. Repeatable. Default: "
           "$TXT2IMG_EMBEDDINGS_DIR, folders separated by ':'.", Path,
           repeat=True, envvar="TXT2IMG_EMBEDDINGS_DIR", check=_check_folders),
    Option("embedding", ("--embedding",), "Textual-inversion embedding, with an optional "
           ":TOKEN (default: its file name, or the trained token of a folder or Hub id). "
           "Repeatable.", repeat=True),
    Option("save_steps", ("--save-steps",), "Also write NAME-steps.png: the model's estimate "
           "of the clean image every N steps, from noise to the final picture.", int,
           check=_checked_range(1, None)),
    Option("low_vram", ("--low-vram",), "Fit small GPUs: CPU offload, VAE tiling and slicing, "
           "attention slicing.", bool, default=False),
    Option("cpu_offload", ("--cpu-offload",), "Keep each model on the GPU only while it runs.",
           bool, default=False),
    Option("vae_tiling", ("--vae-tiling",), "Decode large images tile by tile.", bool,
           default=False),
    Option("vae_slicing", ("--vae-slicing",), "Decode a batch one image at a time.", bool,
           default=False),
    Option("attention_slicing", ("--attention-slicing",), "Compute attention in slices.",
           bool, default=False),
    Option("compile", ("--compile",), "torch.compile the U-Net and VAE decoder (slow first "
           "run, cached on disk).", bool, default=False),
    Option("fast", ("--fast",), "The speed-ups measured to win on this device (README: "
           "Speed); the pictures stay visually the same, not bit-identical.", bool,
           default=False),
    Option("safety_checker", ("--safety-checker",), "Keep the safety checker of models that "
           "ship one.", bool, default=True, off_flag="--no-safety-checker"),
)  # fmt: skip

# The options of `txt2img serve` beside those of OPTIONS it shares (SERVE_SHARED).
SERVE_OPTIONS: tuple[Option, ...] = (
    Option("host", ("--host",), "Address to listen on. Any but a loopback address needs "
           "--api-auth.", default="127.0.0.1"),
    Option("port", ("--port",), "Port to listen on (0: any free one, printed on stderr).",
           int, default=7860, check=_checked_range(0, 65535)),
    Option("api_auth", ("--api-auth",), "USER:PASS[,USER:PASS...]: every request needs HTTP "
           "Basic credentials. Default: $TXT2IMG_API_AUTH.", envvar="TXT2IMG_API_AUTH"),
    Option("cors_allow_origins", ("--cors-allow-origins",), "Comma-separated origins (e.g. "
           "http://localhost:3000) whose web pages may call the API; none by default."),
    Option("queue_size", ("--queue-size",), "Requests that may wait for the device; more get "
           "503 with Retry-After.", int, default=16, check=_checked_range(1, 10_000)),
    Option("max_batch", ("--max-batch",), "Images one pipeline call may draw from queued "
           "A1111 requests with the same settings: more images a second on a GPU, but their "
           "pixels may then differ from drawing each alone by rounding (1: each alone).", int,
           default=1, check=_checked_range(1, 64)),
    Option("max_pixels", ("--max-pixels",), "Most pixels one pipeline call may draw, width x "
           "height x batch size; larger requests are refused.", int, default=4 * 1024 * 1024,
           check=_checked_range(64, None)),
    Option("client_timeout", ("--client-timeout",), "Seconds a `txt2img --server` client may "
           "leave the images sent to it unread before its run is cancelled (the run waits "
           "meanwhile: a client that stops reading never makes the server hold its images).",
           float, default=60.0, check=_check_seconds),
    Option("models_memory", ("--models-memory",), "GiB of weights the loaded models may take; "
           "the least recently used model is unloaded first (default: half the device's "
           "memory).", float, check=_check_gib),
)  # fmt: skip
# Options of OPTIONS that `txt2img serve` takes too: what and how it loads.
SERVE_SHARED = ("model", "models_dir", "lora_dir", "embeddings_dir", "device", "dtype",
                "offline", "allow_pickle", "fast", "compile", "low_vram", "cpu_offload",
                "vae_tiling", "vae_slicing", "attention_slicing", "safety_checker", "quiet",
                "verbose")  # fmt: skip
# Options a --server run leaves to the server (a run that sets one is refused).
SERVER_SIDE = (*(key for key in SERVE_SHARED if key not in ("model", "quiet", "verbose")),
               "config", "vae", "lora", "embedding")  # fmt: skip

BY_KEY = {option.key: option for option in OPTIONS}
SERVE_BY_KEY = {option.key: option for option in SERVE_OPTIONS}
IMAGE_OPTIONS = tuple(option for option in OPTIONS if option.per_image)
RECORDED_OPTIONS = tuple(option for option in IMAGE_OPTIONS if option.recorded)
# Spellings the command line also knows but that are not in OPTIONS.
OTHER_FLAGS = ("--help", "-h", "--version")


def all_flags() -> tuple[str, ...]:
    """Every spelling the command line accepts."""
    flags = [flag for option in OPTIONS for flag in (*option.flags, option.off_flag) if flag]
    return (*flags, *OTHER_FLAGS)


def from_json(value: Any, kind: type) -> Any:
    """`value`, read from JSON (a JSONL prompt line, a txt2img record, the server's draw
    route), as an option of type `kind` takes it; TypeError if it is none. JSON's own
    types, strictly: "40" and 40.5 are no integer, true is no number; an integer is a
    float too (inf if too big for one, which the option's check refuses)."""
    if isinstance(value, bool) != (kind is bool):
        raise TypeError(value)
    if kind is float and isinstance(value, int | float):
        try:
            return float(value)
        except OverflowError:
            return math.inf
    if not isinstance(value, kind):
        raise TypeError(value)
    return value


def check_prompt(prompt: str) -> None:
    if not prompt.strip():
        raise UsageError("the prompt is empty", "give the text to draw, e.g. txt2img 'a red fox'")
    check_text("the prompt", prompt)
