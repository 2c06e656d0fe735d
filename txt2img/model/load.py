"""Finding, loading and placing a model: Hub id or local diffusers folder, device, dtype.

The denoising loop itself is diffusers' own (StableDiffusionPipeline or
StableDiffusionXLPipeline); this module decides what to load and where.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any
from unittest.mock import patch

import diffusers
import torch
from diffusers import DiffusionPipeline, StableDiffusionPipeline, StableDiffusionXLPipeline
from diffusers.loaders import single_file

from ..errors import (
    ModelError,
    Txt2ImgError,
    UsageError,
    first_line,
    is_out_of_memory,
)
from ..jobs import world
from ..options import STANDARD, TURBO
from ..settings import Device, Dtype, LoadOptions, MemorySavers
from . import hashes
from .addons import AddOn, Loras, addon_errors, load_embeddings, load_loras, load_vae
from .download import fetch_model, hub_cause, hub_error
from .fast import apply_fast_path, speedups_for
from .source import (
    CONFIGS,
    PIPELINE_CLASSES,
    ModelPlan,
    ModelSource,
    SourceKind,
    in_hub_cache,
    readable_config,
)
from .weights import WeightsFormat, load_pickle, named_for_its_format, refused_pickle

PIPELINES = {name: getattr(diffusers, name) for name in PIPELINE_CLASSES}
DTYPES = {Dtype.fp16: torch.float16, Dtype.bf16: torch.bfloat16, Dtype.fp32: torch.float32}
DTYPE_NAMES = {dtype: name.value for name, dtype in DTYPES.items()}


@dataclass(frozen=True)
class ModelDefaults:
    """What a model family draws best with, used wherever the user did not say."""

    family: str
    architecture: str  # "sd1", "sd2" or "sdxl", from the weights whatever the name says
    steps: int
    guidance: float
    width: int
    height: int

    def values(self) -> dict[str, Any]:
        """The per-image options these fill in."""
        return {"steps": self.steps, "guidance": self.guidance,
                "width": self.width, "height": self.height}  # fmt: skip


@dataclass
class LoadedModel:
    pipe: Any
    source: ModelSource
    defaults: ModelDefaults
    device: torch.device
    dtype: torch.dtype
    own_scheduler: Any  # the scheduler saved with the model
    addons: list[AddOn]  # the VAE and the embeddings
    loras: Loras
    embedding_tokens: dict[str, str]  # a prompt's token -> the tokenizers' private one
    speedups: tuple[str, ...]  # fast.PARTS in use
    schedulers: dict[str, Any] = field(default_factory=dict)  # --scheduler names, built once

    @property
    def dtype_name(self) -> str:
        return DTYPE_NAMES[self.dtype]

    @cached_property
    def model_hash(self) -> str | None:
        """A1111's `Model hash` of a single-file checkpoint (hashed once, then cached)."""
        if self.source.kind is not SourceKind.file:
            return None
        return hashes.model_hash(Path(self.source.location))


def pick_device(choice: Device) -> torch.device:
    """Under `accelerate launch` or `torchrun` (several processes), each process takes
    the GPU of its LOCAL_RANK; no process group is joined, since nothing in a run needs
    one process to wait for another."""
    cuda, mps = torch.cuda.is_available(), torch.backends.mps.is_available()
    if (choice is Device.cuda and not cuda) or (choice is Device.mps and not mps):
        raise UsageError(
            f"--device {choice.value} was asked for but torch sees no such device",
            "use --device cpu, or install a torch build for that device",
        )
    auto = "cuda" if cuda else "mps" if mps else "cpu"
    kind = auto if choice is Device.auto else choice.value
    if kind == "cuda" and world()[1] > 1:
        local_rank = int(os.environ.get("LOCAL_RANK", world()[0]))
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device(kind)


def pick_dtype(choice: Dtype, device: torch.device, speedups: tuple[str, ...] = ()) -> torch.dtype:
    """fp16 on CUDA; fp32 on CPU and on MPS, where fp16 has given NaN/black images; bf16
    where the fast path chose it (fast.speedups_for)."""
    if "bf16" in speedups:
        return torch.bfloat16
    if choice is Dtype.auto:
        return torch.float16 if device.type == "cuda" else torch.float32
    if choice is Dtype.bf16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UsageError("this GPU does not support bf16", "use --dtype fp16")
    return DTYPES[choice]


def open_model(
    plan: ModelPlan,
    options: LoadOptions,
    speedups: tuple[str, ...] | None = None,
    loras_later: bool = False,
    quiet: bool = False,
) -> LoadedModel:
    """The whole loading sequence: device, speed-ups (those of `options`, or exactly
    `speedups`), dtype, a Hub model's download (said on stderr unless `quiet`), weights,
    add-ons, placement. `loras_later`: LoRAs may be loaded after this (`txt2img serve`),
    so no speed-up may exclude them."""
    device = pick_device(options.device)
    if speedups is None:
        has_loras = bool(plan.loras or plan.named_loras or loras_later)
        speedups = speedups_for(options, device, has_loras=has_loras)
    dtype = pick_dtype(options.dtype, device, speedups)
    source = plan.source
    try:
        if source.kind is SourceKind.file:
            # A pickle is read once, by `load_pickle`, for the family and the weights.
            state = load_pickle(Path(source.location)) if source.weights_format is (
                WeightsFormat.pickle
            ) else None  # fmt: skip
            config = plan.config or CONFIGS / checkpoint_family(
                Path(source.location), source.weights_format, state
            )
            pipe = _load_single_file(source, config, dtype, state)
            vae_config = (str(config), "vae")
        else:
            pipe = _load_pretrained(plan, options, dtype, quiet)
            vae_config = (source.location, "vae")
    except Exception as exc:
        if isinstance(exc, Txt2ImgError) or is_out_of_memory(exc):
            raise
        raise _load_error(source, exc) from exc
    addons, loras, embedding_tokens = apply_addons(pipe, plan, vae_config, dtype, options.offline)
    pipe.set_progress_bar_config(disable=True)
    place(pipe, device, options.memory)
    apply_fast_path(pipe, speedups)
    defaults = model_defaults(pipe, source.name)
    return LoadedModel(
        pipe, source, defaults, device, dtype, pipe.scheduler, addons, loras, embedding_tokens,
        speedups,
    )  # fmt: skip


def _load_pretrained(plan: ModelPlan, options: LoadOptions, dtype: torch.dtype, quiet: bool) -> Any:
    """A diffusers folder or Hub id. In fp16, the repository's fp16 variant where it has
    one (half the download), else its full weights. Pickled `.bin` weights only for a
    folder `plan_model` found and allowed them in (diffusers and transformers read them
    with torch's weights-only loader). A Hub model is downloaded first, by
    `download.fetch_model`, which tells whether it has the fp16 variant; diffusers then
    reads the cache only, so nothing is downloaded out of sight."""
    location = plan.source.location
    fp16 = dtype == torch.float16
    variant = fp16 and has_fp16_variant(plan.source)
    if plan.source.kind is SourceKind.hub and not options.offline:
        fetched = fetch_model(location, fp16, options.safety_checker, quiet)
        variant = variant if fetched is None else fetched
    pipeline_class = _pipeline_class(DiffusionPipeline.load_config(location, local_files_only=True))
    kwargs: dict[str, Any] = {
        "dtype": dtype,
        # None: each component from its safetensors file where it has one, else from the
        # pickles plan_model checked and allowed.
        "use_safetensors": None if plan.pickled_folder else True,
        "local_files_only": True,
    }
    if not options.safety_checker and pipeline_class is StableDiffusionPipeline:
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    if variant:
        try:
            return pipeline_class.from_pretrained(location, variant="fp16", **kwargs)
        except ValueError as exc:
            if "no such modeling files" not in str(exc):
                raise
    return pipeline_class.from_pretrained(location, **kwargs)


def has_fp16_variant(source: ModelSource) -> bool:
    """A folder tells by its file names; a Hub repository is asked (a miss falls back)."""
    if source.kind is SourceKind.hub:
        return True
    return any(".fp16." in path.name for path in Path(source.location).glob("*/*"))


def apply_addons(
    pipe: Any, plan: ModelPlan, vae_config: tuple[str, str], dtype: torch.dtype, offline: bool
) -> tuple[list[AddOn], Loras, dict[str, str]]:
    """`vae_config` (folder or Hub id, subfolder) configures a single-file VAE."""
    addons: list[AddOn] = []
    with addon_errors():
        if plan.vae is not None:
            pipe.vae, vae = load_vae(plan.vae, vae_config, dtype, offline)
            addons.append(vae)
        loras = load_loras(pipe, list(plan.loras), plan.named_loras, offline)
        embeddings, tokens = load_embeddings(
            pipe, list(plan.embeddings), offline, plan.allow_pickle
        )
        addons += embeddings
    return addons, loras, tokens


def place(pipe: Any, device: torch.device, memory: MemorySavers) -> None:
    """Move the pipeline to its device, with the memory savers asked for."""
    if memory.cpu_offload and device.type != "cpu":
        pipe.enable_model_cpu_offload(gpu_id=device.index, device=device.type)
    else:
        pipe.to(device)
    if memory.vae_tiling:
        pipe.vae.enable_tiling()
    if memory.vae_slicing:
        pipe.vae.enable_slicing()
    if memory.attention_slicing:
        pipe.enable_attention_slicing()


def _load_single_file(
    source: ModelSource, config: Path, dtype: torch.dtype, state: dict[str, Any] | None
) -> Any:
    """An original-layout checkpoint, configured from a local diffusers config folder so
    diffusers never fetches configs from the Hub (`local_files_only` alone does not stop
    it). The folder is `--config`, or the built-in one for the family in the weights.
    A pickle's tensors (`state`, read by `weights.load_pickle`) are handed over as
    they are, so diffusers never unpickles anything itself."""
    path = Path(source.location)
    pipeline_class = _pipeline_class(json.loads((config / "model_index.json").read_text()))
    with (
        named_for_its_format(path, source.weights_format) as named,
        _tensors_from_us(state),
        readable_config(config) as folder,
    ):
        # Single files carry no safety checker; say so, so diffusers does not warn.
        no_checker = {"requires_safety_checker": False}
        return pipeline_class.from_single_file(
            str(named), config=str(folder), local_files_only=True, dtype=dtype,
            **(no_checker if pipeline_class is StableDiffusionPipeline else {}),
        )  # fmt: skip


@contextmanager
def _tensors_from_us(state: dict[str, Any] | None) -> Iterator[None]:
    """While a pipeline is built from a pickled single file, diffusers' checkpoint
    reader returns the state dict our own reader made."""
    if state is None:
        yield
        return
    with patch.object(single_file, "load_single_file_checkpoint", lambda *a, **k: state):
        yield


def checkpoint_family(
    path: Path, weights_format: WeightsFormat, state: dict[str, Any] | None = None
) -> str:
    """Which built-in config fits an original-layout checkpoint, from its tensor names
    (those of `state`, a pickle's tensors already read, where given)."""
    shapes = _tensor_shapes(path, weights_format, state)
    first_conv = shapes.get("model.diffusion_model.input_blocks.0.0.weight")
    if first_conv is None:
        raise ModelError(
            f"{path} holds no Stable Diffusion U-Net in the original layout",
            "txt2img loads SD 1.x, SD 2.x and SDXL checkpoints",
        )
    if first_conv[1] != 4:
        raise ModelError(
            f"{path} is an inpainting or other special-purpose checkpoint "
            f"({first_conv[1]} input channels)",
            "txt2img draws with text-to-image checkpoints (4 input channels)",
        )
    if any(key.startswith("conditioner.embedders.1.model.") for key in shapes):
        return "sdxl"
    if any(key.startswith("cond_stage_model.model.") for key in shapes):
        # The weights of SD 2.x 768 (v-prediction) and 512 (epsilon) models look alike.
        stem = path.stem.lower()
        return "sd2" if "base" in stem or "512" in stem else "sd2-v"
    if any(key.startswith("cond_stage_model.transformer.") for key in shapes):
        return "sd1"
    raise ModelError(
        f"{path} is not an SD 1.x, SD 2.x or SDXL checkpoint (an SDXL refiner?)",
        "pass --config with a diffusers config folder that matches it",
    )


def _tensor_shapes(
    path: Path, weights_format: WeightsFormat, state: dict[str, Any] | None
) -> dict[str, tuple[int, ...]]:
    if weights_format is WeightsFormat.safetensors:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as weights:
            return {key: tuple(weights.get_slice(key).get_shape()) for key in weights.keys()}  # noqa: SIM118
    # Only reached with --allow-pickle; a zip file is mapped, not read.
    checkpoint = state if state is not None else load_pickle(path)
    return {key: tuple(value.shape) for key, value in checkpoint.items()}


def _pipeline_class(model_index: dict[str, Any]) -> type:
    class_name = model_index.get("_class_name")
    if class_name not in PIPELINES:
        raise ModelError(
            f"the model is a {class_name}, which txt2img does not run",
            f"supported: {', '.join(PIPELINES)} (SD 1.x, SD 2.x, SDXL and their Turbo models)",
        )
    return PIPELINES[class_name]


def model_defaults(pipe: Any, name: str) -> ModelDefaults:
    """Family-aware defaults: Turbo models are distilled for few steps and no guidance.

    Turbo is recognised by its name (stabilityai/sd-turbo, stabilityai/sdxl-turbo and
    their copies); the native size is the one the U-Net config declares.
    """
    unet = pipe.unet.config
    side = unet.sample_size * pipe.vae_scale_factor
    turbo = "turbo" in name.lower()
    if isinstance(pipe, StableDiffusionXLPipeline):
        architecture = "sdxl"
    elif unet.use_linear_projection or unet.cross_attention_dim == 1024:
        architecture = "sd2"
    else:
        architecture = "sd1"
    family = ("sdxl-turbo" if architecture == "sdxl" else "sd-turbo") if turbo else architecture
    defaults = TURBO if turbo else STANDARD
    return ModelDefaults(family, architecture, defaults.steps, defaults.guidance, side, side)


def _load_error(source: ModelSource, exc: Exception) -> ModelError:
    model = source.location
    if source.is_local:
        return refused_pickle(exc, model) or ModelError(
            f"cannot load the model in {model}: {first_line(exc)}",
            f"the {source.kind.value} looks incomplete or damaged; copy or download it again",
        )
    if hub_cause(exc) or not in_hub_cache(model):
        return hub_error(model, exc)
    return ModelError(
        f"cannot load {model} from the Hugging Face cache: {first_line(exc)}",
        "the cached copy looks incomplete or damaged; delete it from the cache to download it "
        "again",
    )
