"""The starting noise: `--rng nv` gives what an NVIDIA GPU's `torch.randn` gives for the
seed, on any device; A1111's `RNG` key is read and written for it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import (
    DiffusionPipeline,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
)
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


# --- variation seeds and ENSD ------------------------------------------------------------


def reference_slerp(s: float, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """A1111's rule in float64, one (channel, column) vector along the height at a time."""
    out = np.empty_like(a, dtype=np.float64)
    for c in range(a.shape[0]):
        for x in range(a.shape[2]):
            u, v = a[c, :, x].astype(np.float64), b[c, :, x].astype(np.float64)
            omega = np.arccos(np.dot(u / np.linalg.norm(u), v / np.linalg.norm(v)))
            out[c, :, x] = (np.sin((1 - s) * omega) * u + np.sin(s * omega) * v) / np.sin(omega)
    return out


def test_slerp_mixes_each_column_on_the_sphere():
    from txt2img.noise import slerp

    a, b = (
        torch.randn(4, 8, 6, generator=torch.Generator().manual_seed(1)),
        torch.randn(4, 8, 6, generator=torch.Generator().manual_seed(2)),
    )
    np.testing.assert_allclose(slerp(0.3, a, b).numpy(), reference_slerp(0.3, a.numpy(), b.numpy()),
                               rtol=1e-4, atol=1e-5)  # fmt: skip
    assert torch.equal(slerp(0.0, a, b), a) and torch.equal(slerp(1.0, a, b), b)
    unit_a, unit_b = torch.tensor([1.0, 0.0]).view(1, 2, 1), torch.tensor([0.0, 1.0]).view(1, 2, 1)
    mixed = slerp(0.3, unit_a, unit_b).flatten()
    np.testing.assert_allclose(mixed.numpy(), [0.891, 0.454], atol=1e-3)  # the norm kept: 1


DRAW = ("a red fox", "--steps", 2, "-W", 64, "-H", 64, "--scheduler", "euler", "-q")


def drawn(cli, models, out: Path, *args) -> list[Path]:
    result = cli(*DRAW, "-m", models["sd1"], "-o", out, *map(str, args))
    assert result.exit_code == 0, result.stderr
    return [Path(line) for line in result.stdout.splitlines()]


def png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_variation_strength_0_and_1_give_the_seeds_own_images(cli, tmp_path, models):
    [plain] = drawn(cli, models, tmp_path / "a", "--seed", 5)
    [other] = drawn(cli, models, tmp_path / "b", "--seed", 9)
    [zero] = drawn(cli, models, tmp_path / "c", "--seed", 5, "--variation-seed", 9,
                   "--variation-strength", 0)  # fmt: skip
    [one] = drawn(cli, models, tmp_path / "d", "--seed", 5, "--variation-seed", 9,
                  "--variation-strength", 1)  # fmt: skip
    assert np.array_equal(png(zero), png(plain)) and np.array_equal(png(one), png(other))
    assert "Variation seed" not in Image.open(zero).text["parameters"]


def test_a_variation_batch_keeps_the_seed_and_equals_diffusers_given_the_mixed_noise(
    cli, tmp_path, models
):
    paths = drawn(cli, models, tmp_path / "a", "--seed", 5, "--variation-seed", 9,
                  "--variation-strength", 0.3, "-N", 3, "-b", 3, "--ensd", 31337)  # fmt: skip
    records = [json.loads(Image.open(p).text["txt2img"]) for p in paths]
    assert [(r["seed"], r["variation_seed"]) for r in records] == [(5, 9), (5, 10), (5, 11)]
    text = Image.open(paths[2]).text["parameters"]
    assert "Seed: 5," in text and "Variation seed: 11, Variation seed strength: 0.3," in text
    assert "ENSD: 31337" in text
    pipe = DiffusionPipeline.from_pretrained(models["sd1"])
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    first = [torch.randn(4, 8, 8, generator=torch.Generator().manual_seed(s)) for s in (5, 11)]
    mixed = torch.from_numpy(reference_slerp(0.3, *(t.numpy() for t in first))).float()
    expected = pipe("a red fox", num_inference_steps=2, width=64, height=64,
                    latents=mixed[None]).images[0]  # fmt: skip
    np.testing.assert_allclose(png(paths[2]), np.asarray(expected), atol=1)  # float64 vs 32
    [alone] = drawn(cli, models, tmp_path / "b", "--seed", 5, "--variation-seed", 11,
                    "--variation-strength", 0.3, "--ensd", 31337)  # fmt: skip
    # The same noise alone as in the batch; batched float kernels may round one 8-bit
    # level differently on a rare pixel (as tests/test_batch.py allows).
    difference = np.abs(png(alone).astype(int) - png(paths[2]).astype(int))
    assert difference.max() <= 1 and (difference > 0).mean() < 0.005
    [again] = drawn(cli, models, tmp_path / "c", "--from", alone, "-m", models["sd1"])
    assert np.array_equal(png(again), png(alone))


def test_ensd_reseeds_the_step_noise_of_ancestral_samplers(cli, tmp_path, models):
    result = cli("a red fox", "-m", models["sd1"], "--steps", 2, "-W", 64, "-H", 64, "--seed",
                 5, "--scheduler", "euler-a", "--ensd", 31337, "-q", "-o", tmp_path)  # fmt: skip
    assert result.exit_code == 0, result.stderr
    pipe = DiffusionPipeline.from_pretrained(models["sd1"])
    pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    expected = pipe("a red fox", num_inference_steps=2, width=64, height=64, latents=latents,
                    generator=torch.Generator().manual_seed(5 + 31337)).images[0]  # fmt: skip
    assert np.array_equal(png(Path(result.stdout.strip())), np.asarray(expected))
