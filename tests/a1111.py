"""AUTOMATIC1111's infotext reader, ported from `modules/infotext_utils.py`
(`parse_generation_parameters`), so tests read our PNGs the way A1111 does."""

from __future__ import annotations

import json
import re

RE_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
RE_IMAGESIZE = re.compile(r"^(\d+)x(\d+)$")


def unquote(text: str) -> str:
    if not text or text[0] != '"' or text[-1] != '"':
        return text
    try:
        return json.loads(text)
    except Exception:
        return text


def parse_generation_parameters(x: str) -> dict[str, str]:
    res: dict[str, str] = {}
    prompt = ""
    negative_prompt = ""
    done_with_prompt = False
    *lines, lastline = x.strip().split("\n")
    if len(RE_PARAM.findall(lastline)) < 3:
        lines.append(lastline)
        lastline = ""
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            done_with_prompt = True
            line = line[16:].strip()
        if done_with_prompt:
            negative_prompt += ("" if negative_prompt == "" else "\n") + line
        else:
            prompt += ("" if prompt == "" else "\n") + line
    res["Prompt"] = prompt
    res["Negative prompt"] = negative_prompt
    for k, v in RE_PARAM.findall(lastline):
        try:
            if v[0] == '"' and v[-1] == '"':
                v = unquote(v)
            m = RE_IMAGESIZE.match(v)
            if m is not None:
                res[f"{k}-1"] = m.group(1)
                res[f"{k}-2"] = m.group(2)
            else:
                res[k] = v
        except Exception:
            print(f"Error parsing {k}: {v}")
    return res


# --- A1111's default filling, after the pairs are read (A1111 1.9+) ---------------------------
# A missing key means A1111's default; the Sampler is split from a schedule named at its end,
# and a schedule equal to the sampler's own default is written back as "Automatic".

SCHEDULER_LABELS = {  # A1111's schedulers: name -> label
    "automatic": "Automatic", "uniform": "Uniform", "karras": "Karras",
    "exponential": "Exponential", "polyexponential": "Polyexponential",
    "sgm_uniform": "SGM Uniform", "kl_optimal": "KL Optimal",
    "align_your_steps": "Align Your Steps", "simple": "Simple", "normal": "Normal",
    "ddim": "DDIM", "beta": "Beta",
}  # fmt: skip
# A1111's samplers, each with the scheduler its options name as default ("" for none).
SAMPLER_DEFAULTS = {
    "DPM++ 2M": "karras", "DPM++ SDE": "karras", "DPM++ 2M SDE": "exponential",
    "DPM++ 2M SDE Heun": "exponential", "DPM++ 2S a": "karras", "DPM++ 3M SDE": "exponential",
    "Euler a": "", "Euler": "", "LMS": "", "Heun": "", "DPM2": "karras", "DPM2 a": "karras",
    "DPM fast": "", "DPM adaptive": "", "Restart": "karras", "DDIM": "", "DDIM CFG++": "",
    "PLMS": "", "UniPC": "", "LCM": "",
}  # fmt: skip
SAMPLER_ALIASES = {"k_dpmpp_2m": "DPM++ 2M", "k_euler_a": "Euler a", "k_euler": "Euler",
                   "k_lms": "LMS", "k_heun": "Heun", "k_lcm": "LCM"}  # fmt: skip


def sampler_and_scheduler(sampler: str | None, schedule: str | None) -> tuple[str, str]:
    """A1111's reading of (Sampler, Schedule type): its sampler name and schedule label."""
    by_label = {label: name for name, label in SCHEDULER_LABELS.items()}
    found = schedule if schedule in by_label else None
    found = found or SCHEDULER_LABELS.get(schedule or "", "Automatic")
    name = sampler or "DPM++ 2M"
    for key, label in SCHEDULER_LABELS.items():
        for option in (label, key):
            if name.endswith(" " + option):
                found, name = label, name[: -len(option) - 1]
                break
    name = SAMPLER_ALIASES.get(name, name)
    if name not in SAMPLER_DEFAULTS:
        name = "DPM++ 2M"  # A1111 falls back to its first sampler
    if SAMPLER_DEFAULTS[name] and SCHEDULER_LABELS[SAMPLER_DEFAULTS[name]] == found:
        found = "Automatic"
    return name, found


def read_infotext(text: str) -> dict[str, str]:
    """The fields A1111's paste and API readers get from an infotext: parsed, then every
    missing key at its default."""
    fields = parse_generation_parameters(text)
    for key, default in (("Clip skip", "1"), ("RNG", "GPU"), ("Schedule type", "Automatic"),
                         ("Emphasis", "Original")):  # fmt: skip
        fields.setdefault(key, default)
    fields["Sampler"], fields["Schedule type"] = sampler_and_scheduler(
        fields.get("Sampler"), fields["Schedule type"]
    )
    return fields
