"""Write txt2img/model/configs/: diffusers-format config folders, no weights, for single files.

A single-file checkpoint (one `model.safetensors` in the original CompVis/LDM layout, as
Civitai serves them) holds weights only. diffusers' `from_single_file` gets every config
(pipeline index, scheduler, U-Net, VAE, text encoders, tokenizers) from a diffusers-format
folder, and without `config=<local folder>` it downloads that folder from the Hub. These
folders let such a file load with no network:

    StableDiffusionPipeline.from_single_file(path, config=".../configs/sd1", local_files_only=True)

This script is the single source of truth. The JSON below are the configs published in the
Hub repositories named in FAMILIES, copied value for value (the only changes are listed in
DEVIATIONS). The tokenizer vocabulary is not copied: vocab.json and merges.txt are derived
from OpenAI's CLIP BPE file `bpe_simple_vocab_16e6.txt.gz`, exactly as OpenAI's and
open_clip's `SimpleTokenizer` builds its encoder. That file ships in the PyPI wheel
`open-clip-torch`; give it as the wheel, the .gz, or let the script find an installed
open_clip (`pip install --no-deps open-clip-torch==3.3.0`; its dependencies are not needed):

    python scripts/build_configs.py --bpe open_clip_torch-3.3.0-py3-none-any.whl
    python scripts/build_configs.py --check          # compare instead of writing

Without any BPE source, `--json-only` writes or checks only the JSON files.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import importlib.util
import json
import sys
import zipfile
from pathlib import Path

from make_tiny_model import bytes_to_unicode  # the same byte-level symbols

ROOT = Path(__file__).resolve().parent.parent
CONFIG_ROOT = ROOT / "txt2img" / "model" / "configs"

# sha256 of the decompressed bpe_simple_vocab_16e6.txt (open-clip-torch 3.3.0, identical to
# the file in github.com/openai/CLIP): the input the vocabulary is derived from.
BPE_SHA256 = "67603cfda2e032ad77b5f8808af37789d590db664b26df8705d2bf8b3c553fc8"
BPE_MEMBER = "open_clip/bpe_simple_vocab_16e6.txt.gz"

# folder -> (Hub repository the configs come from, pipeline class)
FAMILIES = {
    "sd1": ("stable-diffusion-v1-5/stable-diffusion-v1-5", "StableDiffusionPipeline"),
    "sd2-v": ("stabilityai/stable-diffusion-2-1", "StableDiffusionPipeline"),
    "sd2": ("stabilityai/stable-diffusion-2-1-base", "StableDiffusionPipeline"),
    "sdxl": ("stabilityai/stable-diffusion-xl-base-1.0", "StableDiffusionXLPipeline"),
}

# What differs from the published files, and why. Everything else is as published.
DEVIATIONS = {
    "sd1": "model_index.json: safety_checker and feature_extractor are [null, null] (the Hub "
    "repo has StableDiffusionSafetyChecker and CLIPImageProcessor). A single file carries "
    "no safety checker (diffusers' SINGLE_FILE_OPTIONAL_COMPONENTS) and the feature "
    "extractor only feeds it; with them listed, loading would need their folders.",
    "sd2-v": "model_index.json: feature_extractor is [null, null] (the Hub repo has "
    "CLIPImageProcessor), for the same reason; safety_checker is [null, null] there already.",
    "sd2": "model_index.json: feature_extractor is [null, null] (the Hub repo has "
    "CLIPFeatureExtractor), for the same reason; safety_checker is [null, null] there "
    "already.",
    "sdxl": "none.",
}

NULL = [None, None]
SD_DOWN = ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"]
SD_UP = ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]
VAE_DOWN = ["DownEncoderBlock2D"] * 4
VAE_UP = ["UpDecoderBlock2D"] * 4
VAE_CHANNELS = [128, 256, 512, 512]


def _sd_index(version: str, scheduler: str, *, safety_flag: bool) -> dict:
    index = {"_class_name": "StableDiffusionPipeline", "_diffusers_version": version}
    index["feature_extractor"] = NULL
    if safety_flag:
        index["requires_safety_checker"] = False
    index |= {
        "safety_checker": NULL,
        "scheduler": ["diffusers", scheduler],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    return index


def _added_token(content: str) -> dict:
    """A special token as transformers 4.2x wrote it into tokenizer_config.json."""
    return {
        "__type": "AddedToken",
        "content": content,
        "lstrip": False,
        "normalized": True,
        "rstrip": False,
        "single_word": False,
    }


def _token(content: str) -> dict:
    """A special token as transformers 4.2x wrote it into special_tokens_map.json."""
    return {k: v for k, v in _added_token(content).items() if k != "__type"}


def _tokenizer_config(name_or_path: str | None, *, sdxl: bool, pad: str) -> dict:
    config = {"add_prefix_space": False, "bos_token": _added_token("<|startoftext|>")}
    if sdxl:
        config["clean_up_tokenization_spaces"] = True
    config |= {
        "do_lower_case": True,
        "eos_token": _added_token("<|endoftext|>"),
        "errors": "replace",
        "model_max_length": 77,
    }
    if name_or_path is not None:
        config["name_or_path"] = name_or_path
    config["pad_token"] = pad
    if not sdxl:
        config["special_tokens_map_file"] = "./special_tokens_map.json"
    config |= {"tokenizer_class": "CLIPTokenizer", "unk_token": _added_token("<|endoftext|>")}
    return config


def _special_tokens_map(pad: str) -> dict:
    return {
        "bos_token": _token("<|startoftext|>"),
        "eos_token": _token("<|endoftext|>"),
        "pad_token": pad,
        "unk_token": _token("<|endoftext|>"),
    }


def _clip_text_config(
    *,
    architecture: str,
    name_or_path: str | None,
    hidden_act: str,
    hidden_size: int,
    intermediate_size: int,
    heads: int,
    layers: int,
    projection_dim: int,
    dtype: str,
    transformers_version: str,
) -> dict:
    config = {} if name_or_path is None else {"_name_or_path": name_or_path}
    return config | {
        "architectures": [architecture],
        "attention_dropout": 0.0,
        "bos_token_id": 0,
        "dropout": 0.0,
        "eos_token_id": 2,
        "hidden_act": hidden_act,
        "hidden_size": hidden_size,
        "initializer_factor": 1.0,
        "initializer_range": 0.02,
        "intermediate_size": intermediate_size,
        "layer_norm_eps": 1e-05,
        "max_position_embeddings": 77,
        "model_type": "clip_text_model",
        "num_attention_heads": heads,
        "num_hidden_layers": layers,
        "pad_token_id": 1,
        "projection_dim": projection_dim,
        "torch_dtype": dtype,
        "transformers_version": transformers_version,
        "vocab_size": 49408,
    }


def _vae_config(version: str, name_or_path: str | None, sample_size: int) -> dict:
    config = {"_class_name": "AutoencoderKL", "_diffusers_version": version}
    if name_or_path is not None:
        config["_name_or_path"] = name_or_path
    return config | {
        "act_fn": "silu",
        "block_out_channels": VAE_CHANNELS,
        "down_block_types": VAE_DOWN,
        "in_channels": 3,
        "latent_channels": 4,
        "layers_per_block": 2,
        "norm_num_groups": 32,
        "out_channels": 3,
        "sample_size": sample_size,
        "up_block_types": VAE_UP,
    }


def _sd2_unet(name_or_path: str | None, sample_size: int) -> dict:
    config = {"_class_name": "UNet2DConditionModel", "_diffusers_version": "0.10.0.dev0"}
    if name_or_path is not None:
        config["_name_or_path"] = name_or_path
    return config | {
        "act_fn": "silu",
        "attention_head_dim": [5, 10, 20, 20],
        "block_out_channels": [320, 640, 1280, 1280],
        "center_input_sample": False,
        "cross_attention_dim": 1024,
        "down_block_types": SD_DOWN,
        "downsample_padding": 1,
        "dual_cross_attention": False,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "in_channels": 4,
        "layers_per_block": 2,
        "mid_block_scale_factor": 1,
        "norm_eps": 1e-05,
        "norm_num_groups": 32,
        "num_class_embeds": None,
        "only_cross_attention": False,
        "out_channels": 4,
        "sample_size": sample_size,
        "up_block_types": SD_UP,
        "use_linear_projection": True,
    }


def _sd2_text_encoder(name_or_path: str, dtype: str, transformers_version: str) -> dict:
    return _clip_text_config(
        architecture="CLIPTextModel",
        name_or_path=name_or_path,
        hidden_act="gelu",
        hidden_size=1024,
        intermediate_size=4096,
        heads=16,
        layers=23,
        projection_dim=512,
        dtype=dtype,
        transformers_version=transformers_version,
    )


# --- stable-diffusion-v1-5/stable-diffusion-v1-5 (the runwayml/stable-diffusion-v1-5 files) --

SD1 = {
    "model_index.json": _sd_index("0.6.0", "PNDMScheduler", safety_flag=False),
    "scheduler/scheduler_config.json": {
        "_class_name": "PNDMScheduler",
        "_diffusers_version": "0.6.0",
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "num_train_timesteps": 1000,
        "set_alpha_to_one": False,
        "skip_prk_steps": True,
        "steps_offset": 1,
        "trained_betas": None,
        "clip_sample": False,
    },
    "text_encoder/config.json": _clip_text_config(
        architecture="CLIPTextModel",
        name_or_path="openai/clip-vit-large-patch14",
        hidden_act="quick_gelu",
        hidden_size=768,
        intermediate_size=3072,
        heads=12,
        layers=12,
        projection_dim=768,
        dtype="float32",
        transformers_version="4.22.0.dev0",
    ),
    "tokenizer/tokenizer_config.json": _tokenizer_config(
        "openai/clip-vit-large-patch14", sdxl=False, pad="<|endoftext|>"
    ),
    "tokenizer/special_tokens_map.json": _special_tokens_map("<|endoftext|>"),
    "unet/config.json": {
        "_class_name": "UNet2DConditionModel",
        "_diffusers_version": "0.6.0",
        "act_fn": "silu",
        "attention_head_dim": 8,
        "block_out_channels": [320, 640, 1280, 1280],
        "center_input_sample": False,
        "cross_attention_dim": 768,
        "down_block_types": SD_DOWN,
        "downsample_padding": 1,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "in_channels": 4,
        "layers_per_block": 2,
        "mid_block_scale_factor": 1,
        "norm_eps": 1e-05,
        "norm_num_groups": 32,
        "out_channels": 4,
        "sample_size": 64,
        "up_block_types": SD_UP,
    },
    "vae/config.json": _vae_config("0.6.0", None, 512),
}

# --- stabilityai/stable-diffusion-2-1 (768 px, v-prediction) ---------------------------------

SD2_V = {
    "model_index.json": _sd_index("0.8.0", "DDIMScheduler", safety_flag=True),
    "scheduler/scheduler_config.json": {
        "_class_name": "DDIMScheduler",
        "_diffusers_version": "0.8.0",
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "clip_sample": False,
        "num_train_timesteps": 1000,
        "prediction_type": "v_prediction",
        "set_alpha_to_one": False,
        "skip_prk_steps": True,
        "steps_offset": 1,
        "trained_betas": None,
    },
    "text_encoder/config.json": _sd2_text_encoder(
        "hf-models/stable-diffusion-v2-768x768/text_encoder", "float32", "4.25.0.dev0"
    ),
    "tokenizer/tokenizer_config.json": _tokenizer_config(
        "hf-models/stable-diffusion-v2-768x768/tokenizer", sdxl=False, pad="<|endoftext|>"
    ),
    "tokenizer/special_tokens_map.json": _special_tokens_map("!"),
    "unet/config.json": _sd2_unet(None, 96) | {"upcast_attention": True},
    "vae/config.json": _vae_config("0.8.0", "hf-models/stable-diffusion-v2-768x768/vae", 768),
}

# --- stabilityai/stable-diffusion-2-1-base (512 px, epsilon) ----------------------------------

SD2 = {
    "model_index.json": _sd_index("0.10.0.dev0", "PNDMScheduler", safety_flag=True),
    "scheduler/scheduler_config.json": {
        "_class_name": "PNDMScheduler",
        "_diffusers_version": "0.10.0.dev0",
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "clip_sample": False,
        "num_train_timesteps": 1000,
        "prediction_type": "epsilon",
        "set_alpha_to_one": False,
        "skip_prk_steps": True,
        "steps_offset": 1,
        "trained_betas": None,
    },
    "text_encoder/config.json": _sd2_text_encoder(
        "./stability/stable-diffusion-2-1-base/text_encoder", "float16", "4.26.0.dev0"
    ),
    "tokenizer/tokenizer_config.json": _tokenizer_config(
        "./stability/stable-diffusion-2-1-base/tokenizer", sdxl=False, pad="<|endoftext|>"
    ),
    "tokenizer/special_tokens_map.json": _special_tokens_map("!"),
    "unet/config.json": _sd2_unet("./stability/stable-diffusion-2-1-base/unet", 64),
    # 768 is what the repo says, although the model is 512 px; nothing reads it for SD.
    "vae/config.json": _vae_config("0.10.0.dev0", "./stability/stable-diffusion-2-1-base/vae", 768),
}

# --- stabilityai/stable-diffusion-xl-base-1.0 --------------------------------------------------

SDXL = {
    "model_index.json": {
        "_class_name": "StableDiffusionXLPipeline",
        "_diffusers_version": "0.19.0.dev0",
        "force_zeros_for_empty_prompt": True,
        "add_watermarker": None,
        "scheduler": ["diffusers", "EulerDiscreteScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "tokenizer_2": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    },
    "scheduler/scheduler_config.json": {
        "_class_name": "EulerDiscreteScheduler",
        "_diffusers_version": "0.19.0.dev0",
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "clip_sample": False,
        "interpolation_type": "linear",
        "num_train_timesteps": 1000,
        "prediction_type": "epsilon",
        "sample_max_value": 1.0,
        "set_alpha_to_one": False,
        "skip_prk_steps": True,
        "steps_offset": 1,
        "timestep_spacing": "leading",
        "trained_betas": None,
        "use_karras_sigmas": False,
    },
    "text_encoder/config.json": _clip_text_config(
        architecture="CLIPTextModel",
        name_or_path=None,
        hidden_act="quick_gelu",
        hidden_size=768,
        intermediate_size=3072,
        heads=12,
        layers=12,
        projection_dim=768,
        dtype="float16",
        transformers_version="4.32.0.dev0",
    ),
    "text_encoder_2/config.json": _clip_text_config(
        architecture="CLIPTextModelWithProjection",
        name_or_path=None,
        hidden_act="gelu",
        hidden_size=1280,
        intermediate_size=5120,
        heads=20,
        layers=32,
        projection_dim=1280,
        dtype="float16",
        transformers_version="4.32.0.dev0",
    ),
    "tokenizer/tokenizer_config.json": _tokenizer_config(None, sdxl=True, pad="<|endoftext|>"),
    "tokenizer/special_tokens_map.json": _special_tokens_map("<|endoftext|>"),
    "tokenizer_2/tokenizer_config.json": _tokenizer_config(None, sdxl=True, pad="!"),
    "tokenizer_2/special_tokens_map.json": _special_tokens_map("!"),
    "unet/config.json": {
        "_class_name": "UNet2DConditionModel",
        "_diffusers_version": "0.19.0.dev0",
        "act_fn": "silu",
        "addition_embed_type": "text_time",
        "addition_embed_type_num_heads": 64,
        "addition_time_embed_dim": 256,
        "attention_head_dim": [5, 10, 20],
        "block_out_channels": [320, 640, 1280],
        "center_input_sample": False,
        "class_embed_type": None,
        "class_embeddings_concat": False,
        "conv_in_kernel": 3,
        "conv_out_kernel": 3,
        "cross_attention_dim": 2048,
        "cross_attention_norm": None,
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        "downsample_padding": 1,
        "dual_cross_attention": False,
        "encoder_hid_dim": None,
        "encoder_hid_dim_type": None,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "in_channels": 4,
        "layers_per_block": 2,
        "mid_block_only_cross_attention": None,
        "mid_block_scale_factor": 1,
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "norm_eps": 1e-05,
        "norm_num_groups": 32,
        "num_attention_heads": None,
        "num_class_embeds": None,
        "only_cross_attention": False,
        "out_channels": 4,
        "projection_class_embeddings_input_dim": 2816,
        "resnet_out_scale_factor": 1.0,
        "resnet_skip_time_act": False,
        "resnet_time_scale_shift": "default",
        "sample_size": 128,
        "time_cond_proj_dim": None,
        "time_embedding_act_fn": None,
        "time_embedding_dim": None,
        "time_embedding_type": "positional",
        "timestep_post_act": None,
        "transformer_layers_per_block": [1, 2, 10],
        "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
        "upcast_attention": None,
        "use_linear_projection": True,
    },
    "vae/config.json": {
        "_class_name": "AutoencoderKL",
        "_diffusers_version": "0.20.0.dev0",
        "_name_or_path": "../sdxl-vae/",
        "act_fn": "silu",
        "block_out_channels": VAE_CHANNELS,
        "down_block_types": VAE_DOWN,
        "force_upcast": True,
        "in_channels": 3,
        "latent_channels": 4,
        "layers_per_block": 2,
        "norm_num_groups": 32,
        "out_channels": 3,
        "sample_size": 1024,
        "scaling_factor": 0.13025,
        "up_block_types": VAE_UP,
    },
}

CONFIGS: dict[str, dict[str, dict]] = {"sd1": SD1, "sd2-v": SD2_V, "sd2": SD2, "sdxl": SDXL}

# Every tokenizer folder has the same CLIP vocabulary: one copy, in VOCAB_DIR, that
# txt2img links into the folder it hands diffusers (txt2img.model.source.readable_config).
VOCAB_DIR = "clip-vocab"


def json_text(data: dict) -> str:
    """The layout of the published files: two-space indent, one item a line."""
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def render_json() -> dict[str, bytes]:
    """Every JSON file, keyed by its path under txt2img/model/configs/."""
    return {
        f"{folder}/{name}": json_text(data).encode("utf-8")
        for folder, files in CONFIGS.items()
        for name, data in files.items()
    }


# --- the CLIP vocabulary -----------------------------------------------------------------------


def clip_vocab(bpe_text: str) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The encoder and merges of OpenAI's SimpleTokenizer (and open_clip's), built the same way.

    merges: lines 1 .. 48894 of the BPE file (49152 - 256 - 2 merges after a header line);
    vocab: the 256 byte symbols, the same with "</w>", each merge joined, then the two
    special tokens (named as Hugging Face names them) as ids 49406 and 49407.
    """
    lines = bpe_text.split("\n")[1 : 49152 - 256 - 2 + 1]
    merges = [tuple(line.split()) for line in lines]
    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols]
    vocab += ["".join(merge) for merge in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    encoder = {token: i for i, token in enumerate(vocab)}
    if len(encoder) != 49408 or any(len(m) != 2 for m in merges):
        raise ValueError("this is not CLIP's BPE file")
    return encoder, merges


def render_tokenizer(bpe_text: str) -> dict[str, bytes]:
    """vocab.json and merges.txt for every tokenizer folder, keyed like render_json()."""
    encoder, merges = clip_vocab(bpe_text)
    vocab = json.dumps(encoder, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    merges_txt = ("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges)).encode("utf-8")
    files = {}
    files[f"{VOCAB_DIR}/vocab.json"] = vocab
    files[f"{VOCAB_DIR}/merges.txt"] = merges_txt
    return files


def open_clip_dir() -> Path | None:
    """The installed open_clip package folder, found without importing it (its __init__
    imports torchvision)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def read_bpe(source: Path | None = None) -> str:
    """The text of bpe_simple_vocab_16e6.txt, from an open-clip-torch wheel, the .gz itself,
    or (no source) the installed open_clip; checked against BPE_SHA256."""
    if source is None:
        package = open_clip_dir()
        if package is None:
            raise FileNotFoundError(
                "open_clip is not installed: pass --bpe (the open-clip-torch wheel or "
                "bpe_simple_vocab_16e6.txt.gz), or pip install --no-deps open-clip-torch==3.3.0"
            )
        source = package / "bpe_simple_vocab_16e6.txt.gz"
    if zipfile.is_zipfile(source):
        with zipfile.ZipFile(source) as wheel:
            raw = gzip.decompress(wheel.read(BPE_MEMBER))
    else:
        raw = gzip.decompress(Path(source).read_bytes())
    digest = hashlib.sha256(raw).hexdigest()
    if digest != BPE_SHA256:
        raise ValueError(f"{source}: unexpected BPE file (sha256 {digest})")
    return raw.decode("utf-8")


# --- writing and checking ----------------------------------------------------------------------


def compare(files: dict[str, bytes], root: Path = CONFIG_ROOT) -> list[str]:
    """Paths under root whose content differs from files (or that are missing)."""
    return [
        name
        for name, content in sorted(files.items())
        if not (root / name).is_file() or (root / name).read_bytes() != content
    ]


def write(files: dict[str, bytes], root: Path = CONFIG_ROOT) -> None:
    for name, content in sorted(files.items()):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--bpe",
        type=Path,
        help="open-clip-torch wheel or bpe_simple_vocab_16e6.txt.gz (default: installed open_clip)",
    )
    parser.add_argument("--check", action="store_true", help="compare, write nothing")
    parser.add_argument("--json-only", action="store_true", help="skip vocab.json/merges.txt")
    parser.add_argument("--output", type=Path, default=CONFIG_ROOT, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    files = render_json()
    if not args.json_only:
        files |= render_tokenizer(read_bpe(args.bpe))
    if args.check:
        stale = compare(files, args.output)
        for name in stale:
            print(f"differs: {name}", file=sys.stderr)
        print(f"{len(files) - len(stale)} of {len(files)} files up to date", file=sys.stderr)
        return 1 if stale else 0
    write(files, args.output)
    print(f"wrote {len(files)} files under {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
