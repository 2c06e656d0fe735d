"""Prompts for batch runs: one a line, from a file or standard input, checked before any model.

Two formats:

* Text (any file not ending in ``.jsonl``, and ``-`` for standard input): the prompt, then
  optionally per-prompt options spelled as on the command line::

      a red fox at dawn --seed 7 --steps 40 --negative-prompt "blurry, low quality"

  The options start at the first whitespace-separated word that is ``--`` followed by a
  letter (``--seed``, ``--seed=7``, ``--typo``), or that is exactly one of the CLI's short
  aliases (``-n -s -g -W -H -N``, and ``-m -o -q -h -f``, which are refused per prompt).
  The prompt is the raw text before that word, stripped and otherwise kept as written
  (quotes in it are literal); only the options are split with shell quoting rules. So
  ``a fox -- at -3 degrees`` or ``a t-shirt`` are plain prompts, and an unknown ``--word``
  is an error rather than silently part of the prompt. A prompt that needs such a word
  belongs in a ``.jsonl`` file.

* JSON Lines (``.jsonl``, any case): one object per line, ``"prompt"`` plus any of
  `OVERRIDE_KEYS`, e.g. ``{"prompt": "a red fox", "seed": 7, "guidance": 6}``.

In both, blank lines and lines whose first non-space character is ``#`` are skipped and
line numbers count every line. Every problem is a `UsageError` naming ``source:line``.
Pure Python: no torch, diffusers or PIL here.
"""

from __future__ import annotations

import codecs
import difflib
import json
import math
import re
import shlex
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from .errors import UsageError
from .schedulers import SCHEDULERS
from .settings import check_image_options, check_prompt

OVERRIDE_KEYS = (
    "negative_prompt",
    "seed",
    "steps",
    "guidance",
    "width",
    "height",
    "num_images",
    "scheduler",
)

_STDIN_NAME = "<stdin>"


@dataclass(frozen=True)
class PromptLine:
    line: int  # 1-based, counting blank and comment lines
    prompt: str
    overrides: dict[str, Any]  # only the OVERRIDE_KEYS this line set, typed and validated


@dataclass(frozen=True)
class _Option:
    key: str
    flag: str
    alias: str | None
    kind: type  # int, float or str

    @property
    def spellings(self) -> str:
        return f"{self.flag}/{self.alias}" if self.alias else self.flag


_OPTIONS = (
    _Option("negative_prompt", "--negative-prompt", "-n", str),
    _Option("seed", "--seed", None, int),
    _Option("steps", "--steps", "-s", int),
    _Option("guidance", "--guidance", "-g", float),
    _Option("width", "--width", "-W", int),
    _Option("height", "--height", "-H", int),
    _Option("num_images", "--num-images", "-N", int),
    _Option("scheduler", "--scheduler", None, str),
)
_BY_SPELLING = {s: option for option in _OPTIONS for s in (option.flag, option.alias) if s}
_BY_KEY = {option.key: option for option in _OPTIONS}
_CLI_ONLY_ALIASES = ("-m", "-o", "-q", "-h", "-f")
_SHORT_ALIASES = "".join(s[1] for s in (*_BY_SPELLING, *_CLI_ONLY_ALIASES) if len(s) == 2)
_OPTIONS_START = re.compile(rf"(?<!\S)(?:--[A-Za-z]|-[{_SHORT_ALIASES}](?!\S))")
_IMAGE_KEYS = ("seed", "steps", "guidance", "width", "height", "num_images")
_KIND_NAMES = {int: "an integer", float: "a number", str: "a string"}
_PER_PROMPT = ", ".join(option.spellings for option in _OPTIONS)
_JSON_EXAMPLE = '{"prompt": "a red fox", "seed": 7}'
_JSONL_HINT = f"write one JSON object per line, e.g. {_JSON_EXAMPLE}"
_TEXT_HINT = "write one prompt per line; blank lines and lines starting with # are skipped"


def read_prompt_lines(source: str, stdin: BinaryIO | None = None) -> list[PromptLine]:
    """Read and check every prompt in `source`, a path or "-" for `stdin` (default: sys.stdin)."""
    name = _STDIN_NAME if source == "-" else source
    data = _read_stdin(stdin) if source == "-" else _read_file(source)
    is_jsonl = source != "-" and source.lower().endswith(".jsonl")
    parse = _parse_json_line if is_jsonl else _parse_text_line
    prompts = []
    for number, raw in _numbered_lines(data):
        try:
            text = _decode(raw)
            if not text.strip() or text.lstrip().startswith("#"):
                continue
            prompt, overrides = parse(text)
            _check(prompt, overrides)
        except UsageError as exc:
            raise UsageError(f"{name}:{number}: {exc.message}", exc.hint) from exc
        prompts.append(PromptLine(number, prompt, overrides))
    if not prompts:
        raise UsageError(f"{name} holds no prompts", _JSONL_HINT if is_jsonl else _TEXT_HINT)
    return prompts


def _read_stdin(stdin: BinaryIO | None) -> bytes:
    stream = stdin if stdin is not None else getattr(sys.stdin, "buffer", None)
    if stream is None:
        raise UsageError("--prompts-file - reads standard input, but there is none")
    if stream.isatty():
        raise UsageError(
            "--prompts-file - reads standard input, but it is a terminal",
            "pipe prompts in, e.g. cat prompts.txt | txt2img -f -",
        )
    try:
        return stream.read()
    except OSError as exc:
        raise UsageError(f"cannot read standard input: {exc.strerror or exc}") from exc


def _read_file(path: str) -> bytes:
    if not path:
        raise UsageError("--prompts-file is empty", "give a path, or - for standard input")
    file = Path(path)
    if file.is_dir():
        raise UsageError(f"--prompts-file {path} is a folder", "give a text or .jsonl file")
    try:
        return file.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"--prompts-file {path} does not exist", "check the path") from None
    except OSError as exc:
        raise UsageError(
            f"cannot read --prompts-file {path}: {exc.strerror or exc}", "check its permissions"
        ) from exc


def _numbered_lines(data: bytes) -> Iterator[tuple[int, bytes]]:
    """Undecoded lines, so a bad byte is reported with its own line number."""
    data = data.removeprefix(codecs.BOM_UTF8)
    for number, raw in enumerate(data.split(b"\n"), start=1):
        yield number, raw.removesuffix(b"\r")


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(
            f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})",
            "save the file as UTF-8",
        ) from None


def _parse_text_line(text: str) -> tuple[str, dict[str, Any]]:
    start = _OPTIONS_START.search(text)
    if start is None:
        return text.strip(), {}
    try:
        words = shlex.split(text[start.start() :])
    except ValueError as exc:  # "No closing quotation", "No escaped character"
        raise UsageError(
            f"{str(exc).lower()} in the options",
            'quote values that hold spaces, e.g. -n "blurry, low quality"',
        ) from None
    return text[: start.start()].strip(), _parse_options(words)


def _parse_options(words: list[str]) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    rest = iter(words)
    for word in rest:
        spelling, equals, value = word.partition("=") if word.startswith("--") else (word, "", "")
        option = _BY_SPELLING.get(spelling)
        if option is None:
            raise _not_an_option(spelling)
        if option.key in overrides:
            raise UsageError(f"{option.spellings} is given twice", "give each option once a line")
        if not equals:
            value = next(rest, None)
            if value is None or _is_option(value):
                raise UsageError(f"{spelling} needs a value")
        overrides[option.key] = _convert(spelling, option.kind, value)
    return overrides


def _is_option(word: str) -> bool:
    return (word.partition("=")[0] if word.startswith("--") else word) in _BY_SPELLING


def _not_an_option(word: str) -> UsageError:
    if not word.startswith("-"):
        return UsageError(
            f"unexpected {word!r} after the options",
            'the prompt comes first, then its options; quote values with spaces, e.g. -n "a, b"',
        )
    close = difflib.get_close_matches(word, [option.flag for option in _OPTIONS], n=1)
    did_you_mean = f"did you mean {close[0]}? " if close else ""
    return UsageError(
        f"{word} is not a per-prompt option",
        f"{did_you_mean}per-prompt options are {_PER_PROMPT}; set the others on the command line",
    )


def _convert(spelling: str, kind: type, value: str) -> Any:
    try:
        return kind(value)
    except ValueError:
        raise UsageError(f"{spelling} expects {_KIND_NAMES[kind]}, got {value!r}") from None


def _parse_json_line(text: str) -> tuple[str, dict[str, Any]]:
    try:
        record = json.loads(text, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as exc:
        raise UsageError(
            f"not valid JSON: {exc.msg} at column {exc.colno}",
            _JSONL_HINT,
        ) from None
    if not isinstance(record, dict):
        raise UsageError(
            f"expected a JSON object, got {_json_text(record)}", f"e.g. {_JSON_EXAMPLE}"
        )
    if "prompt" not in record:
        raise UsageError('missing "prompt"', f"e.g. {_JSON_EXAMPLE}")
    prompt = _json_value("prompt", str, record.pop("prompt"))
    overrides = {}
    for key, value in record.items():
        option = _BY_KEY.get(key)
        if option is None:
            close = difflib.get_close_matches(key, OVERRIDE_KEYS, n=1)
            did_you_mean = f"did you mean {close[0]!r}? " if close else ""
            raise UsageError(
                f"unknown key {key!r}",
                f"{did_you_mean}keys are prompt, {', '.join(OVERRIDE_KEYS)}",
            )
        overrides[key] = _json_value(key, option.kind, value)
    return prompt, overrides


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    record: dict[str, Any] = {}
    for key, value in pairs:
        if key in record:
            raise UsageError(f"key {key!r} is given twice")
        record[key] = value
    return record


def _json_value(key: str, kind: type, value: Any) -> Any:
    """JSON's own types, strictly: "40" or 40.5 is no integer, and neither is true."""
    fits = isinstance(value, int | float) if kind is float else isinstance(value, kind)
    if not fits or isinstance(value, bool):
        raise UsageError(f"{key!r} must be {_KIND_NAMES[kind]}, got {_json_text(value)}")
    if kind is float:
        try:
            return float(value)
        except OverflowError:  # an integer too big for a float; rejected as not finite
            return math.inf
    return value


def _json_text(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 40 else f"{text[:37]}..."


def _check(prompt: str, overrides: dict[str, Any]) -> None:
    check_prompt(prompt)
    check_image_options(**{key: overrides[key] for key in overrides if key in _IMAGE_KEYS})
    scheduler = overrides.get("scheduler")
    if scheduler is not None and scheduler not in SCHEDULERS:
        raise UsageError(
            f"unknown --scheduler {scheduler!r}", f"choose one of {', '.join(SCHEDULERS)}"
        )
