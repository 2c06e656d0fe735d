"""Add-ons on top of a model: a replacement VAE, LoRAs and textual-inversion embeddings.

Local files are read here, by format as told from their bytes (pickles only with
--allow-pickle, through torch's weights-only loader), and handed to diffusers as tensors,
so diffusers never decides how to unpickle anything.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, StableDiffusionXLPipeline

from ..errors import (
    ModelError,
    Txt2ImgError,
    UnsafeCheckpointError,
    first_line,
    is_out_of_memory,
)
from .hashes import file_sha256
from .source import ADDON_FILES, EmbeddingRef, ModelSource, SourceKind, pickled_files
from .weights import (
    WeightsFormat,
    check_weights_file,
    load_pickle,
    named_for_its_format,
    refused_pickle,
)


@dataclass(frozen=True)
class AddOn:
    """What the metadata records of an add-on: A1111 shows `name: hash`."""

    kind: str  # "vae", "lora" or "embedding"
    name: str
    hash: str | None  # short sha256 of the file; None for Hub ids and folders
    scale: float | None = None  # LoRAs: the weight on the U-Net
    token: str | None = None  # embeddings
    te_scale: float | None = None  # LoRAs: the weight on the text encoders
    location: str | None = None  # the file or folder (absolute) or Hub id, for --from


def read_weights(source: ModelSource) -> dict[str, torch.Tensor]:
    """A local weights file, by the format its bytes have."""
    if source.weights_format is WeightsFormat.safetensors:
        from safetensors.torch import load_file

        return load_file(source.location)
    return load_pickle(Path(source.location))


def _name_and_hash(
    source: ModelSource, length: int, autov3: bool = False
) -> tuple[str, str | None]:
    """The file's sha256, as A1111 and Civitai show it (`hashes`, hashed once). For
    LoRAs they hash only the tensor data after the safetensors header ("AutoV3"), so
    metadata edits keep it."""
    if source.kind is SourceKind.file and not source.in_folder:
        skip = autov3 and source.weights_format is WeightsFormat.safetensors
        return source.name, file_sha256(Path(source.location), after_header=skip)[:length]
    return source.name, None


def load_vae(
    source: ModelSource, model_config: tuple[str, str], dtype: torch.dtype, offline: bool
) -> tuple[Any, AddOn]:
    """A VAE from a diffusers folder, a Hub id, or a single file. A single file is
    configured from the model's own VAE config (`model_config`: folder or id, subfolder),
    so nothing is fetched."""
    if source.kind is SourceKind.file:
        config, subfolder = model_config
        vae = AutoencoderKL.from_single_file(
            read_weights(source), config=config, subfolder=subfolder, local_files_only=True,
            dtype=dtype,
        )  # fmt: skip
    else:
        pickled = source.is_local and bool(pickled_files(Path(source.location)))
        vae = AutoencoderKL.from_pretrained(
            source.location, dtype=dtype, use_safetensors=None if pickled else True,
            local_files_only=offline,
        )  # fmt: skip
    name, digest = _name_and_hash(source, 10)
    return vae, AddOn("vae", name, digest, location=source.location)


@dataclass(frozen=True)
class Lora:
    adapter: str  # its diffusers adapter name
    name: str  # A1111's: the file's stem (the tag's NAME)
    hash: str | None
    location: str


@dataclass
class Loras:
    """The run's LoRAs, each file loaded once as one adapter: those of --lora, always on,
    and those that prompts' tags name, on for the calls of those prompts only."""

    pipe: Any
    offline: bool = False
    fixed: list[tuple[Lora, float]] = field(default_factory=list)
    named: dict[str, Lora] = field(default_factory=dict)
    by_location: dict[str, Lora] = field(default_factory=dict)
    active: tuple | None = None  # the adapters and weights set on the pipeline now

    def load(self, source: ModelSource, name: str | None = None) -> Lora:
        """The file's adapter, loaded on first use; under a tag's `name`, tags find it."""
        if source.location not in self.by_location:
            adapter = f"lora{len(self.by_location)}"
            _load_lora(self.pipe, source, adapter, self.offline)
            _, digest = _name_and_hash(source, 12, autov3=True)
            lora = Lora(adapter, name or source.name, digest, source.location)
            self.by_location[source.location] = lora
        lora = self.by_location[source.location]
        if name is not None:
            self.named.setdefault(name, lora)
        return lora

    def use(self, tags: tuple[Any, ...]) -> None:
        """Switch the pipeline to --lora plus `tags` (`prompt.syntax.LoraTag`)."""
        wanted = tuple((lora.adapter, te, unet) for lora, (te, unet) in self._weights(tags))
        if wanted != self.active and self.by_location:
            self._apply(wanted)
            self.active = wanted

    def records(self, tags: tuple[Any, ...]) -> list[AddOn]:
        return [
            AddOn("lora", lora.name, lora.hash, scale=unet, te_scale=te, location=lora.location)
            for lora, (te, unet) in self._weights(tags)
        ]

    def _weights(self, tags: tuple[Any, ...]) -> list[tuple[Lora, tuple[float, float]]]:
        """(text-encoder, U-Net) weight of each LoRA in use. A file named twice adds its
        weights, as stacking it twice would."""
        weights: dict[Lora, tuple[float, float]] = {}
        named = [(self.named[tag.name], tag.te, tag.unet) for tag in tags]
        for lora, te, unet in [(lora, scale, scale) for lora, scale in self.fixed] + named:
            old_te, old_unet = weights.get(lora, (0.0, 0.0))
            weights[lora] = (old_te + te, old_unet + unet)
        return list(weights.items())

    def _apply(self, wanted: tuple) -> None:
        if not wanted:
            self.pipe.disable_lora()
            return
        self.pipe.enable_lora()
        encoders = ["text_encoder"]
        if isinstance(self.pipe, StableDiffusionXLPipeline):
            encoders.append("text_encoder_2")
        self.pipe.set_adapters(
            [adapter for adapter, _, _ in wanted],
            adapter_weights=[
                {"unet": unet, **dict.fromkeys(encoders, te)} for _, te, unet in wanted
            ],
        )


def load_loras(
    pipe: Any,
    fixed: list[tuple[ModelSource, float]],
    named: dict[str, ModelSource],
    offline: bool,
) -> Loras:
    """Load every LoRA file once (kohya/A1111 or diffusers format); --lora ones go on."""
    loras = Loras(pipe, offline)
    loras.fixed = [(loras.load(source), scale) for source, scale in fixed]
    for name, source in named.items():
        loras.load(source, name)
    loras.use(())
    return loras


def _load_lora(pipe: Any, source: ModelSource, adapter: str, offline: bool) -> None:
    try:
        _load_lora_weights(pipe, source, adapter, offline)
    except (ValueError, KeyError, RuntimeError) as exc:
        if is_out_of_memory(exc):
            raise
        raise ModelError(
            f"cannot apply the LoRA {source.location}: {first_line(exc)}",
            "check that it is a LoRA made for this model family",
        ) from exc


def _load_lora_weights(pipe: Any, source: ModelSource, adapter: str, offline: bool) -> None:
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


@contextmanager
def addon_errors() -> Iterator[None]:
    """A VAE, LoRA or embedding that fails to load, said the same way by a run and by
    the server: a library's error becomes a model error (exit 3) naming the add-on."""
    try:
        yield
    except Exception as exc:
        if isinstance(exc, Txt2ImgError) or is_out_of_memory(exc):
            raise
        raise refused_pickle(exc, "an add-on") or ModelError(
            f"cannot apply add-on: {first_line(exc)}",
            "check that the LoRA, VAE or embedding was made for this model family",
        ) from exc


def load_embeddings(
    pipe: Any, embeddings: list[EmbeddingRef], offline: bool, allow_pickle: bool, first: int = 0
) -> tuple[list[AddOn], dict[str, str]]:
    """Textual inversions, every one read by `read_weights` (a Hub id's file is fetched
    first); their records, and for each the tokenizer token it is loaded under. The
    token a prompt uses (see `EmbeddingRef`) is matched by `prompt.encode` as a whole word
    in any case, as A1111 matches it on whole tokens; the tokenizers only know a private
    token, so a name never acts inside another word ("bad" in "badge") and may be a word
    of CLIP's own vocabulary. SDXL embeddings carry one vector set per text encoder
    (`clip_l`, `clip_g`). `first`: how many embeddings the pipeline has already."""
    records, tokens = [], {}
    for number, ref in enumerate(embeddings, start=first):
        name, digest = _name_and_hash(ref.source, 12)
        source = ref.source
        if source.kind is SourceKind.hub:
            source = fetch_embedding(source.location, offline, allow_pickle)
        state = read_weights(source)
        trained = None if ref.default_token_is_name else trained_token(state)
        token = ref.token or trained or name
        private = f"<txt2img-embedding-{number}>"
        _load_embedding_file(pipe, state, private, source.location)
        records.append(AddOn("embedding", name, digest, token=token, location=ref.source.location))
        tokens.setdefault(token, private)
    return records, tokens


def fetch_embedding(repo_id: str, offline: bool, allow_pickle: bool) -> ModelSource:
    """A Hub embedding's file: learned_embeds.safetensors, or with --allow-pickle the
    .bin pickle a repository may have instead (then checked by its bytes)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    safe, pickled = ADDON_FILES["--embedding"]
    try:
        path = hf_hub_download(repo_id, safe, local_files_only=offline)
    except LocalEntryNotFoundError:
        raise ModelError(
            f"--embedding {repo_id} is not in the Hugging Face cache and the Hub cannot be reached",
            "run once with network access to cache it, then it works offline",
        ) from None
    except EntryNotFoundError:
        if not allow_pickle:
            raise UnsafeCheckpointError(
                f"--embedding {repo_id} has no {safe}, only pickle-based files; refused",
                "pass --allow-pickle if you trust its source",
            ) from None
        path = hf_hub_download(repo_id, pickled, local_files_only=offline)
    return ModelSource(path, SourceKind.file, check_weights_file(Path(path), allow_pickle))


def trained_token(state: dict[str, Any]) -> str | None:
    """diffusers saves an embedding as {token: vector}: the token it was trained with."""
    if len(state) == 1:
        key = next(iter(state))
        if key not in ("string_to_param", "emb_params") and isinstance(state[key], torch.Tensor):
            return key
    return None


def _load_embedding_file(pipe: Any, state: dict[str, Any], token: str, path: str) -> None:
    if isinstance(pipe, StableDiffusionXLPipeline):
        if not {"clip_l", "clip_g"} <= set(state):
            raise ModelError(
                f"{path} is not an SDXL embedding (it has no clip_l and clip_g vectors)",
                "use an embedding made for SDXL",
            )
        _check_width(state["clip_l"], pipe.text_encoder, path)
        _check_width(state["clip_g"], pipe.text_encoder_2, path)
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
        _check_width(state, pipe.text_encoder, path)
        pipe.load_textual_inversion(state, token=token)


def _check_width(vectors: Any, encoder: Any, path: str) -> None:
    """Every vector as wide as the text encoder's token embeddings (768 for SD 1.x, 1024
    for SD 2.x), else the embedding was made for another family; said here, in words."""
    width = encoder.get_input_embeddings().weight.shape[-1]
    tensors = [vectors] if isinstance(vectors, torch.Tensor) else []
    pending, seen = ([vectors] if isinstance(vectors, dict) else []), set()
    while pending:  # {token: tensor}, A1111's {"string_to_param": {"*": tensor}}
        for value in pending.pop().values():
            if isinstance(value, dict) and id(value) not in seen:  # (a pickle may loop)
                seen.add(id(value))
                pending.append(value)
            elif isinstance(value, torch.Tensor):
                tensors.append(value)
    wrong = next((t.shape[-1] for t in tensors if t.ndim and t.shape[-1] != width), None)
    if wrong is not None:
        raise ModelError(
            f"{path} holds vectors of {wrong} values; this model's text encoder takes {width}",
            "use an embedding made for this model's family",
        )
