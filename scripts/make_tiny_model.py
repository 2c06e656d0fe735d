"""Build tiny but real diffusers pipelines for tests and the README quickstart.

Each family ("sd1", "sd2-v", "sdxl", "sd-turbo", "sdxl-turbo") gets the same pipeline class,
component classes and scheduler configuration as the real model, at toy sizes, so that
``DiffusionPipeline.from_pretrained(folder, use_safetensors=True)`` loads it fully offline and a
2-step call runs in a fraction of a second on one CPU core. The weights are random (seeded, so
building twice gives byte-identical files): these models draw noise, not pictures.

The CLIP tokenizer is built locally from a byte-level vocabulary (every byte symbol, with and
without the ``</w>`` end-of-word suffix, plus the two special tokens), so every prompt maps to
distinct, meaningful ids and nothing is ever downloaded.

Usage::

    python scripts/make_tiny_model.py OUT_DIR [--family sd1]

prints the folder path on stdout and nothing else.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
from typing import Any

FAMILIES = ("sd1", "sd2-v", "sdxl", "sd-turbo", "sdxl-turbo")

#: Native (default) output size in pixels per family: the real model's size divided by 8.
NATIVE_SIZES = {"sd1": 64, "sd2-v": 96, "sdxl": 128, "sd-turbo": 64, "sdxl-turbo": 64}

MODEL_MAX_LENGTH = 77
BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"

# Four VAE levels, like the real models, so vae_scale_factor is 8.
_VAE_CHANNELS = (8, 8, 16, 16)
_VAE_SCALE_FACTOR = 2 ** (len(_VAE_CHANNELS) - 1)
_SEED = 0

# SD 1.x / 2.x / XL all train on the same beta schedule.
_BETAS: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
}


def bytes_to_unicode() -> dict[int, str]:
    """CLIP's / GPT-2's reversible map from the 256 byte values to printable unicode symbols."""
    # Printable latin-1 bytes ("!".."~", "\xa1".."\xac", "\xae".."\xff") map to themselves.
    bs = list(range(0x21, 0x7F)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


def tokenizer_vocab() -> dict[str, int]:
    """The tiny byte-level CLIP vocabulary: 256 symbols, 256 symbols + "</w>", BOS, EOS."""
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + [BOS_TOKEN, EOS_TOKEN]
    return {token: i for i, token in enumerate(tokens)}


def write_tokenizer_files(folder: str | os.PathLike[str], pad: str = EOS_TOKEN) -> pathlib.Path:
    """Write a tiny CLIP tokenizer into ``folder``: vocab.json, merges.txt and the files
    ``CLIPTokenizer.save_pretrained`` writes (tokenizer.json, tokenizer_config.json, ...).

    Returns the folder. ``<|endoftext|>`` is the unk token; the pad token is ``pad``: EOS as
    in OpenAI's CLIP (SD 1.x, SDXL's first encoder), or ``"!"`` (id 0) as in the OpenCLIP
    encoders' tokenizers (SD 2.x, SDXL's second encoder).
    """
    from transformers import CLIPTokenizer

    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = tokenizer_vocab()
    tokenizer = CLIPTokenizer(
        vocab=vocab,
        merges=[],
        unk_token=EOS_TOKEN,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=pad,
        model_max_length=MODEL_MAX_LENGTH,
    )
    tokenizer.save_pretrained(folder)
    # Written after save_pretrained so these two are exactly what we mean, whatever the
    # installed transformers version writes itself.
    (folder / "vocab.json").write_text(
        json.dumps(vocab, ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
    )
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    return folder


OPENCLIP_PAD = "!"  # id 0, as in the real SD 2.x and SDXL tokenizer_2 files


def _pad_token(family: str, tokenizer_name: str) -> str:
    openclip = tokenizer_name == "tokenizer_2" or family in ("sd2-v", "sd-turbo")
    return OPENCLIP_PAD if openclip else EOS_TOKEN


def _load_tokenizer(folder: pathlib.Path) -> Any:
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(folder)


def _text_encoder(hidden_size: int, projection_dim: int, with_projection: bool) -> Any:
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    vocab = tokenizer_vocab()
    config = CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        projection_dim=projection_dim,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=MODEL_MAX_LENGTH,
        hidden_act="gelu",
        layer_norm_eps=1e-5,
        bos_token_id=vocab[BOS_TOKEN],
        eos_token_id=vocab[EOS_TOKEN],
        pad_token_id=vocab[EOS_TOKEN],
    )
    torch.manual_seed(_SEED)
    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    model = cls(config).eval()
    # A trained final layer norm has a bias; a fresh one's outputs have mean exactly 0 per
    # token, which no real model's have (A1111's emphasis divides by that mean).
    final_norm = getattr(model, "text_model", model).final_layer_norm
    with torch.no_grad():
        final_norm.bias.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(_SEED))
    return model


def _vae(native_size: int, scaling_factor: float) -> Any:
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(_SEED)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(_VAE_CHANNELS),
        up_block_types=("UpDecoderBlock2D",) * len(_VAE_CHANNELS),
        block_out_channels=_VAE_CHANNELS,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=native_size,
        scaling_factor=scaling_factor,
        force_upcast=True,
    ).eval()


def _unet(native_size: int, **kwargs: Any) -> Any:
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(_SEED)
    return UNet2DConditionModel(
        sample_size=native_size // _VAE_SCALE_FACTOR,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(8, 16),
        layers_per_block=1,
        norm_num_groups=4,
        **kwargs,
    ).eval()


def _scheduler(family: str) -> Any:
    from diffusers import (
        DDIMScheduler,
        EulerAncestralDiscreteScheduler,
        EulerDiscreteScheduler,
        PNDMScheduler,
    )

    if family == "sd1":  # runwayml/stable-diffusion-v1-5
        return PNDMScheduler(
            **_BETAS,
            skip_prk_steps=True,
            set_alpha_to_one=False,
            steps_offset=1,
            prediction_type="epsilon",
        )
    if family == "sd2-v":  # stabilityai/stable-diffusion-2-1
        return DDIMScheduler(
            **_BETAS,
            clip_sample=False,
            set_alpha_to_one=False,
            steps_offset=1,
            prediction_type="v_prediction",
        )
    if family == "sd-turbo":  # stabilityai/sd-turbo
        return EulerDiscreteScheduler(
            **_BETAS,
            steps_offset=1,
            prediction_type="epsilon",
            timestep_spacing="trailing",
        )
    if family == "sdxl":  # stabilityai/stable-diffusion-xl-base-1.0
        return EulerDiscreteScheduler(
            **_BETAS,
            steps_offset=1,
            prediction_type="epsilon",
            timestep_spacing="leading",
        )
    if family == "sdxl-turbo":  # stabilityai/sdxl-turbo
        return EulerAncestralDiscreteScheduler(
            **_BETAS,
            steps_offset=1,
            prediction_type="epsilon",
            timestep_spacing="trailing",
        )
    raise ValueError(f"unknown family {family!r}; expected one of {', '.join(FAMILIES)}")


def build_tiny_pipeline(
    family: str = "sd1", tokenizer_dir: str | os.PathLike[str] | None = None
) -> Any:
    """Build the in-memory tiny pipeline for ``family`` (see ``FAMILIES``), on CPU, float32.

    The tokenizer is written to and loaded from ``tokenizer_dir`` (a temporary folder if None).
    """
    import tempfile

    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {', '.join(FAMILIES)}")
    if tokenizer_dir is None:
        with tempfile.TemporaryDirectory() as tmp:
            return build_tiny_pipeline(family, tmp)
    tokenizer_dir = pathlib.Path(tokenizer_dir)
    tokenizer = _load_tokenizer(
        write_tokenizer_files(tokenizer_dir, _pad_token(family, "tokenizer"))
    )
    native = NATIVE_SIZES[family]
    scheduler = _scheduler(family)

    if family in ("sdxl", "sdxl-turbo"):
        from diffusers import StableDiffusionXLPipeline

        # Like SDXL: CLIP ViT-L (768) + OpenCLIP bigG with projection (1280), concatenated.
        text_encoder = _text_encoder(hidden_size=32, projection_dim=32, with_projection=False)
        text_encoder_2 = _text_encoder(hidden_size=64, projection_dim=32, with_projection=True)
        time_embed_dim = 8
        unet = _unet(
            native,
            attention_head_dim=(2, 4),
            use_linear_projection=True,
            transformer_layers_per_block=(1, 2),
            cross_attention_dim=32 + 64,
            addition_embed_type="text_time",
            addition_time_embed_dim=time_embed_dim,
            projection_class_embeddings_input_dim=6 * time_embed_dim + 32,
        )
        return StableDiffusionXLPipeline(
            vae=_vae(native, scaling_factor=0.13025),
            text_encoder=text_encoder,
            text_encoder_2=text_encoder_2,
            tokenizer=tokenizer,
            tokenizer_2=_load_tokenizer(
                write_tokenizer_files(tokenizer_dir / "openclip", OPENCLIP_PAD)
            ),
            unet=unet,
            scheduler=scheduler,
            force_zeros_for_empty_prompt=True,
            add_watermarker=False,
        )

    from diffusers import StableDiffusionPipeline

    if family == "sd1":  # CLIP ViT-L text encoder (768), 8 heads per block
        text_encoder = _text_encoder(hidden_size=32, projection_dim=32, with_projection=False)
        unet = _unet(native, attention_head_dim=2, cross_attention_dim=32)
    else:  # sd2-v, sd-turbo: OpenCLIP ViT-H text encoder (1024), linear projections
        text_encoder = _text_encoder(hidden_size=48, projection_dim=48, with_projection=False)
        unet = _unet(
            native, attention_head_dim=(2, 4), use_linear_projection=True, cross_attention_dim=48
        )
    return StableDiffusionPipeline(
        vae=_vae(native, scaling_factor=0.18215),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def build_tiny_model(path: str | os.PathLike[str], family: str = "sd1") -> pathlib.Path:
    """Build the tiny ``family`` pipeline and save it, diffusers format, safetensors, to ``path``.

    Returns the folder, loadable with ``DiffusionPipeline.from_pretrained(path,
    use_safetensors=True)`` offline. Existing files in ``path`` are overwritten.
    """
    path = pathlib.Path(path)
    path.mkdir(parents=True, exist_ok=True)
    pipe = build_tiny_pipeline(family, path / "tokenizer")
    pipe.save_pretrained(path, safe_serialization=True)
    # Keep vocab.json / merges.txt next to tokenizer.json (for slow / older tokenizers).
    for name in ("tokenizer", "tokenizer_2"):
        if (path / name).is_dir():
            write_tokenizer_files(path / name, _pad_token(family, name))
    return path


def main(argv: list[str] | None = None) -> None:
    """Command line: build one tiny model folder and print its path."""
    parser = argparse.ArgumentParser(
        description="Build a tiny random-weight diffusers pipeline (for tests; draws noise)."
    )
    parser.add_argument("out_dir", help="folder to write the pipeline into")
    parser.add_argument("--family", choices=FAMILIES, default="sd1", help="default: sd1")
    args = parser.parse_args(argv)
    print(build_tiny_model(args.out_dir, args.family))


if __name__ == "__main__":
    main()
