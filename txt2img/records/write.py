"""What is recorded of every image: the PNG text chunks and the JSON records on stdout.

`parameters` is AUTOMATIC1111's "infotext", in its format, so the many tools that read it
(A1111, ComfyUI, Civitai, sd-parsers) show our settings. `txt2img` is the full record as
JSON, enough to regenerate the image exactly. The per-image keys come from
`options.RECORDED_OPTIONS`; the rest says what the model and the run made of them.
"""

from __future__ import annotations

import json
import re
from typing import Any

from .. import __version__
from ..options import EMPHASIS, RECORDED_OPTIONS, RNG

# What the model and the device decided, beside the per-image options.
MODEL_KEYS = (
    "scheduler_class",  # the diffusers class actually used
    "sampler",  # A1111's name for it
    "schedule_type",
    "model",  # Hub id or absolute path
    "model_name",  # A1111's "Model:": file or folder name, or the Hub id
    "model_hash",  # A1111's "Model hash" of a single-file checkpoint: sha256, 10 hex digits
    "model_family",
    "prediction_type",
    "pipeline",
    "device",
    "dtype",
    "vae_fp32_retry",  # the first decode gave NaN; this image was decoded in fp32
    "speedups",  # --fast / --compile parts in use (see model/fast.py)
    "pad_conds",  # the positive and negative prompt were padded to the same chunk count
    "addons",  # VAE, LoRAs, embeddings: kind, name, hash, scale, token, te_scale, location
    "versions",
)
RECORD_KEYS = ("prompt", *(option.key for option in RECORDED_OPTIONS), "index", *MODEL_KEYS)
# Every --json line has exactly these keys, null where a status does not know them.
JSON_KEYS = ("status", "path", "error", "line", *RECORD_KEYS, "seconds")

# A line that A1111's reader would take as the start of the negative prompt.
_NEGATIVE_MARK = re.compile(r"^(\s*)N(egative prompt:)", re.MULTILINE)


def image_record(job: Any, facts: dict[str, Any]) -> dict[str, Any]:
    """The record of one image: `job`'s prompt, index and values plus the model's `facts`
    (one per `MODEL_KEYS`), in `RECORD_KEYS` order."""
    record = {"prompt": job.prompt, **job.values, "index": job.index, **facts}
    return {key: record[key] for key in RECORD_KEYS}


def json_line(status: str, path: str, job: Any, **known: Any) -> str:
    """One --json line; `known` fills what this status knows (the image record for
    written images, `error` for failed ones, `seconds`)."""
    line = dict.fromkeys(JSON_KEYS)
    line.update(status=status, path=path, line=job.line, prompt=job.prompt, index=job.index)
    line.update(job.values)
    line.update(known)
    text = json.dumps(line, ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a path whose bytes are not UTF-8: escaped, still JSON
        return json.dumps(line)
    return text


def _format_value(value: Any) -> str:
    text = f"{value:g}" if isinstance(value, float) else str(value)
    # A1111 quotes a value as a JSON string when it would break the "k: v, k: v" line.
    if any(ch in text for ch in ",:\n"):
        return json.dumps(text, ensure_ascii=False)
    return text


def unforgeable(text: str) -> str:
    """`text` as a line of the infotext that a reader parses back as what it is: A1111
    starts the negative prompt at any line beginning "Negative prompt:", so such a line
    gets a lower-case "n" (CLIP lower-cases all text, so the conditioning is the same)."""
    return _NEGATIVE_MARK.sub(r"\1n\2", text)


# A1111's order of the `k: v` pairs; a per-image option's own key (`Option.infotext`) that
# is not placed here goes before "Version".
_INFOTEXT_ORDER = (
    "Steps", "Sampler", "Schedule type", "CFG scale", "Seed", "Size", "Model hash", "Model",
    "VAE hash", "VAE", "Variation seed", "Variation seed strength", "RNG", "Lora hashes",
    "TI hashes", "Version",
)  # fmt: skip


def infotext(record: dict[str, Any]) -> str:
    """A1111's `parameters` text: prompt, optional negative prompt line, then `k: v` pairs."""
    fields: dict[str, Any] = {
        option.infotext: record[option.key]
        for option in RECORDED_OPTIONS
        if option.infotext and record[option.key] != option.infotext_default
    }
    fields.update({
        "Sampler": record["sampler"],
        "Schedule type": record["schedule_type"],
        "CFG scale": float(fields["CFG scale"]),
        "Size": f"{record['width']}x{record['height']}",
        "Model hash": record["model_hash"],
        "Model": record["model_name"],
        "VAE hash": _one(record, "vae", "hash"),
        "VAE": _one(record, "vae", "name"),
        "RNG": RNG[record["rng"]],
        # A1111 writes the variation seed only where it acts.
        "Variation seed": record["variation_seed"] if record["variation_strength"] else None,
        "Lora hashes": _hashes(record, "lora"),
        "TI hashes": _hashes(record, "embedding"),
        "Emphasis": _emphasis(record),
        "Pad conds": True if record["pad_conds"] else None,
        "Version": f"txt2img {__version__}",
    })  # fmt: skip
    order = [k for k in _INFOTEXT_ORDER if k != "Version"]
    order += [k for k in fields if k not in _INFOTEXT_ORDER] + ["Version"]
    pairs = ", ".join(
        key if str(fields[key]) == key else f"{key}: {_format_value(fields[key])}"
        for key in order
        if fields.get(key) is not None
    )
    negative = record["negative_prompt"]
    negative_line = f"\nNegative prompt: {unforgeable(negative)}" if negative else ""
    return f"{unforgeable(record['prompt'])}{negative_line}\n{pairs}".strip()


def _emphasis(record: dict[str, Any]) -> str | None:
    """A1111 names the emphasis mode when it is not the default and a prompt has brackets
    for it to act on."""
    brackets = any(c in record["prompt"] + record["negative_prompt"] for c in "([")
    return EMPHASIS[record["emphasis"]] if record["emphasis"] != "original" and brackets else None


def _one(record: dict[str, Any], kind: str, key: str) -> Any:
    return next((addon[key] for addon in record["addons"] if addon["kind"] == kind), None)


def _hashes(record: dict[str, Any], kind: str) -> str | None:
    """A1111's "name: hash, name: hash" list (quoted as a whole when written); like
    A1111, it leaves out add-ons without a hash (Hub ids, folders)."""
    pairs = [
        f"{a['name']}: {a['hash']}" for a in record["addons"] if a["kind"] == kind and a["hash"]
    ]
    return ", ".join(pairs) or None


def text_chunks(record: dict[str, Any]) -> dict[str, str]:
    return {
        "parameters": infotext(record),
        "txt2img": json.dumps(record, ensure_ascii=False, sort_keys=True),
    }
