"""Add-ons on top of a model: a replacement VAE, LoRAs and textual-inversion embeddings.

Local files are read here, by format as told from their bytes (pickles only with
--allow-pickle, through torch's weights-only loader), and handed to diffusers as tensors,
so diffusers never decides how to unpickle anything.
"""

from __future__ import annotations

import hashlib
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, StableDiffusionXLPipeline

from .checkpoints import WeightsFormat, named_for_its_format, refused_pickle
from .errors import ModelError
from .model_source import ModelSource, SourceKind


@dataclass(frozen=True)
class AddOn:
    """What the metadata records of an add-on: A1111 shows `name: hash`."""

    kind: str  # "vae", "lora" or "embedding"
    name: str
    hash: str | None  # short sha256 of the file; None for Hub ids and folders
    scale: float | None = None  # LoRAs
    token: str | None = None  # embeddings


def read_weights(source: ModelSource) -> dict[str, torch.Tensor]:
    path = source.location
    if source.weights_format is WeightsFormat.safetensors:
        from safetensors.torch import load_file

        return load_file(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise refused_pickle(exc, path) from exc
    while isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    return state


def short_hash(path: str, length: int, skip_safetensors_header: bool = False) -> str:
    """sha256 of the file, as A1111 and Civitai show it. For LoRAs they hash only the
    tensor data after the safetensors header ("AutoV3"), so metadata edits keep it."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        if skip_safetensors_header:
            header_length = int.from_bytes(handle.read(8), "little")
            handle.seek(8 + header_length)
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:length]


def _name_and_hash(
    source: ModelSource, length: int, autov3: bool = False
) -> tuple[str, str | None]:
    if source.kind is SourceKind.file:
        skip = autov3 and source.weights_format is WeightsFormat.safetensors
        return Path(source.location).stem, short_hash(source.location, length, skip)
    return Path(source.location).name if source.is_local else source.location, None


def load_vae(
    source: ModelSource, model_config: tuple[str, str], dtype: torch.dtype, offline: bool
) -> tuple[Any, AddOn]:
    """A VAE from a diffusers folder, a Hub id, or a single file. A single file is
    configured from the model's own VAE config (`model_config`: folder or id, subfolder),
    so nothing is fetched."""
    if source.kind is SourceKind.file:
        config, subfolder = model_config
        with named_for_its_format(Path(source.location), source.weights_format) as named:
            vae = AutoencoderKL.from_single_file(
                str(named), config=config, subfolder=subfolder, local_files_only=True,
                torch_dtype=dtype,
            )  # fmt: skip
    else:
        vae = AutoencoderKL.from_pretrained(
            source.location, dtype=dtype, use_safetensors=True, local_files_only=offline
        )
    name, digest = _name_and_hash(source, 10)
    return vae, AddOn("vae", name, digest)


def load_loras(pipe: Any, loras: list[tuple[ModelSource, float]], offline: bool) -> list[AddOn]:
    """Stack LoRAs (kohya/A1111 or diffusers format) with their own scales."""
    names, records = [], []
    for number, (source, scale) in enumerate(loras):
        adapter = f"lora{number}"
        if source.kind is SourceKind.file and source.weights_format is WeightsFormat.pickle:
            pipe.load_lora_weights(read_weights(source), adapter_name=adapter)
        elif source.kind is SourceKind.file:
            # By path, so diffusers also reads the header's metadata (the LoRA's alpha).
            with named_for_its_format(Path(source.location), source.weights_format) as named:
                pipe.load_lora_weights(str(named), adapter_name=adapter)
        else:
            pipe.load_lora_weights(
                source.location, adapter_name=adapter, use_safetensors=True,
                local_files_only=offline,
            )  # fmt: skip
        names.append(adapter)
        name, digest = _name_and_hash(source, 12, autov3=True)
        records.append(AddOn("lora", name, digest, scale=scale))
    if names:
        pipe.set_adapters(names, adapter_weights=[record.scale for record in records])
    return records


def load_embeddings(
    pipe: Any, embeddings: list[tuple[ModelSource, str | None]], offline: bool
) -> list[AddOn]:
    """Textual inversions; the trigger token defaults to the file name, as in A1111.
    SDXL embeddings carry one vector set per text encoder (`clip_l`, `clip_g`)."""
    records = []
    for source, token in embeddings:
        name, digest = _name_and_hash(source, 12)
        token = token or name
        if source.kind is SourceKind.file:
            _load_embedding_file(pipe, read_weights(source), token, source.location)
        else:
            pipe.load_textual_inversion(source.location, token=token, local_files_only=offline)
        records.append(AddOn("embedding", name, digest, token=token))
    return records


def _load_embedding_file(pipe: Any, state: dict[str, Any], token: str, path: str) -> None:
    if isinstance(pipe, StableDiffusionXLPipeline):
        if not {"clip_l", "clip_g"} <= set(state):
            raise ModelError(
                f"{path} is not an SDXL embedding (it has no clip_l and clip_g vectors)",
                "use an embedding made for SDXL",
            )
        pipe.load_textual_inversion(
            state["clip_l"], token=token, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer
        )
        pipe.load_textual_inversion(
            state["clip_g"], token=token, text_encoder=pipe.text_encoder_2,
            tokenizer=pipe.tokenizer_2,
        )  # fmt: skip
    elif {"clip_l", "clip_g"} & set(state):
        raise ModelError(
            f"{path} is an SDXL embedding; this model is not SDXL", "use one made for SD 1.x/2.x"
        )
    else:
        pipe.load_textual_inversion(state, token=token)
