"""The starting noise: `--rng nv` gives what an NVIDIA GPU's `torch.randn` gives for the
seed, on any device; A1111's `RNG` key is read and written for it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from txt2img.noise import nv_randn
from txt2img.records.read import read_image_settings

# torch.manual_seed(0); torch.randn(16, device="cuda"), as published from a CUDA device.
CUDA_SEED_0 = [-0.9247, -0.4253, -2.6438, 0.1452, -0.1209, -0.5797, -0.6229, -0.3284,
               -1.0745, -0.3631, -1.6711, 2.2655, 0.3117, -0.1842, 1.2866, 1.1820]  # fmt: skip


def test_nv_noise_is_what_an_nvidia_gpu_draws_for_the_seed():
    np.testing.assert_array_equal(np.round(nv_randn(0, (16,)).astype(np.float64), 4), CUDA_SEED_0)
    assert nv_randn(0, (2, 8)).dtype == np.float32
    np.testing.assert_array_equal(nv_randn(0, (2, 8)).ravel(), nv_randn(0, (16,)))
    assert not np.array_equal(nv_randn(1, (16,)), nv_randn(0, (16,)))
    assert not np.array_equal(nv_randn(0, (16,), offset=1), nv_randn(0, (16,)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
def test_nv_noise_equals_torch_randn_on_this_gpu():
    for seed in (0, 12345, 2**32 + 7):
        torch.manual_seed(seed)
        on_gpu = torch.randn(4, 128, 128, device="cuda").cpu().numpy()
        np.testing.assert_array_equal(nv_randn(seed, (4, 128, 128)), on_gpu)


def test_rng_nv_draws_the_pipeline_given_that_noise(cli, tmp_path, models):
    result = cli("a red fox", "-m", models["sd1"], "--rng", "nv", "--steps", 2, "--seed", 7,
                 "-W", 64, "-H", 64, "-o", tmp_path)  # fmt: skip
    assert result.exit_code == 0, result.stderr
    path = Path(result.stdout.strip())
    pipe = DiffusionPipeline.from_pretrained(models["sd1"])
    pipe.set_progress_bar_config(disable=True)
    latents = torch.from_numpy(nv_randn(7, (4, 8, 8)))[None]
    expected = pipe("a red fox", num_inference_steps=2, width=64, height=64, latents=latents,
                    generator=torch.Generator().manual_seed(7)).images[0]  # fmt: skip
    np.testing.assert_array_equal(np.asarray(Image.open(path)), np.asarray(expected))
    assert ", RNG: NV," in Image.open(path).text["parameters"]
    cpu = cli("a red fox", "-m", models["sd1"], "--steps", 2, "--seed", 7, "-W", 64, "-H", 64,
              "-o", tmp_path / "cpu")  # fmt: skip
    assert ", RNG: CPU," in Image.open(cpu.stdout.strip()).text["parameters"]
    assert not np.array_equal(np.asarray(Image.open(cpu.stdout.strip())), np.asarray(expected))


@pytest.mark.parametrize(
    ("rng", "source", "note"),
    [(None, "nv", "A1111's GPU noise"), ("GPU", "nv", "A1111's GPU noise"), ("NV", "nv", None),
     ("CPU", "cpu", None)],
)  # fmt: skip
def test_a1111s_rng_key_is_read_as_its_noise_source(tmp_path, rng, source, note):
    info = PngInfo()
    text = "a fox\nSteps: 2, Sampler: Euler, CFG scale: 7, Seed: 1, Size: 64x64, Model: m"
    info.add_text("parameters", text + (f", RNG: {rng}" if rng else ""))
    image = tmp_path / "a.png"
    Image.new("RGB", (8, 8)).save(image, pnginfo=info)
    settings = read_image_settings(image)
    assert settings.values["rng"] == source
    assert any(note in line for line in settings.notes) if note else not settings.notes
