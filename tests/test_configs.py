"""The config folders shipped for single-file checkpoints (txt2img/model/configs/).

Each folder must load the way diffusers' `from_single_file(path, config=folder,
local_files_only=True)` loads it: every config through the class's own `load_config` /
`from_pretrained(folder, subfolder=...)`, with nothing from the network. Models are built on
the meta device, so the real SD 1.5 / 2.1 / SDXL architectures are checked (parameter
counts of the published models) in well under a second each, with no memory.

The tokenizer proof: vocab.json and merges.txt are derived by scripts/build_configs.py from
OpenAI's CLIP BPE file as shipped in the PyPI wheel open-clip-torch. Where open_clip is
installed (CI: `pip install --no-deps open-clip-torch==3.3.0 ftfy`), the tests derive the
files again from the installed package and compare them byte for byte, and compare the ids
of transformers' CLIPTokenizer loaded from every folder with the ids of open_clip's own
tokenizer (its tokenizer.py, run from the installed package without importing open_clip,
whose __init__ needs torchvision). Without open_clip those two tests are skipped; the others
still pin the vocabulary (size, special ids, pad ids, known prompt ids).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DiffusionPipeline,
    EulerDiscreteScheduler,
    PNDMScheduler,
    UNet2DConditionModel,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
)

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "txt2img" / "model" / "configs"


import build_configs as build  # noqa: E402  (scripts/ is on sys.path: see conftest.py)

from txt2img.model.source import readable_config  # noqa: E402

VAE_PARAMETERS = 83_653_863  # the SD VAE (AutoencoderKL f=8, 4 latent channels): all four
CLIP_L = 123_060_480  # OpenAI CLIP ViT-L/14 text model
OPEN_CLIP_H = 340_387_840  # OpenCLIP ViT-H/14 text model, 23 of its 24 layers (as SD 2 uses it)
OPEN_CLIP_BIG_G = 694_659_840  # OpenCLIP ViT-bigG/14 text model with its projection

# What each published model is, as the configs must reproduce it.
FAMILIES = {
    "sd1": {
        "pipeline": "StableDiffusionPipeline",
        "scheduler": PNDMScheduler,
        "prediction_type": "epsilon",
        "unet": 859_520_964,
        "sample_size": 64,
        "cross_attention_dim": 768,
        "text_encoders": {"text_encoder": (CLIPTextModel, CLIP_L)},
        "pad_ids": {"tokenizer": 49407},
    },
    "sd2-v": {
        "pipeline": "StableDiffusionPipeline",
        "scheduler": DDIMScheduler,
        "prediction_type": "v_prediction",
        "unet": 865_910_724,
        "sample_size": 96,
        "cross_attention_dim": 1024,
        "text_encoders": {"text_encoder": (CLIPTextModel, OPEN_CLIP_H)},
        "pad_ids": {"tokenizer": 0},
    },
    "sd2": {
        "pipeline": "StableDiffusionPipeline",
        "scheduler": PNDMScheduler,
        "prediction_type": "epsilon",
        "unet": 865_910_724,
        "sample_size": 64,
        "cross_attention_dim": 1024,
        "text_encoders": {"text_encoder": (CLIPTextModel, OPEN_CLIP_H)},
        "pad_ids": {"tokenizer": 0},
    },
    "sdxl": {
        "pipeline": "StableDiffusionXLPipeline",
        "scheduler": EulerDiscreteScheduler,
        "prediction_type": "epsilon",
        "unet": 2_567_463_684,
        "sample_size": 128,
        "cross_attention_dim": 2048,
        "text_encoders": {
            "text_encoder": (CLIPTextModel, CLIP_L),
            "text_encoder_2": (CLIPTextModelWithProjection, OPEN_CLIP_BIG_G),
        },
        "pad_ids": {"tokenizer": 49407, "tokenizer_2": 0},
    },
}
TOKENIZERS = [(folder, name) for folder, spec in FAMILIES.items() for name in spec["pad_ids"]]

# A prompt and its ids in OpenAI's CLIP vocabulary (bos, a photo of an astronaut riding a
# horse on mars, eos).
PROMPT = "a photo of an astronaut riding a horse on mars"
PROMPT_IDS = [49406, 320, 1125, 539, 550, 18376, 6765, 320, 4558, 525, 7496, 49407]

# Mixed text for the comparison with open_clip. HTML entities and curly quotes are left out on
# purpose: open_clip unescapes HTML and runs ftfy (which straightens quotes) before BPE, and
# transformers' CLIPTokenizer does neither, whatever its vocabulary.
TEXTS = [
    PROMPT,
    "Hello, World... It's 3:45pm -- 100% sure? (yes) [no] {maybe} #tag @user $5 a+b=c",
    "café naïve résumé Ångström Œuvre straße São Paulo",
    "emoji 🦊🔥👍🏽 and ❤️ fox",
    "東京の夜景 猫 고양이 Привет мир مرحبا",
    "numbers 1234567890 3.14159 1e-5 0x1F 2024-01-31",
    "  multiple   spaces\tand\nnewlines  ",
    "UPPER lower MiXeD CamelCase snake_case",
    "don't won't I'm you're they've we'll she'd",
    " ".join(f"word{i}" for i in range(120)),  # far past 77 tokens: truncated
    "masterpiece, best quality, " * 20,
    "",
]


def folder_path(folder: str) -> Path:
    return CONFIGS / folder


def parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --- the folders -------------------------------------------------------------------------------


def test_the_folders_hold_exactly_the_configs_and_tokenizer_files():
    expected = set(build.render_json()) | {
        f"{build.VOCAB_DIR}/{name}" for name in ("vocab.json", "merges.txt")
    }
    shipped = {
        path.relative_to(CONFIGS).as_posix()
        for path in CONFIGS.rglob("*")
        if path.is_file() and path.name != "README.md"
    }
    assert shipped == expected
    assert set(FAMILIES) == set(build.CONFIGS)
    assert (CONFIGS / "README.md").is_file()


@pytest.mark.scripts
def test_the_json_files_are_what_the_build_script_writes():
    assert build.compare(build.render_json()) == [], "run python scripts/build_configs.py"


@pytest.mark.parametrize("folder", FAMILIES)
def test_the_pipeline_index_names_the_pipeline_and_its_components(folder):
    spec = FAMILIES[folder]
    index = DiffusionPipeline.load_config(folder_path(folder), local_files_only=True)
    assert index["_class_name"] == spec["pipeline"]
    components = {k: v for k, v in index.items() if not k.startswith("_") and isinstance(v, list)}
    for name, (library, _class_name) in components.items():
        if library is not None:
            config = "scheduler_config.json" if name == "scheduler" else "config.json"
            if name.startswith("tokenizer"):
                config = "tokenizer_config.json"
            assert (folder_path(folder) / name / config).is_file(), name
    # A single file has no safety checker; nothing that would need one may be listed.
    assert components.get("safety_checker", [None, None]) == [None, None]
    assert components.get("feature_extractor", [None, None]) == [None, None]


# --- the models, built on the meta device ------------------------------------------------------


@pytest.mark.parametrize("folder", FAMILIES)
def test_the_unet_config_builds_the_published_unet(folder):
    spec = FAMILIES[folder]
    config = UNet2DConditionModel.load_config(
        folder_path(folder), subfolder="unet", local_files_only=True
    )
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config)
    assert parameters(unet) == spec["unet"]
    assert unet.config.sample_size == spec["sample_size"]
    assert unet.config.cross_attention_dim == spec["cross_attention_dim"]
    if folder.startswith("sd2"):
        assert list(unet.config.attention_head_dim) == [5, 10, 20, 20]
        assert unet.config.use_linear_projection is True
        # 2.1 768-v upcasts attention to fp32 (it overflows in fp16); the 512 base does not.
        assert unet.config.upcast_attention is (folder == "sd2-v")
    if folder == "sdxl":
        assert unet.config.addition_embed_type == "text_time"
        assert unet.config.addition_time_embed_dim == 256
        assert unet.config.projection_class_embeddings_input_dim == 2816
        assert list(unet.config.transformer_layers_per_block) == [1, 2, 10]


@pytest.mark.parametrize("folder", FAMILIES)
def test_the_vae_config_builds_the_sd_vae(folder):
    config = AutoencoderKL.load_config(folder_path(folder), subfolder="vae", local_files_only=True)
    with torch.device("meta"):
        vae = AutoencoderKL.from_config(config)
    assert parameters(vae) == VAE_PARAMETERS
    if folder == "sdxl":
        assert vae.config.scaling_factor == 0.13025
        assert vae.config.force_upcast is True
    else:
        assert vae.config.scaling_factor == 0.18215


@pytest.mark.parametrize("folder", FAMILIES)
def test_the_text_encoder_configs_build_the_published_encoders(folder):
    for name, (model_class, expected) in FAMILIES[folder]["text_encoders"].items():
        config = CLIPTextConfig.from_pretrained(
            folder_path(folder), subfolder=name, local_files_only=True
        )
        with torch.device("meta"):
            model = model_class(config)
        assert parameters(model) == expected, name
        assert config.vocab_size == 49408 and config.max_position_embeddings == 77
    if folder.startswith("sd2"):
        assert config.hidden_act == "gelu"
        assert config.num_hidden_layers == 23
        assert config.projection_dim == 512


@pytest.mark.parametrize("folder", FAMILIES)
def test_the_scheduler_loads_as_published(folder):
    spec = FAMILIES[folder]
    scheduler = spec["scheduler"].from_pretrained(
        folder_path(folder), subfolder="scheduler", local_files_only=True
    )
    config = scheduler.config
    assert type(scheduler) is spec["scheduler"]
    assert config.prediction_type == spec["prediction_type"]
    assert config.steps_offset == 1
    assert config.beta_schedule == "scaled_linear"
    assert (config.beta_start, config.beta_end) == (0.00085, 0.012)
    if folder == "sdxl":
        assert config.timestep_spacing == "leading"
        assert config.interpolation_type == "linear"
        assert config.use_karras_sigmas is False
    if spec["scheduler"] is PNDMScheduler:
        assert config.skip_prk_steps is True


# --- the tokenizers ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizers() -> dict[tuple[str, str], CLIPTokenizer]:
    """Every shipped tokenizer, loaded the way from_single_file loads it (from the folder
    txt2img hands it, the shared vocabulary linked in)."""
    loaded = {}
    for folder, name in TOKENIZERS:
        with readable_config(folder_path(folder)) as readable:
            loaded[folder, name] = CLIPTokenizer.from_pretrained(
                readable, subfolder=name, local_files_only=True
            )
    return loaded


@pytest.mark.parametrize(("folder", "name"), TOKENIZERS)
def test_the_tokenizer_loads_with_the_clip_vocabulary(tokenizers, folder, name):
    tokenizer = tokenizers[folder, name]
    assert len(tokenizer) == 49408
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id) == (49406, 49407)
    assert tokenizer.model_max_length == 77
    # SD 1 and SDXL's first tokenizer pad with <|endoftext|>; SD 2 and SDXL's second with "!".
    assert tokenizer.pad_token_id == FAMILIES[folder]["pad_ids"][name]
    ids = tokenizer(PROMPT, padding="max_length", max_length=77, truncation=True).input_ids
    assert ids[: len(PROMPT_IDS)] == PROMPT_IDS
    assert set(ids[len(PROMPT_IDS) :]) == {tokenizer.pad_token_id}


def test_the_package_holds_one_copy_of_the_clip_vocabulary():
    for file in ("vocab.json", "merges.txt"):
        assert [path.parent.name for path in CONFIGS.rglob(file)] == [build.VOCAB_DIR], file


def test_the_vocabulary_follows_the_clip_bpe_rules():
    """The first 512 ids are the byte symbols and the same with </w>; merges are pairs."""
    tokenizer = CLIPTokenizer.from_pretrained(CONFIGS / build.VOCAB_DIR)
    vocab = tokenizer.get_vocab()
    symbols = list(build.bytes_to_unicode().values())
    assert [vocab[s] for s in symbols] == list(range(256))
    assert [vocab[s + "</w>"] for s in symbols] == list(range(256, 512))
    merges = (CONFIGS / build.VOCAB_DIR / "merges.txt").read_text("utf-8").splitlines()
    assert merges[0] == "#version: 0.2" and len(merges) == 1 + 49408 - 512 - 2
    assert vocab["".join(merges[1].split())] == 512
    assert vocab["".join(merges[-1].split())] == 49405


# --- the proof against open_clip (needs open-clip-torch installed, without its dependencies) ---


@pytest.fixture(scope="module")
def open_clip_dir() -> Path:
    path = build.open_clip_dir()
    if path is None:
        pytest.skip(
            "open-clip-torch is not installed: pip install --no-deps open-clip-torch==3.3.0"
        )
    return path


@pytest.fixture(scope="module")
def open_clip_tokenizer(open_clip_dir):
    """open_clip's SimpleTokenizer, from its own tokenizer.py, without importing open_clip."""
    pytest.importorskip("ftfy", reason="open_clip's tokenizer needs ftfy: pip install ftfy")
    spec = importlib.util.spec_from_file_location(
        "open_clip_tokenizer", open_clip_dir / "tokenizer.py"
    )
    module = importlib.util.module_from_spec(spec)
    saved = os.environ.get("TOKENIZERS_PARALLELISM")
    try:
        spec.loader.exec_module(module)  # it sets TOKENIZERS_PARALLELISM: put it back
    finally:
        if saved is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = saved
    return module.SimpleTokenizer()


@pytest.mark.scripts
def test_the_vocabulary_is_derived_from_open_clips_bpe_file(open_clip_dir):
    files = build.render_tokenizer(build.read_bpe())
    assert build.compare(files) == []


@pytest.mark.parametrize(("folder", "name"), TOKENIZERS)
def test_token_ids_match_open_clips_tokenizer(tokenizers, open_clip_tokenizer, folder, name):
    tokenizer = tokenizers[folder, name]
    pad = tokenizer.pad_token_id
    for text in TEXTS:
        expected = open_clip_tokenizer(text)[0].tolist()  # 77 ids, truncated, padded with 0
        ids = tokenizer(text, padding="max_length", max_length=77, truncation=True).input_ids
        length = 77 if 0 not in expected else expected.index(0)
        assert ids[:length] == expected[:length], text
        assert set(ids[length:]) <= {pad}, text
    if pad == 0:
        # Where "!" is the pad token, transformers splits "!" out of the text as a special
        # token (id 0), where open_clip reads "!" as text. The real stabilityai repositories
        # behave the same (huggingface/diffusers#4153); text without "!" is unaffected.
        wow = tokenizer("wow").input_ids[1:-1]
        assert tokenizer("wow!").input_ids == [49406, *wow, 0, 49407]
        assert open_clip_tokenizer("wow!")[0].tolist()[:4] == [49406, *wow, 256, 49407]
