"""--fast: the speed-ups beyond diffusers' defaults that won on each kind of device.

Each part is measured on its own by `scripts/bench.py` (docs/BENCHMARKS.md says what each
bought) and is in `FAST_PATH` only for the devices where it won. SDPA attention is not a
part: diffusers already uses it by default.

The fast path changes the arithmetic (lower precision, other kernels), so its images are
visually equivalent to the default path's but not bit-identical; the parts used are
recorded in every image's metadata.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ..settings import Dtype, LoadOptions

PARTS = ("bf16", "channels_last", "fused_qkv", "compile")

# CPU: measured by scripts/bench.py (docs/BENCHMARKS.md). CUDA: not yet measured by this
# project (no GPU so far); channels_last and fused QKV cost nothing per run, while compile
# costs seconds in every new process even with a warm cache, so it stays opt-in (--compile)
# until the bench's GPU section shows where it pays.
FAST_PATH: dict[str, tuple[str, ...]] = {
    "cpu": ("bf16", "channels_last"),
    "cuda": ("channels_last", "fused_qkv"),
    "mps": (),
}


def speedups_for(options: LoadOptions, device: torch.device, has_loras: bool) -> tuple[str, ...]:
    """The parts to apply: `--fast`'s for this device, and `--compile`. bf16 only on CPUs
    that have bf16 instructions, and only when --dtype is left to txt2img; fused QKV
    projections would bypass LoRA layers, so they are left out when LoRAs are loaded."""
    parts = set(FAST_PATH.get(device.type, ())) if options.fast else set()
    if options.compile:
        parts.add("compile")
    if options.dtype is not Dtype.auto or (device.type == "cpu" and not cpu_has_fast_bf16()):
        parts.discard("bf16")
    if has_loras:
        parts.discard("fused_qkv")
    return tuple(part for part in PARTS if part in parts)


def cpu_has_fast_bf16() -> bool:
    """bf16 matrix instructions (AVX512-BF16 or AMX); elsewhere bf16 is emulated and slow."""
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def apply_fast_path(pipe: Any, parts: tuple[str, ...]) -> None:
    """Apply `parts` (but bf16, which picks the dtype at load time) to a placed pipeline."""
    if "channels_last" in parts:
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
    if "fused_qkv" in parts:
        pipe.fuse_qkv_projections()
    if "compile" in parts:
        compile_models(pipe)


def compile_models(pipe: Any) -> None:
    """torch.compile the U-Net and the VAE decoder, with the compiled kernels cached on
    disk so that the compile cost is paid once per machine (and shape), not once per run.
    Not `fullgraph`: with --cpu-offload, accelerate's hooks break the graph, and a graph
    break should cost speed, not the run."""
    use_compile_cache()
    pipe.unet.compile()
    pipe.vae.decoder.compile()


def use_compile_cache() -> Path:
    """Inductor's caches default to /tmp, which many systems empty at boot; keep them in
    the user's cache folder instead, unless TORCHINDUCTOR_CACHE_DIR says otherwise."""
    if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(base / "txt2img" / "torch-compile")
    return Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])
