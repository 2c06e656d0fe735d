"""The two PNG text chunks every image carries.

`parameters` is AUTOMATIC1111's "infotext", byte for byte in its format, so the many
tools that read it (A1111, ComfyUI, Civitai, sd-parsers) show our settings.
`txt2img` is the full record as JSON, enough to regenerate the image exactly.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from . import __version__


@dataclass(frozen=True)
class ImageRecord:
    """Everything that decided one image's pixels."""

    prompt: str
    negative_prompt: str
    seed: int
    steps: int
    guidance: float
    width: int
    height: int
    index: int
    scheduler: str | None  # the friendly name asked for, or None for the model's own
    scheduler_class: str
    sampler: str  # A1111's name for the scheduler
    schedule_type: str | None
    model: str
    model_name: str
    model_family: str
    prediction_type: str
    pipeline: str
    device: str
    dtype: str
    vae_fp32_retry: bool  # the first decode gave NaN; this image was decoded in fp32
    speedups: list[str]  # --fast / --compile parts in use (see fast.py)
    addons: list[dict[str, Any]]  # VAE, LoRAs, embeddings: kind, name, hash, scale, token
    versions: dict[str, str]


def _format_value(value: Any) -> str:
    text = f"{value:g}" if isinstance(value, float) else str(value)
    # A1111 quotes a value as a JSON string when it would break the "k: v, k: v" line.
    if any(ch in text for ch in ",:\n"):
        return json.dumps(text, ensure_ascii=False)
    return text


def infotext(record: ImageRecord) -> str:
    """A1111's `parameters` text: prompt, optional negative prompt line, then `k: v` pairs."""
    fields: dict[str, Any] = {
        "Steps": record.steps,
        "Sampler": record.sampler,
        "Schedule type": record.schedule_type,
        "CFG scale": float(record.guidance),
        "Seed": record.seed,
        "Size": f"{record.width}x{record.height}",
        "Model": record.model_name,
        "VAE hash": _one(record, "vae", "hash"),
        "VAE": _one(record, "vae", "name"),
        "RNG": "CPU",  # we always draw the starting noise on the CPU
        "Lora hashes": _hashes(record, "lora"),
        "TI hashes": _hashes(record, "embedding"),
        "Version": f"txt2img {__version__}",
    }
    pairs = ", ".join(
        key if str(value) == key else f"{key}: {_format_value(value)}"
        for key, value in fields.items()
        if value is not None
    )
    negative = f"\nNegative prompt: {record.negative_prompt}" if record.negative_prompt else ""
    return f"{record.prompt}{negative}\n{pairs}".strip()


def _one(record: ImageRecord, kind: str, key: str) -> Any:
    return next((addon[key] for addon in record.addons if addon["kind"] == kind), None)


def _hashes(record: ImageRecord, kind: str) -> str | None:
    """A1111's "name: hash, name: hash" list (quoted as a whole when written); like
    A1111, it leaves out add-ons without a hash (Hub ids, folders)."""
    pairs = [f"{a['name']}: {a['hash']}" for a in record.addons if a["kind"] == kind and a["hash"]]
    return ", ".join(pairs) or None


def text_chunks(record: ImageRecord) -> dict[str, str]:
    return {
        "parameters": infotext(record),
        "txt2img": json.dumps(record.__dict__, ensure_ascii=False, sort_keys=True),
    }
