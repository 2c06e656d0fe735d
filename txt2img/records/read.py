"""The settings an image records, read back: txt2img's own JSON chunk where there is one,
else AUTOMATIC1111's `parameters` infotext (PNG text chunks; JPEG and WebP EXIF
UserComment), as A1111, Forge, stable-diffusion.cpp and txt2img write it.

`ImageSettings.values` holds per-image option values (`options.RECORDED_OPTIONS` keys and
the prompt), so `--from IMAGE` can draw the image again; the model and add-ons the image
names are kept apart, to be found on disk.

Pure Python and Pillow: no torch here.
"""

from __future__ import annotations

import contextlib
import json
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UsageError
from ..model.schedulers import STEP_NOISE, scheduler_for
from ..options import EMPHASIS, RECORDED_OPTIONS, RNG_BY_NAME, from_json

USER_COMMENT = 0x9286  # EXIF UserComment, in the Exif IFD
EXIF_IFD = 0x8769
MAX_INFOTEXT_CHARS = 256 * 1024  # A1111's longest prompts are a few KB


@dataclass
class ImageSettings:
    path: Path
    source: str  # "txt2img" (its JSON chunk) or "a1111" (an infotext)
    parameters: str  # the infotext as written ("" if the image has none)
    fields: dict[str, str]  # the infotext's `key: value` pairs, as A1111's reader gives them
    values: dict[str, Any]  # prompt and per-image option values
    model: dict[str, Any] = field(default_factory=dict)  # location, name, hash
    addons: list[dict[str, Any]] = field(default_factory=list)  # kind, name, hash, ...
    record: dict[str, Any] | None = None  # txt2img's whole record
    # Settings the image records that txt2img cannot use (an unknown sampler, a seed that
    # is not a number): --from refuses them unless the command line gives its own value.
    problems: dict[str, UsageError] = field(default_factory=dict)
    # What --from cannot follow and draws anyway, said on stderr.
    notes: list[str] = field(default_factory=list)
    # Infotext keys of what txt2img does not draw: --from refuses the image (see
    # `unsupported_keys`).
    unsupported: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "path": str(self.path), "source": self.source, "settings": self.values,
            "model": self.model, "addons": self.addons, "fields": self.fields,
            "parameters": self.parameters, "record": self.record,
        }  # fmt: skip


def read_image_settings(path: Path) -> ImageSettings:
    """The settings `path` was drawn with; a `UsageError` naming it if it has none."""
    record, parameters = _image_text(path)
    if record is not None:
        return _from_record(path, record, parameters or "")
    if parameters:
        return _from_infotext(path, parameters)
    raise UsageError(
        f"{path} records no generation settings",
        "it has no txt2img or A1111 'parameters' metadata; image sites often strip it",
    )


def _image_text(path: Path) -> tuple[dict | None, str | None]:
    """The image's txt2img record and infotext, read from its header only: the pixels are
    never decoded, so an image of any size, or a truncated one, can be read."""
    from PIL import Image

    if not path.is_file():
        what = "does not exist" if not path.exists() else "is not a file"
        raise UsageError(f"{path} {what}", "give an image file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's notes on odd EXIF or sizes
            with Image.open(path) as image:
                info, comment = header_text(image)
    except Exception as exc:  # Pillow raises many kinds for files that are not images
        raise UsageError(f"{path} is not an image txt2img can read: {exc}") from None
    parameters = info.get("parameters") or _user_comment(comment)
    if not isinstance(parameters, str):
        parameters = None
    record = None
    if isinstance(info.get("txt2img"), str):
        try:
            record = json.loads(info["txt2img"])
        except (ValueError, RecursionError):
            record = None
        if not isinstance(record, dict) and not parameters:
            raise UsageError(f"{path}: its txt2img metadata is not a JSON object")
    return record if isinstance(record, dict) else None, parameters


def header_text(image: Any) -> tuple[dict[str, Any], Any]:
    """An opened image's text chunks and EXIF UserComment, from its header alone. For a
    PNG with no eXIf chunk before its pixels, Pillow's `getexif` would decode every
    pixel (0.7 GB for a 0.5 MB PNG of 13000x13000) to look for one after them; A1111
    writes its text before the pixels, so only the header is read."""
    info = dict(image.info)
    if image.format == "PNG" and "exif" not in info:
        return info, None
    return info, image.getexif().get_ifd(EXIF_IFD).get(USER_COMMENT)


def _user_comment(raw: Any) -> str | None:
    """EXIF UserComment: an 8-byte character-code prefix, then the text. A1111 writes
    "UNICODE\\0" and UTF-16; the byte order is told from the text."""
    if isinstance(raw, str):
        return raw or None
    if not isinstance(raw, bytes) or len(raw) <= 8:
        return None
    prefix, body = raw[:8], raw[8:]
    if prefix.startswith(b"UNICODE"):
        decoded = [body.decode(codec, "replace") for codec in ("utf-16-be", "utf-16-le")]
        return max(decoded, key=lambda text: sum(ch.isascii() for ch in text)).rstrip("\0")
    return body.decode("utf-8" if prefix.startswith(b"ASCII") else "latin-1", "replace")


# --- A1111's infotext -----------------------------------------------------------------------


def parse_infotext(text: str) -> dict[str, str]:
    """A1111's reader: the last line holds the `key: value` pairs if it has at least 3;
    lines before "Negative prompt:" are the prompt, the lines after it the negative
    prompt; values written as JSON strings are unquoted. A text over MAX_INFOTEXT_CHARS
    is refused (a UsageError)."""
    if len(text) > MAX_INFOTEXT_CHARS:
        raise UsageError(
            f"the image's parameters text is {len(text)} characters long, more than txt2img "
            f"reads ({MAX_INFOTEXT_CHARS})"
        )
    *lines, last = text.strip().split("\n")
    pairs = infotext_pairs(last)
    if len(pairs) < 3:
        lines.append(last)
        last = ""
    prompt, negative, in_negative = [], [], False
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            in_negative, line = True, line[len("Negative prompt:") :].strip()
        (negative if in_negative else prompt).append(line)
    fields = {"Prompt": "\n".join(prompt), "Negative prompt": "\n".join(negative)}
    for key, value in pairs if last else []:
        if len(value) > 1 and value[0] == value[-1] == '"':
            with contextlib.suppress(ValueError):
                value = json.loads(value)
        fields[key] = value
    return fields


def infotext_pairs(line: str) -> list[tuple[str, str]]:
    """The `key: value` pairs of A1111's parameter line, exactly as A1111's reader finds
    them (`re.findall` with its pattern: see RE_PARAM in tests/a1111.py), in one pass.
    That pattern backtracks quadratically on a long line without a colon, so a small
    compressed PNG chunk could take hours. Here where each run of key characters, comma
    and quoted value ends is found from the right first; then every try is a lookup."""
    n = len(line)
    key_end, non_space, comma = [n] * (n + 1), [n] * (n + 1), [n] * (n + 1)
    closing = [-1] * (n + 2)  # a quoted value's inside from i: its closing quote, or -1
    for i in range(n - 1, -1, -1):
        ch = line[i]
        key_end[i] = key_end[i + 1] if ch.isalnum() or ch in "_ -/" else i
        non_space[i] = non_space[i + 1] if ch.isspace() else i
        comma[i] = i if ch == "," else comma[i + 1]
        if ch == '"':
            closing[i] = i
        elif ch == "\\":  # an escape takes the next character, whatever it is
            closing[i] = closing[i + 2] if i + 1 < n else -1
        else:
            closing[i] = closing[i + 1]
    pairs, start = [], 0
    while start < n:  # as findall: a failed try moves on by one character
        key = non_space[start]
        end = key_end[key]
        is_key = key < n and (line[key].isalnum() or line[key] == "_") and end - key >= 2
        if not (is_key and end < n and line[end] == ":"):
            start += 1
            continue
        value = non_space[end + 1]
        close = closing[value + 1] if value < n and line[value] == '"' else -1
        if close > value + 1 and (close + 1 == n or line[close + 1] == ","):
            pairs.append((line[key:end], line[value : close + 1]))
            start = close + 2
        else:
            pairs.append((line[key:end], line[value : comma[value]]))
            start = comma[value] + 1
    return pairs


def _from_infotext(path: Path, parameters: str) -> ImageSettings:
    fields = parse_infotext(parameters)
    values: dict[str, Any] = {"prompt": fields["Prompt"],
                              "negative_prompt": fields["Negative prompt"]}  # fmt: skip
    problems: dict[str, UsageError] = {}
    for key, (name, kind) in _NUMBERS.items():
        if name in fields:
            _take(values, problems, key, lambda n=name, k=kind: _number(fields, n, k, path))
    if "Size" in fields:
        for key, index in (("width", 1), ("height", 2)):
            _take(values, problems, key, lambda i=index: _size(fields["Size"], i, path))
    if "Sampler" in fields:
        schedule = fields.get("Schedule type", _automatic_before_1_9(fields))
        _take(values, problems, "scheduler",
              lambda: scheduler_for(fields["Sampler"], schedule, str(path)))  # fmt: skip
    # A1111 leaves out what is at its default: Clip skip 1, Emphasis Original, RNG GPU,
    # no variation (its seed is then unused), ENSD 0.
    for key, default in (("clip_skip", 1), ("variation_strength", 0.0), ("ensd", 0)):
        values.setdefault(key, default)
    _take(values, problems, "emphasis", lambda: _emphasis(fields.get("Emphasis", "Original"), path))
    notes = []
    _take(values, problems, "rng", lambda: _rng(fields.get("RNG", "GPU"), path))
    if fields.get("RNG", "GPU") == "GPU":
        notes.append(
            f"{path} was drawn from A1111's GPU noise: txt2img draws an NVIDIA GPU's "
            "(--rng nv), so an image drawn on another GPU comes out different"
        )
    if values.get("rng") == "nv" and values.get("scheduler") in STEP_NOISE:
        notes.append(
            f"{path}'s sampler adds noise at every step, which txt2img draws on the CPU: "
            "the starting noise is the image's, the picture will still differ"
        )
    model = {"name": fields.get("Model"), "hash": fields.get("Model hash")}
    addons = [
        {"kind": kind, "name": name, "hash": digest}
        for kind, key in (("lora", "Lora hashes"), ("embedding", "TI hashes"))
        for name, digest in _hash_list(fields.get(key, ""))
    ]
    if fields.get("VAE"):
        addons.insert(0, {"kind": "vae", "name": fields["VAE"], "hash": fields.get("VAE hash")})
    return ImageSettings(path, "a1111", parameters, fields, values, model, addons,
                         problems=problems, notes=notes,
                         unsupported=unsupported_keys(fields))  # fmt: skip


# Infotext keys of what changes an A1111 picture and txt2img does not draw (yet): --from
# refuses an image that has one, unless --ignore-unsupported. Keys are matched whole, or
# by the prefixes of extensions' keys; some only with values other than A1111's default.
_UNSUPPORTED = ("Denoising strength", "First pass size", "Refiner", "Refiner switch at",
                "Noise multiplier", "Face restoration", "Hypernet", "Token merging ratio",
                "Mask blur", "Inpaint area")  # fmt: skip
_UNSUPPORTED_PREFIXES = ("Hires ", "ControlNet", "ADetailer", "Hypernet ")
_UNLESS = {"Tiling": ("False",), "Seed resize from": ("-1x-1",)}


def unsupported_keys(fields: dict[str, str]) -> list[str]:
    """The keys of `fields` that change the picture in ways txt2img does not draw."""
    return [
        key for key, value in fields.items()
        if key in _UNSUPPORTED or key.startswith(_UNSUPPORTED_PREFIXES)
        or (key in _UNLESS and value.strip() not in _UNLESS[key])
    ]  # fmt: skip


def _rng(name: str, path: Path) -> str:
    """A1111's `RNG`: GPU (its default; an NVIDIA GPU's noise is what txt2img can give)
    and NV are `nv`, CPU is `cpu`."""
    if name not in RNG_BY_NAME:
        raise UsageError(f"{path}: its RNG {name!r} is not one of {', '.join(RNG_BY_NAME)}")
    return RNG_BY_NAME[name]


def _emphasis(name: str, path: Path) -> str:
    emphasis = {name: key for key, name in EMPHASIS.items()}
    if name not in emphasis:
        raise UsageError(f"{path}: its Emphasis {name!r} is not one of {', '.join(emphasis)}")
    return emphasis[name]


def _automatic_before_1_9(fields: dict[str, str]) -> str | None:
    """A1111 before 1.9 wrote no Schedule type: a sampler drew its uniform schedule
    unless its name said otherwise ("DPM++ 2M Karras"). Since 1.9 a missing one is
    "Automatic", which is Karras for DPM++ 2M; the Version tells them apart."""
    version = re.search(r"v1\.(\d+)\.", fields.get("Version", ""))  # Forge: f0.0.17v1.8.0rc
    return "Uniform" if version and int(version[1]) < 9 else None


def _take(values: dict, problems: dict, key: str, read: Any) -> None:
    try:
        values[key] = read()
    except UsageError as exc:
        problems[key] = exc


def _size(text: str, index: int, path: Path) -> int:
    size = re.fullmatch(r"\s*(\d+)x(\d+)\s*", text)
    if size is None:
        raise UsageError(f"{path}: its Size {text!r} is not WIDTHxHEIGHT")
    return int(size[index])


_NUMBERS = {"seed": ("Seed", int), "steps": ("Steps", int), "guidance": ("CFG scale", float),
            "clip_skip": ("Clip skip", int), "variation_seed": ("Variation seed", int),
            "variation_strength": ("Variation seed strength", float),
            "ensd": ("ENSD", int)}  # fmt: skip


def _number(fields: dict[str, str], name: str, kind: type, path: Path) -> Any:
    """An integer exactly (A1111 seeds reach 2**32; sd.cpp writes `7.000000`), or a
    float."""
    text = fields[name].strip()
    try:
        if kind is float:
            return float(text)
        try:
            return int(text)
        except ValueError:
            number = float(text)
            if not number.is_integer():
                raise ValueError(text) from None
            return int(number)
    except (ValueError, OverflowError):
        raise UsageError(f"{path}: its {name} {fields[name]!r} is not a number") from None


def _hash_list(text: str) -> list[tuple[str, str]]:
    """A1111's "name: hash, name: hash"."""
    pairs = []
    for item in text.split(","):
        name, sep, digest = item.rpartition(":")
        if sep and name.strip():
            pairs.append((name.strip(), digest.strip()))
    return pairs


# --- txt2img's own record -------------------------------------------------------------------


def _from_record(path: Path, record: dict[str, Any], parameters: str) -> ImageSettings:
    values, problems = {}, {}
    for key, kind in (("prompt", str), *((o.key, o.kind) for o in RECORDED_OPTIONS)):
        if key in record:
            _take(values, problems, key, lambda k=key, t=kind: _typed(record, k, t, path))
    model = {key: record.get(name) if isinstance(record.get(name), str) else None
             for key, name in (("location", "model"), ("name", "model_name"),
                               ("hash", "model_hash"))}  # fmt: skip
    fields = parse_infotext(parameters) if parameters else {}
    addons = record.get("addons")
    addons = [
        addon for addon in (addons if isinstance(addons, list) else [])
        if isinstance(addon, dict) and isinstance(addon.get("kind"), str)
        and isinstance(addon.get("name"), str)
    ]  # fmt: skip
    return ImageSettings(path, "txt2img", parameters, fields, values, model, addons, record,
                         problems)  # fmt: skip


def _typed(record: dict[str, Any], key: str, kind: type, path: Path) -> Any:
    """A record's value of the option's type (None where the option takes the model's
    default); anything else is a problem of the image."""
    value = record[key]
    if value is None and key in (
        "scheduler",
        "steps",
        "guidance",
        "width",
        "height",
        "variation_seed",
    ):
        return value
    try:
        return from_json(value, kind)
    except TypeError:
        raise UsageError(f"{path}: its recorded {key} {value!r} is not a {kind.__name__}") from None


def print_image_settings(paths: list[Path], json_lines: bool) -> int:
    """Print each image's settings on stdout; report those without on stderr. Returns
    how many could not be read."""
    from ..errors import fail
    from ..outputs.files import emit

    failed = 0
    for path in paths:
        try:
            settings = read_image_settings(path)
        except UsageError as exc:
            fail(exc.one_line())
            failed += 1
            continue
        emit(
            json.dumps(settings.as_json(), ensure_ascii=False) if json_lines else describe(settings)
        )
    return failed


def describe(settings: ImageSettings) -> str:
    """The human-readable form: the file, then its infotext, indented."""
    text = settings.parameters or json.dumps(settings.values, ensure_ascii=False)
    return f"{settings.path}\n" + "\n".join(f"  {line}" for line in text.splitlines())
