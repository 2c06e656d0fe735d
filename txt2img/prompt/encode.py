"""Prompt embeddings by AUTOMATIC1111's rules, on the pipeline's own tokenizers and text
encoders; the pipeline is then called with `prompt_embeds`, never with the prompt text.

Per text encoder: the prompt's fragments (`syntax.parse_attention`) are tokenized
one by one and cut into chunks (`syntax.chunk_tokens`); each chunk is wrapped in
BOS/EOS and padded with the tokenizer's pad id (EOS for SD 1.x and SDXL's CLIP-L, 0 for the
OpenCLIP encoders of SD 2.x and SDXL, as in A1111); the chunks are encoded, weighted by the
emphasis mode and joined on the token axis. The positive and negative prompts of a call are
padded to the same number of chunks with chunks of the empty prompt (A1111's "Pad conds").
SDXL joins its two encoders on the channel axis; its pooled vector is CLIP-G's, from the
first chunk, unweighted, and an empty negative prompt is zeros where the model asks for it.

A prompt of at most one chunk with no syntax gives exactly the tensors diffusers' own
`encode_prompt` gives. Clip skip is applied here, on the encoder outputs (diffusers' own
`clip_skip` breaks on flat `CLIPTextModel`s, diffusers#14124).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch
from diffusers import StableDiffusionXLPipeline

from ..errors import UsageError
from .syntax import Chunk, chunk_tokens, parse_attention, take_lora_tags, words_pattern


@dataclass(frozen=True)
class TextEncoder:
    tokenizer: Any
    model: Any
    layer: str  # "last": the final hidden state; "penultimate": SDXL's, without final LN
    pooled: bool = False  # SDXL's CLIP-G: also gives the pooled vector

    @property
    def chunk_length(self) -> int:
        return self.tokenizer.model_max_length - 2

    @property
    def layers(self) -> int:
        return self.model.config.num_hidden_layers


def text_encoders(pipe: Any) -> tuple[TextEncoder, ...]:
    if isinstance(pipe, StableDiffusionXLPipeline):
        return (
            TextEncoder(pipe.tokenizer, pipe.text_encoder, "penultimate"),
            TextEncoder(pipe.tokenizer_2, pipe.text_encoder_2, "penultimate", pooled=True),
        )
    return (TextEncoder(pipe.tokenizer, pipe.text_encoder, "last"),)


class PromptEncoder:
    """The embeddings of a model's prompts, and what its tokenizers make of them."""

    def __init__(self, pipe: Any, architecture: str, embeddings: dict[str, str]) -> None:
        """`embeddings`: each textual inversion's token in prompts -> the private token
        it is loaded under (`addons.load_embeddings`)."""
        self.pipe = pipe
        self.encoders = text_encoders(pipe)
        # A1111's Clip skip acts on SD 1.x only; SD 2.x and SDXL already use the
        # penultimate layer, and A1111 leaves them there.
        self.clip_skip_applies = architecture == "sd1"
        self.zero_empty_negative = bool(
            getattr(pipe.config, "force_zeros_for_empty_prompt", False)
        ) and isinstance(pipe, StableDiffusionXLPipeline)
        self._chunks = lru_cache(maxsize=4096)(self._chunks_uncached)
        self._units = [_Units(encoder.tokenizer, embeddings) for encoder in self.encoders]
        self._commas = [encoder.tokenizer.get_vocab().get(",</w>") for encoder in self.encoders]

    # --- tokens -----------------------------------------------------------------------

    def _chunks_uncached(self, k: int, text: str, emphasis: str) -> list[Chunk]:
        fragments = [(text, 1.0)] if emphasis == "none" else parse_attention(text)
        length = self.encoders[k].chunk_length
        return chunk_tokens(fragments, self._units[k], length, self._commas[k])

    def chunks(self, job: Any) -> list[list[list[Chunk]]]:
        """[encoder][positive, negative] chunks of a job."""
        texts = (positive_text(job.prompt), job["negative_prompt"])
        return [
            [self._chunks(k, text, job["emphasis"]) for text in texts]
            for k in range(len(self.encoders))
        ]

    def chunk_count(self, job: Any) -> int:
        """The chunks a job's call needs: its longest prompt, on any encoder."""
        return max(len(side) for sides in self.chunks(job) for side in sides)

    def batch_key(self, job: Any) -> tuple:
        """`job.batch_key`, and its chunk count: prompts of different chunk counts are
        never drawn in one pipeline call."""
        return job.batch_key, self.chunk_count(job)

    def pads(self, job: Any) -> bool:
        """Whether the positive and negative prompt were padded to the same number of
        chunks (A1111's infotext then says "Pad conds: True")."""
        positive, negative = self.chunks(job)[0]
        return len(positive) != len(negative)

    def describe(self, job: Any) -> str:
        """The token and chunk count of a job's prompt."""
        chunks = self.chunks(job)[0][0]
        tokens = sum(len(chunk.ids) for chunk in chunks)
        length = self.encoders[0].chunk_length
        return f"{tokens} tokens in {len(chunks)} chunk{'s' * (len(chunks) > 1)} of {length}"

    def embedding_tokens(self, job: Any) -> set[str]:
        """The textual-inversion tokens a job's prompts use."""
        used: set[int] = set()
        for side in self.chunks(job)[0]:
            for chunk in side:
                used.update(chunk.ids)
        return self._units[0].embedding_tokens(used)

    def check_clip_skip(self, clip_skip: int) -> None:
        layers = self.encoders[0].layers
        if self.clip_skip_applies and clip_skip > layers:
            raise UsageError(
                f"--clip-skip {clip_skip} is more than this model's {layers} text-encoder layers",
                f"use 1 to {layers}",
            )

    # --- embeddings -------------------------------------------------------------------

    def embed(self, batch: list[Any]) -> dict[str, torch.Tensor]:
        """The pipeline's `prompt_embeds` keyword arguments for one call."""
        chunks = [self.chunks(job) for job in batch]
        count = max(len(side) for job in chunks for sides in job for side in sides)
        first = batch[0]
        emphasis, clip_skip = first["emphasis"], first["clip_skip"]
        sides: list[list[torch.Tensor]] = [[], []]
        pooled: list[torch.Tensor] = []
        for k, encoder in enumerate(self.encoders):
            for side in (0, 1):
                rows = [c[k][side] + [Chunk()] * (count - len(c[k][side])) for c in chunks]
                z, pool = self._encode(encoder, rows, emphasis, clip_skip)
                if side == 1 and self.zero_empty_negative:
                    negatives = [job["negative_prompt"] for job in batch]
                    z, pool = _zero_empty(z, pool, negatives, encoder.chunk_length + 2)
                sides[side].append(z)
                if encoder.pooled:
                    pooled.append(pool)
        dtype = self.encoders[-1].model.dtype
        device = self.pipe._execution_device
        embeds = [torch.cat(zs, dim=-1).to(dtype=dtype, device=device) for zs in sides]
        kwargs = {"prompt_embeds": embeds[0], "negative_prompt_embeds": embeds[1]}
        if pooled:
            kwargs["pooled_prompt_embeds"] = pooled[0].to(dtype=dtype, device=device)
            kwargs["negative_pooled_prompt_embeds"] = pooled[1].to(dtype=dtype, device=device)
        return kwargs

    def _encode(
        self, encoder: TextEncoder, rows: list[list[Chunk]], emphasis: str, clip_skip: int
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Every row's chunks, chunk by chunk (one encoder call per chunk position for
        the whole batch, as diffusers makes one for the batch), joined on the token
        axis; and the pooled vector of the first chunk."""
        zs, pooled = [], None
        for j in range(len(rows[0])):
            column = [row[j] for row in rows]
            z, pool = self._encode_chunks(encoder, column, clip_skip)
            if emphasis in ("original", "no-norm"):
                z = _emphasised(z, [chunk.weights for chunk in column], emphasis)
            zs.append(z)
            if j == 0:
                pooled = pool
        return torch.cat(zs, dim=1), pooled

    def _encode_chunks(
        self, encoder: TextEncoder, column: list[Chunk], clip_skip: int
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        tokenizer, model = encoder.tokenizer, encoder.model
        device = self.pipe._execution_device
        length = encoder.chunk_length
        pad = tokenizer.pad_token_id
        pad = tokenizer.eos_token_id if pad is None else pad
        ids = torch.tensor([
            [tokenizer.bos_token_id, *chunk.ids, tokenizer.eos_token_id]
            + [pad] * (length - len(chunk.ids))
            for chunk in column
        ])  # fmt: skip
        kwargs: dict[str, Any] = {}
        if getattr(model.config, "use_attention_mask", False):  # as diffusers does
            kwargs["attention_mask"] = torch.tensor([
                [1] * (len(chunk.ids) + 2) + [0] * (length - len(chunk.ids)) for chunk in column
            ]).to(device)  # fmt: skip
        skip = clip_skip if self.clip_skip_applies else 1
        hidden = encoder.layer == "penultimate" or skip > 1
        with torch.no_grad():
            output = model(ids.to(device), output_hidden_states=hidden, **kwargs)
        if encoder.layer == "penultimate":
            z = output.hidden_states[-2]
        elif skip > 1:
            final_layer_norm = getattr(model, "text_model", model).final_layer_norm
            with torch.no_grad():
                z = final_layer_norm(output.hidden_states[-skip])
        else:
            z = output[0]
        return z, output[0] if encoder.pooled else None


def positive_text(prompt: str) -> str:
    """The positive prompt as its encoders read it: without its LoRA tags."""
    return take_lora_tags(prompt)[0]


def _emphasised(z: torch.Tensor, weights: list[list[float]], emphasis: str) -> torch.Tensor:
    """A1111's emphasis on one chunk position: each token's vector times its weight;
    "original" then restores each row's mean (over the whole chunk, BOS, EOS and padding
    included). Rows whose weights are all 1 are left exactly as they are; a row whose
    weighted mean is zero keeps its weighted values rather than turning into NaN."""
    rows = []
    for row, row_weights in zip(z, weights, strict=True):
        if all(weight == 1.0 for weight in row_weights):
            rows.append(row)
            continue
        full = [1.0, *row_weights] + [1.0] * (row.shape[0] - 1 - len(row_weights))
        values = row.float()
        weighted = values * torch.tensor(full, dtype=torch.float32, device=row.device)[:, None]
        if emphasis == "original":
            mean = weighted.mean()
            if mean != 0:
                weighted = weighted * (values.mean() / mean)
        rows.append(weighted.to(row.dtype))
    return torch.stack(rows)


def _zero_empty(
    z: torch.Tensor, pooled: torch.Tensor | None, negatives: list[str], width: int
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """SDXL: an empty negative prompt is zeros: its first chunk (`width` tokens) and its
    pooled vector. Padding chunks stay the empty prompt's, as A1111 pads."""
    empty = [k for k, text in enumerate(negatives) if not text]
    if not empty:
        return z, pooled
    z = z.clone()
    z[empty, :width] = 0
    if pooled is not None:
        pooled = pooled.clone()
        pooled[empty] = 0
    return z, pooled


class _Units:
    """A tokenizer's token ids of a text: one unit per token, and one unit for all the
    vectors of each textual inversion whose token appears as a word (in any case), so
    that they never straddle two chunks."""

    def __init__(self, tokenizer: Any, embeddings: dict[str, str]) -> None:
        self.tokenizer = tokenizer
        added = tokenizer.added_tokens_encoder
        self.vectors: dict[str, list[int]] = {}
        self.names: dict[int, str] = {}
        for name, private in embeddings.items():
            ids = [added[private]]
            while f"{private}_{len(ids)}" in added:  # diffusers' names for vectors 2, 3...
                ids.append(added[f"{private}_{len(ids)}"])
            self.vectors.setdefault(name.lower(), ids)
            self.names[ids[0]] = name
        self.pattern = words_pattern(self.vectors)

    def __call__(self, text: str) -> list[list[int]]:
        units, start = [], 0
        for match in self.pattern.finditer(text) if self.pattern else ():
            units += self._plain(text[start : match.start()])
            units.append(self.vectors[match.group(0).lower()])
            start = match.end()
        return units + self._plain(text[start:])

    def _plain(self, text: str) -> list[list[int]]:
        if not text:
            return []
        ids = self.tokenizer(
            text, add_special_tokens=False, truncation=False, verbose=False
        ).input_ids
        return [[index] for index in ids]

    def embedding_tokens(self, ids: set[int]) -> set[str]:
        return {name for first, name in self.names.items() if first in ids}
