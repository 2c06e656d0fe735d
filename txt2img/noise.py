"""The starting noise of an image, by A1111's rules (the team's
../shared/reference/image-in.md §4 and §4b).

- The source (--rng): `cpu` (torch's CPU generator, seeded with the image's seed:
  txt2img's default and A1111's `RNG: CPU`) or `nv` (what `torch.randn` gives on an NVIDIA
  GPU for the seed: A1111's default `RNG: GPU` on NVIDIA cards, and its `RNG: NV`),
  computed on the CPU, so it is the same on any device.
- Variation seeds: the seed's noise and the variation seed's, mixed by a spherical
  interpolation per channel and column (`slerp`).
- ENSD: the step noise of the samplers that add noise at every step comes from a
  generator seeded with seed + ENSD.

An NVIDIA GPU draws element i of a fresh generator's first draw from Philox4x32-10, keyed by
the seed, with the counter (offset, 0, i, 0), and makes it normal by Box-Muller on the first
two of the four output words (written from the description in the team's
../shared/reference/image-in.md §4b; A1111's code is AGPL and is not copied).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

_MULTIPLIERS = (np.uint64(0xD2511F53), np.uint64(0xCD9E8D57))
_KEY_STEPS = (np.uint32(0x9E3779B9), np.uint32(0xBB67AE85))
_LOW = np.uint64(0xFFFFFFFF)
_ROUNDS = 10


def philox4x32(counter: list[np.ndarray], key: list[np.ndarray]) -> list[np.ndarray]:
    """Philox4x32-10 of each column of `counter` (four uint32 arrays) under `key` (two
    uint32 arrays or scalars): the four output words."""
    c0, c1, c2, c3 = (np.asarray(word, dtype=np.uint32) for word in counter)
    k0, k1 = (np.asarray(word, dtype=np.uint32) for word in key)
    with np.errstate(over="ignore"):  # the key's increments wrap around, by design
        for number in range(_ROUNDS):
            product0 = c0.astype(np.uint64) * _MULTIPLIERS[0]
            product1 = c2.astype(np.uint64) * _MULTIPLIERS[1]
            c0, c1, c2, c3 = (
                (product1 >> np.uint64(32)).astype(np.uint32) ^ c1 ^ k0,
                (product1 & _LOW).astype(np.uint32),
                (product0 >> np.uint64(32)).astype(np.uint32) ^ c3 ^ k1,
                (product0 & _LOW).astype(np.uint32),
            )
            if number < _ROUNDS - 1:
                k0, k1 = k0 + _KEY_STEPS[0], k1 + _KEY_STEPS[1]
    return [c0, c1, c2, c3]


def nv_randn(seed: int, shape: tuple[int, ...], offset: int = 0) -> np.ndarray:
    """The `offset`-th draw (0: the first) of `shape` normal float32 values that an
    NVIDIA GPU's `torch.randn` gives after `torch.manual_seed(seed)`."""
    count = math.prod(shape)
    index = np.arange(count, dtype=np.uint64)
    seed %= 1 << 64
    key = [np.uint32(seed & 0xFFFFFFFF), np.uint32(seed >> 32)]
    zeros = np.zeros(count, dtype=np.uint32)
    counter = [
        np.full(count, offset, dtype=np.uint32),
        zeros,
        (index & _LOW).astype(np.uint32),
        (index >> np.uint64(32)).astype(np.uint32),
    ]
    x, y, _, _ = philox4x32(counter, key)
    return _box_muller(x, y).reshape(shape)


def _box_muller(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """One normal value from two uniform words, in float32 as the GPU computes it."""
    scale = np.float32(2.0**-32)
    u = x.astype(np.float32) * scale + np.float32(2.0**-33)
    v = y.astype(np.float32) * np.float32(2 * math.pi * 2.0**-32) + np.float32(math.pi * 2.0**-32)
    return (np.sqrt(np.float32(-2.0) * np.log(u)) * np.sin(v)).astype(np.float32)


def starting_noise(
    batch: list[Any], shape: tuple[int, int, int]
) -> tuple[torch.Tensor | None, list[torch.Generator]]:
    """The batch's starting latents (float32, on the CPU) and the generators its sampler
    draws step noise from. With the CPU source and no variation or ENSD the latents are
    None: the pipeline draws them from the generators itself, exactly as diffusers does."""
    first = batch[0]
    if first["rng"] == "cpu" and not first["variation_strength"] and not first["ensd"]:
        return None, [torch.Generator("cpu").manual_seed(job["seed"]) for job in batch]
    noises, generators = [], []
    for job in batch:
        generator = torch.Generator("cpu").manual_seed(job["seed"])
        noise = _first_draw(job["rng"], job["seed"], shape, generator)
        if job["variation_strength"]:
            other = torch.Generator("cpu").manual_seed(job["variation_seed"])
            varied = _first_draw(job["rng"], job["variation_seed"], shape, other)
            noise = slerp(job["variation_strength"], noise, varied)
        if job["ensd"]:
            generator = torch.Generator("cpu").manual_seed(job["seed"] + job["ensd"])
        noises.append(noise)
        generators.append(generator)
    return torch.stack(noises), generators


def _first_draw(
    rng: str, seed: int, shape: tuple[int, ...], generator: torch.Generator
) -> torch.Tensor:
    """The seed's first draw; on the CPU source, from `generator`, which the sampler's step
    noise then continues from (as in A1111)."""
    if rng == "nv":
        return torch.from_numpy(nv_randn(seed, shape))
    return torch.randn(shape, generator=generator, dtype=torch.float32)


def slerp(strength: float, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """A1111's spherical mix of two noises (C, H, W): for each channel and column, the
    vector along the height axis. 0 gives `a` and 1 gives `b`, exactly. Where the two are
    nearly parallel (the mean cosine over 0.9995) A1111 mixes linearly, weighting `a` by
    `strength` (the ends swapped; kept, to draw what A1111 draws)."""
    a_unit = a / torch.linalg.norm(a, dim=1, keepdim=True)
    b_unit = b / torch.linalg.norm(b, dim=1, keepdim=True)
    dot = (a_unit * b_unit).sum(dim=1, keepdim=True)
    if dot.mean() > 0.9995:
        return strength * a + (1 - strength) * b
    omega = torch.acos(dot)
    sine = torch.sin(omega)
    return torch.sin((1 - strength) * omega) / sine * a + torch.sin(strength * omega) / sine * b
