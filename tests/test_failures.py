"""Images that come out wrong, devices that run out of memory, and the switches for
small GPUs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, DiffusionPipeline, StableDiffusionPipeline
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import CLIPConfig, CLIPImageProcessor

from txt2img.errors import ExitCode


def copy_model(models, tmp_path, name: str) -> Path:
    folder = tmp_path / name
    shutil.copytree(models["sd1"], folder)
    return folder


def test_fp16_overflow_is_decoded_again_in_fp32(cli, tmp_path, models):
    model = copy_model(models, tmp_path, "overflows-in-fp16")
    weights_file = model / "vae" / "diffusion_pytorch_model.safetensors"
    weights = load_file(weights_file)
    for key in ("decoder.conv_in.weight", "decoder.conv_in.bias"):
        weights[key] = weights[key] * 3e4  # weights fit fp16; activations overflow 65504
    save_file(weights, weights_file)

    result = cli("a fox", "-m", model, "--dtype", "fp16", "--steps", 2, "--seed", 1,
                 "-o", tmp_path / "out")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert "decoding it again with the VAE in fp32" in result.stderr
    path = Path(result.stdout.strip())
    record = json.loads(Image.open(path).text["txt2img"])
    assert record["vae_fp32_retry"] is True and record["dtype"] == "fp16"
    assert np.asarray(Image.open(path)).std() > 0


@pytest.fixture
def model_with_safety_checker(models, tmp_path) -> Path:
    """The tiny model plus a tiny safety checker that flags every image."""
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config={"hidden_size": 8, "intermediate_size": 8, "num_hidden_layers": 1,
                     "num_attention_heads": 2},
        vision_config={"hidden_size": 8, "intermediate_size": 8, "num_hidden_layers": 1,
                       "num_attention_heads": 2, "image_size": 32, "patch_size": 8},
        projection_dim=8,
    )  # fmt: skip
    checker = StableDiffusionSafetyChecker(config)
    checker.concept_embeds_weights.data.fill_(-1.0)  # every image is over the threshold
    pipe = StableDiffusionPipeline.from_pretrained(models["sd1"])
    pipe.register_modules(
        safety_checker=checker,
        feature_extractor=CLIPImageProcessor(crop_size=32, size={"shortest_edge": 32}),
    )
    pipe.register_to_config(requires_safety_checker=True)
    folder = tmp_path / "checked"
    pipe.save_pretrained(folder)
    return folder


def test_safety_checker_is_kept_and_a_flagged_image_is_not_written(
    cli, tmp_path, model_with_safety_checker
):
    args = ("a fox", "-m", model_with_safety_checker, "--steps", 1, "--seed", 1, "-q")
    flagged = cli(*args, "-o", tmp_path / "kept")
    assert flagged.exit_code == ExitCode.BAD_IMAGE
    assert "safety checker" in flagged.stderr and "--no-safety-checker" in flagged.stderr
    assert not (tmp_path / "kept").exists()

    unchecked = cli(*args, "--no-safety-checker", "-o", tmp_path / "off")
    assert unchecked.exit_code == 0, unchecked.stderr
    assert np.asarray(Image.open(unchecked.stdout.strip())).any()


def test_out_of_memory_is_one_line_naming_low_vram(cli, tmp_path, models, monkeypatch):
    def out_of_memory(self, *args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(StableDiffusionPipeline, "__call__", out_of_memory)
    result = cli("a fox", "-m", models["sd1"], "--seed", 1, "-q", "-o", tmp_path)
    assert result.exit_code == ExitCode.OUT_OF_MEMORY
    assert result.stderr.count("\n") == 1 and "--low-vram" in result.stderr
    assert result.stdout == "" and list(tmp_path.iterdir()) == []


def test_low_vram_turns_on_every_memory_saver(cli, tmp_path, models, monkeypatch):
    calls = []
    for cls, method in (
        (AutoencoderKL, "enable_tiling"),
        (AutoencoderKL, "enable_slicing"),
        (DiffusionPipeline, "enable_attention_slicing"),
        (DiffusionPipeline, "enable_model_cpu_offload"),
    ):
        original = getattr(cls, method)

        def spy(self, *args, _original=original, _name=method, **kwargs):
            calls.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(cls, method, spy)
    result = cli("a fox", "-m", models["sd1"], "--steps", 1, "--seed", 1, "--low-vram",
                 "-o", tmp_path)  # fmt: skip
    assert result.exit_code == 0, result.stderr
    # On the CPU, offloading to the CPU is moot: everything else is on.
    assert sorted(calls) == ["enable_attention_slicing", "enable_slicing", "enable_tiling"]
    assert "memory savers: cpu_offload, vae_tiling, vae_slicing, attention_slicing" in (
        result.stderr
    )


def test_a_librarys_unfilled_placeholders_are_left_out_of_its_message():
    from txt2img.errors import first_line

    message = ValueError(  # diffusers 0.42's textual-inversion check forgot its f
        "Expected each embedding to be of shape {input_embeddings.shape[-1]}, but are "
        '{embeddings.shape[-1]} in {"json": 1}'
    )
    assert first_line(message) == 'Expected each embedding to be of shape, but are in {"json": 1}'
