"""The starting noise of an image (--rng): `cpu` (torch's CPU generator, seeded with the image's
seed: txt2img's default and A1111's `RNG: CPU`) or `nv` (what `torch.randn` gives on an
NVIDIA GPU for the seed: A1111's default `RNG: GPU` on NVIDIA cards, and its `RNG: NV`),
computed on the CPU, so it is the same on any device.

An NVIDIA GPU draws element i of a fresh generator's first draw from Philox4x32-10, keyed by
the seed, with the counter (offset, 0, i, 0), and makes it normal by Box-Muller on the first
two of the four output words (written from the description in the team's
../shared/reference/image-in.md §4b; A1111's code is AGPL and is not copied).
"""

from __future__ import annotations

import math

import numpy as np

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
