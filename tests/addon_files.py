"""Tiny add-on files in the formats people download, for the tiny models of
``scripts/make_tiny_model.py``: LoRAs (diffusers/PEFT and kohya/A1111 key names), textual
inversion embeddings (A1111 ``emb_params``, SDXL ``clip_l``/``clip_g``) and replacement VAEs
(a diffusers folder, and a standalone original-layout ``.safetensors`` file).

Weights are random but deterministic (seeded). LoRA ``lora_B`` is non-zero (PEFT's default
initialisation sets it to zero, which would change nothing), and large enough that the image
visibly changes.

LoRA formats, both read by ``pipe.load_lora_weights``:

* diffusers: ``unet.<module>.lora_A.weight`` / ``.lora_B.weight``, ``text_encoder.<module>...``
  (and ``text_encoder_2.`` for SDXL), written by the pipeline's own ``save_lora_weights``.
  Without adapter metadata diffusers takes ``lora_alpha = rank`` (scale 1).
* kohya-ss / A1111: ``lora_unet_<module_with_underscores>.lora_down.weight``, ``.lora_up.weight``
  and ``.alpha``; text encoders ``lora_te_text_model_...`` (SDXL: ``lora_te1_`` / ``lora_te2_``).
  kohya trains SD 1.x on the diffusers U-Net (``down_blocks_...``) but SDXL on the original sgm
  U-Net, so SDXL names are ``input_blocks_4_1_...`` / ``middle_block_1_...`` /
  ``output_blocks_...`` (mapped back by diffusers' ``_maybe_map_sgm_blocks_to_diffusers``).
  With ``alpha = rank`` the scale is 1, so the file equals the diffusers one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from ldm_export import unet_table, vae_state
from safetensors.torch import save_file

#: Modules a usual SD LoRA trains: the U-Net transformer blocks (attention, feed-forward and
#: the 1x1 / linear projections around them) and the CLIP attention and MLP layers.
UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in",
                "proj_out")  # fmt: skip
TEXT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
TEXT_ENCODERS = ("text_encoder", "text_encoder_2")


def load_pipeline(pipe_or_model_dir: Any) -> Any:
    if isinstance(pipe_or_model_dir, (str, Path)):
        from diffusers import DiffusionPipeline

        return DiffusionPipeline.from_pretrained(pipe_or_model_dir, local_files_only=True)
    return pipe_or_model_dir


def is_sdxl(pipe: Any) -> bool:
    return getattr(pipe, "text_encoder_2", None) is not None


def _targets(model: Any, names: tuple[str, ...]) -> list[tuple[str, torch.nn.Module]]:
    return [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d))
        and any(name == t or name.endswith("." + t) for t in names)
    ]


def _pair(module: torch.nn.Module, rank: int, generator: torch.Generator, std: float):
    """lora_A [r, in(, k, k)] and lora_B [out, r(, 1, 1)] for one Linear or Conv2d."""
    if isinstance(module, torch.nn.Conv2d):
        a_shape = (rank, module.in_channels, *module.kernel_size)
        b_shape = (module.out_channels, rank, 1, 1)
    else:
        a_shape, b_shape = (rank, module.in_features), (module.out_features, rank)
    fan_in = torch.Size(a_shape[1:]).numel()
    down = torch.randn(a_shape, generator=generator) / fan_in**0.5
    up = torch.randn(b_shape, generator=generator) * std
    return down.contiguous(), up.contiguous()


def lora_layers(
    pipe_or_model_dir: Any, seed: int, rank: int = 4, text_encoder: bool = True, std: float = 0.5
) -> dict[str, dict[str, torch.Tensor]]:
    """{component: {"<module>.lora_A.weight": ..., "<module>.lora_B.weight": ...}} with module
    names as PEFT sees them in this pipeline (what ``get_peft_model_state_dict`` returns)."""
    pipe = load_pipeline(pipe_or_model_dir)
    generator = torch.Generator().manual_seed(seed)
    components = {"unet": (pipe.unet, UNET_TARGETS)}
    if text_encoder:
        for name in TEXT_ENCODERS:
            if getattr(pipe, name, None) is not None:
                components[name] = (getattr(pipe, name), TEXT_TARGETS)
    layers: dict[str, dict[str, torch.Tensor]] = {}
    for component, (model, names) in components.items():
        layers[component] = {}
        for name, module in _targets(model, names):
            down, up = _pair(module, rank, generator, std)
            layers[component][f"{name}.lora_A.weight"] = down
            layers[component][f"{name}.lora_B.weight"] = up
    return layers


def write_diffusers_lora(
    pipe_or_model_dir: Any,
    path: str | Path,
    seed: int,
    rank: int = 4,
    text_encoder: bool = True,
    alpha: float | None = None,
) -> Path:
    """A diffusers/PEFT-format LoRA written by the pipeline class's own ``save_lora_weights``.

    ``alpha`` (default: none stored, so diffusers uses ``lora_alpha = rank``) is recorded the way
    diffusers' training scripts do: as LoRA adapter metadata in the safetensors header."""
    pipe = load_pipeline(pipe_or_model_dir)
    layers = lora_layers(pipe, seed, rank, text_encoder)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    kwargs: dict[str, Any] = {f"{c}_lora_layers": state for c, state in layers.items()}
    if alpha is not None:
        from peft import LoraConfig

        for component, state in layers.items():
            modules = sorted({key.rsplit(".lora_", 1)[0] for key in state})
            config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=modules)
            kwargs[f"{component}_lora_adapter_metadata"] = config.to_dict()
    type(pipe).save_lora_weights(path.parent, weight_name=path.name, **kwargs)
    return path


def kohya_name(component: str, module: str, pipe: Any) -> str:
    """The kohya-ss module name (before ``.lora_down.weight``) of a diffusers module name."""
    if component == "unet":
        if is_sdxl(pipe):  # kohya's SDXL U-Net is the sgm/LDM one
            table = unet_table(pipe.unet.config)
            old = next(p for p in table if (module + ".").startswith(p))
            module = (table[old] + (module + ".")[len(old) :]).rstrip(".")
        return "lora_unet_" + module.replace(".", "_")
    prefix = {"text_encoder": "lora_te1_" if is_sdxl(pipe) else "lora_te_",
              "text_encoder_2": "lora_te2_"}[component]  # fmt: skip
    module = module.removeprefix("text_model.")  # transformers >= 5.6 flattened CLIPTextModel
    return prefix + "text_model_" + module.replace(".", "_")


def kohya_state(
    pipe_or_model_dir: Any,
    seed: int,
    rank: int = 4,
    text_encoder: bool = True,
    alpha: float | None = None,
) -> dict[str, torch.Tensor]:
    """The same LoRA as ``write_diffusers_lora(..., seed, rank)``, with kohya key names and
    ``alpha`` per module (default ``rank``: scale 1, so both files are the same LoRA)."""
    pipe = load_pipeline(pipe_or_model_dir)
    state: dict[str, torch.Tensor] = {}
    for component, layers in lora_layers(pipe, seed, rank, text_encoder).items():
        for key, value in layers.items():
            module, kind = key.rsplit(".lora_", 1)
            name = kohya_name(component, module, pipe)
            state[f"{name}.{'lora_down' if kind.startswith('A') else 'lora_up'}.weight"] = value
            state[f"{name}.alpha"] = torch.tensor(float(rank if alpha is None else alpha))
    return state


def write_kohya_lora(
    pipe_or_model_dir: Any,
    path: str | Path,
    seed: int,
    rank: int = 4,
    text_encoder: bool = True,
    alpha: float | None = None,
) -> Path:
    """``kohya_state`` as a safetensors file with the metadata kohya-ss writes."""
    pipe = load_pipeline(pipe_or_model_dir)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(rank),
        "ss_network_alpha": str(float(rank if alpha is None else alpha)),
        "ss_base_model_version": "sdxl_base_v1-0" if is_sdxl(pipe) else "sd_v1",
    }
    save_file(kohya_state(pipe, seed, rank, text_encoder, alpha), path, metadata=metadata)
    return path


def text_encoder_dims(model_dir: str | Path) -> dict[str, int]:
    """Token-embedding width of each text encoder of a diffusers folder, from its config."""
    dims = {}
    for name in TEXT_ENCODERS:
        config = Path(model_dir) / name / "config.json"
        if config.is_file():
            dims[name] = json.loads(config.read_text())["hidden_size"]
    return dims


def write_embedding(path: str | Path, dim: int, vectors: int = 2, seed: int = 0) -> Path:
    """An A1111 textual inversion ``.safetensors``: ``emb_params`` of shape [vectors, dim]."""
    generator = torch.Generator().manual_seed(seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"emb_params": torch.randn(vectors, dim, generator=generator)}, path)
    return path


def write_sdxl_embedding(
    path: str | Path, clip_l: int, clip_g: int, vectors: int = 2, seed: int = 0
) -> Path:
    """An SDXL textual inversion: ``clip_l`` (first text encoder) and ``clip_g`` (second)."""
    generator = torch.Generator().manual_seed(seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "clip_g": torch.randn(vectors, clip_g, generator=generator),
        "clip_l": torch.randn(vectors, clip_l, generator=generator),
    }
    save_file(state, path)
    return path


def write_vae(model_dir: str | Path, folder: str | Path, seed: int) -> Path:
    """A replacement VAE as a diffusers folder: the model's own VAE config, weights
    re-initialised from ``seed`` (the global torch RNG is left as it was)."""
    from diffusers import AutoencoderKL

    config = AutoencoderKL.load_config(Path(model_dir) / "vae")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        vae = AutoencoderKL.from_config(config).eval()
    vae.save_pretrained(folder, safe_serialization=True)
    return Path(folder)


def write_vae_file(vae_folder: str | Path, path: str | Path) -> Path:
    """The VAE of a diffusers folder as one original-layout file, like the standalone VAEs
    people download (``vae-ft-mse-840000-ema-pruned.safetensors``): bare ``encoder.*``,
    ``decoder.*``, ``quant_conv.*``, ``post_quant_conv.*`` keys, attention as 1x1 convs, no
    ``first_stage_model.`` prefix (that prefix is only inside full checkpoints)."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(vae_folder, local_files_only=True)
    prefix = "first_stage_model."
    state = {k.removeprefix(prefix): v.contiguous() for k, v in vae_state(vae).items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, path, metadata={"format": "pt"})
    return path


class Canary:
    """Unpickling this would create a file: the proof that code ran."""

    def __init__(self, path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def write_evil_pickle(path: Path, canary: Path) -> None:
    """A checkpoint-shaped pickle that creates `canary` if it is ever unpickled."""
    torch.save({"state_dict": {"evil": Canary(canary)}}, path)
