"""tests/ldm_export.py: a tiny diffusers folder -> one original-layout (LDM) safetensors file ->
``from_single_file(file, config=folder)`` gives back the same weights and the same pixels."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline, StableDiffusionPipeline, StableDiffusionXLPipeline
from ldm_export import export_single_file
from safetensors import safe_open
from safetensors.torch import load_file

pytestmark = pytest.mark.scripts  # see pyproject.toml

FAMILIES = ("sd1", "sd2-v", "sdxl")
COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2")
TEXT_ENCODER_PREFIXES = {
    "sd1": ("cond_stage_model.transformer.text_model.",),  # OpenAI CLIP ViT-L, HF names
    "sd2-v": ("cond_stage_model.model.",),  # OpenCLIP ViT-H, OpenCLIP names
    "sdxl": ("conditioner.embedders.0.transformer.text_model.", "conditioner.embedders.1.model."),
}


def load_single_file(file: Path, folder: Path, tmp_path: Path, **kwargs):
    """Load ``file`` the way the CLI will, configured by a weightless copy of ``folder``: with
    the weights there, diffusers silently takes a text encoder it cannot find in the file from
    the folder instead, and the weight comparison below would prove nothing."""
    config = tmp_path / "config"
    if not config.exists():
        shutil.copytree(folder, config, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    xl = (folder / "text_encoder_2").is_dir()
    cls = StableDiffusionXLPipeline if xl else StableDiffusionPipeline
    return cls.from_single_file(str(file), config=str(config), local_files_only=True, **kwargs)


def assert_same_weights(expected, actual, dtype: torch.dtype = torch.float32) -> None:
    for name in COMPONENTS:
        if getattr(expected, name, None) is None:
            continue
        want, got = getattr(expected, name).state_dict(), getattr(actual, name).state_dict()
        assert want.keys() == got.keys(), name
        for key, value in want.items():
            assert torch.equal(value.to(dtype), got[key]), f"{name}.{key}"


def image(pipe) -> np.ndarray:
    generator = torch.Generator("cpu").manual_seed(0)
    return pipe("a red cube", num_inference_steps=2, generator=generator, output_type="np").images


@pytest.mark.parametrize("family", FAMILIES)
def test_round_trip_gives_the_same_weights_and_pixels(models, tmp_path, family):
    file = export_single_file(models[family], tmp_path / "model.safetensors")
    with safe_open(file, "pt") as f:
        assert f.metadata() == {"format": "pt"}
    state = load_file(file)
    prefixes = ("model.diffusion_model.", "first_stage_model.", *TEXT_ENCODER_PREFIXES[family])
    assert all(key.startswith(prefixes) for key in state)
    # Layout details diffusers' loader is lenient about (it would also take .1.conv / Linear):
    assert "model.diffusion_model.output_blocks.1.2.conv.weight" in state  # Upsample after attn
    assert state["first_stage_model.decoder.mid.attn_1.q.weight"].ndim == 4  # 1x1 conv
    single = load_single_file(file, models[family], tmp_path)
    folder = DiffusionPipeline.from_pretrained(models[family])
    assert_same_weights(folder, single)
    np.testing.assert_array_equal(image(single), image(folder))


@pytest.mark.parametrize("family", FAMILIES)
def test_float16_export(models, tmp_path, family):
    file = export_single_file(models[family], tmp_path / "model.safetensors", torch.float16)
    assert {v.dtype for v in load_file(file).values()} == {torch.float16}
    single = load_single_file(file, models[family], tmp_path, dtype=torch.float16)
    assert_same_weights(DiffusionPipeline.from_pretrained(models[family]), single, torch.float16)
