"""Prompts for batch runs: one a line, from a file or standard input, checked before any model.

Two formats:

* Text (any file not ending in ``.jsonl``, and ``-`` for standard input): the prompt, then
  optionally per-prompt options spelled as on the command line::

      a red fox at dawn --seed 7 --steps 40 --negative-prompt "blurry, low quality"

  The options start at the first whitespace-separated word that is ``--`` followed by a
  letter (``--seed``, ``--seed=7``, ``--typo``), or that is exactly one of the command
  line's short flags (``-n -s -g -W -H -N``, and the per-run ones such as ``-m -o -b -q -f``,
  which are refused per prompt); all of them come from `options.OPTIONS`.
  The prompt is the raw text before that word, stripped and otherwise kept as written
  (quotes in it are literal); only the options are split with shell quoting rules. So
  ``a fox -- at -3 degrees`` or ``a t-shirt`` are plain prompts, and an unknown ``--word``
  is an error rather than silently part of the prompt. A prompt that needs such a word
  belongs in a ``.jsonl`` file.

* JSON Lines (``.jsonl``, any case): one object per line, ``"prompt"`` plus any of
  `OVERRIDE_KEYS`, e.g. ``{"prompt": "a red fox", "seed": 7, "guidance": 6}``.

In both, blank lines and lines whose first non-space character is ``#`` are skipped and
line numbers count every line. A line may hold at most `MAX_LINE_BYTES` bytes, and a file
at most `MAX_LINES` lines, `MAX_PROMPTS_BYTES` bytes and `MAX_IMAGES` prompts, so an
endless input is refused at once. Every problem is a `UsageError` naming ``source:line``.
Pure Python: no torch, diffusers or PIL here.
"""

from __future__ import annotations

import codecs
import difflib
import json
import re
import shlex
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from ..errors import UsageError
from ..options import (
    BY_KEY,
    IMAGE_OPTIONS,
    MAX_IMAGES,
    MAX_LINE_BYTES,
    MAX_LINES,
    MAX_PROMPTS_BYTES,
    Option,
    all_flags,
    check_prompt,
    from_json,
)

OVERRIDE_KEYS = tuple(option.key for option in IMAGE_OPTIONS)

_STDIN_NAME = "<stdin>"


@dataclass(frozen=True)
class PromptLine:
    line: int  # 1-based, counting blank and comment lines
    prompt: str
    overrides: dict[str, Any]  # only the OVERRIDE_KEYS this line set, typed and validated


_BY_SPELLING = {flag: option for option in IMAGE_OPTIONS for flag in option.flags}
_SHORT_FLAGS = "".join(flag[1] for flag in all_flags() if len(flag) == 2)
# A short flag alone, or with its number attached as click allows (-s40, -b4).
_OPTIONS_START = re.compile(rf"(?<!\S)(?:--[A-Za-z]|-[{_SHORT_FLAGS}](?=[\d.]|\s|$))")
_KIND_NAMES = {int: "an integer", float: "a number", str: "a string"}
_PER_PROMPT = ", ".join(option.spellings for option in IMAGE_OPTIONS)
_JSON_EXAMPLE = '{"prompt": "a red fox", "seed": 7}'
_JSONL_HINT = f"write one JSON object per line, e.g. {_JSON_EXAMPLE}"
_TEXT_HINT = "write one prompt per line; blank lines and lines starting with # are skipped"


def read_prompt_lines(source: str, stdin: BinaryIO | None = None) -> list[PromptLine]:
    """Read and check every prompt in `source`, a path or "-" for `stdin` (default: sys.stdin)."""
    name = _STDIN_NAME if source == "-" else source
    is_jsonl = source != "-" and source.lower().endswith(".jsonl")
    parse = _parse_json_line if is_jsonl else _parse_text_line
    prompts = []
    with _open_source(source, stdin) as stream:
        for number, raw in _numbered_lines(stream):
            try:
                prompt = _parse_line(raw, parse, number)
            except UsageError as exc:
                raise UsageError(f"{name}:{number}: {exc.message}", exc.hint) from exc
            if prompt is not None:
                prompts.append(prompt)
            if len(prompts) > MAX_IMAGES:
                raise UsageError(
                    f"{name} holds more than {MAX_IMAGES} prompts",
                    "split it into several runs",
                )
    if not prompts:
        raise UsageError(f"{name} holds no prompts", _JSONL_HINT if is_jsonl else _TEXT_HINT)
    return prompts


def _parse_line(raw: bytes, parse: Any, number: int) -> PromptLine | None:
    if len(raw) > MAX_LINE_BYTES:
        raise UsageError(
            f"the line is longer than {MAX_LINE_BYTES} bytes",
            "is it a text file? write one prompt per line",
        )
    text = _decode(raw)
    if not text.strip() or text.lstrip().startswith("#"):
        return None
    prompt, overrides = parse(text)
    check_prompt(prompt)
    return PromptLine(number, prompt, overrides)


@contextmanager
def _open_source(source: str, stdin: BinaryIO | None) -> Iterator[BinaryIO]:
    if source == "-":
        yield _stdin_stream(stdin)
        return
    if not source:
        raise UsageError("--prompts-file is empty", "give a path, or - for standard input")
    if Path(source).is_dir():
        raise UsageError(f"--prompts-file {source} is a folder", "give a text or .jsonl file")
    try:
        with open(source, "rb") as stream:
            yield stream
    except FileNotFoundError:
        raise UsageError(f"--prompts-file {source} does not exist", "check the path") from None
    except OSError as exc:
        raise UsageError(
            f"cannot read --prompts-file {source}: {exc.strerror or exc}", "check its permissions"
        ) from exc


def _stdin_stream(stdin: BinaryIO | None) -> BinaryIO:
    stream = stdin if stdin is not None else getattr(sys.stdin, "buffer", None)
    if stream is None:
        raise UsageError("--prompts-file - reads standard input, but there is none")
    if stream.isatty():
        raise UsageError(
            "--prompts-file - reads standard input, but it is a terminal",
            "pipe prompts in, e.g. cat prompts.txt | txt2img -f -",
        )
    return stream


def _numbered_lines(stream: BinaryIO) -> Iterator[tuple[int, bytes]]:
    """Undecoded lines, so a bad byte is reported with its own line number. A line is
    read only up to just past its limit, so `-f /dev/zero` is refused at once, and the
    whole input is bounded in lines and bytes (`yes '' | txt2img -f -` ends too)."""
    number = read = 0
    while True:
        try:
            raw = stream.readline(MAX_LINE_BYTES + 2)
        except OSError as exc:
            raise UsageError(f"cannot read the prompts: {exc.strerror or exc}") from exc
        if not raw:
            return
        number, read = number + 1, read + len(raw)
        if number > MAX_LINES or read > MAX_PROMPTS_BYTES:
            raise UsageError(
                f"more than {MAX_LINES} lines or {MAX_PROMPTS_BYTES >> 20} MiB of prompts",
                "split them into several runs",
            )
        if number == 1:
            raw = raw.removeprefix(codecs.BOM_UTF8)
        yield number, raw.removesuffix(b"\n").removesuffix(b"\r")


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(
            f"not valid UTF-8 (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})",
            "save the file as UTF-8",
        ) from None


def _parse_text_line(text: str) -> tuple[str, dict[str, Any]]:
    _refuse_json(text)
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


def _refuse_json(text: str) -> None:
    """A JSON Lines object read as a text line would be drawn as its own JSON text."""
    if not text.lstrip().startswith("{"):
        return
    try:
        record = json.loads(text)
    except (ValueError, RecursionError):
        return  # a prompt that starts with "{", such as "{red|blue} car"
    if isinstance(record, dict) and "prompt" in record:
        raise UsageError(
            "this line is a JSON object, but the prompts are read as text, one a line",
            "JSON Lines go in a file whose name ends in .jsonl: txt2img -f prompts.jsonl",
        )


def _split_word(word: str) -> tuple[str, bool, str]:
    """(spelling, whether a value is attached, the value): --seed=7, -s40, or --seed."""
    if word.startswith("--"):
        spelling, equals, value = word.partition("=")
        return spelling, bool(equals), value
    if len(word) > 2 and word.startswith("-"):
        return word[:2], True, word[2:]
    return word, False, ""


def _parse_options(words: list[str]) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    rest = iter(words)
    for word in rest:
        spelling, equals, value = _split_word(word)
        option = _BY_SPELLING.get(spelling)
        if option is None:
            raise _not_an_option(spelling)
        if option.key in overrides:
            raise UsageError(f"{option.spellings} is given twice", "give each option once a line")
        if not equals:
            value = next(rest, None)
            if value is None or _is_option(value):
                raise UsageError(f"{spelling} needs a value")
        overrides[option.key] = _convert(spelling, option, value)
    return overrides


def _is_option(word: str) -> bool:
    return _split_word(word)[0] in _BY_SPELLING


def _not_an_option(word: str) -> UsageError:
    if not word.startswith("-"):
        return UsageError(
            f"unexpected {word!r} after the options",
            'the prompt comes first, then its options; quote values with spaces, e.g. -n "a, b"',
        )
    close = difflib.get_close_matches(word, [option.flag for option in IMAGE_OPTIONS], n=1)
    did_you_mean = f"did you mean {close[0]}? " if close else ""
    return UsageError(
        f"{word} is not a per-prompt option",
        f"{did_you_mean}per-prompt options are {_PER_PROMPT}; set the others on the command line",
    )


def _convert(spelling: str, option: Option, value: str) -> Any:
    try:
        typed = option.kind(value)
    except ValueError:
        raise UsageError(f"{spelling} expects {_KIND_NAMES[option.kind]}, got {value!r}") from None
    option.validate(typed)
    return typed


def _parse_json_line(text: str) -> tuple[str, dict[str, Any]]:
    try:
        record = json.loads(text, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as exc:
        raise UsageError(
            f"not valid JSON: {exc.msg} at column {exc.colno}",
            _JSONL_HINT,
        ) from None
    except RecursionError:
        raise UsageError("the JSON is nested too deeply", _JSONL_HINT) from None
    except ValueError as exc:  # an integer of more digits than Python converts
        raise UsageError(f"not usable JSON: {exc}".split(";")[0], _JSONL_HINT) from None
    if not isinstance(record, dict):
        raise UsageError(
            f"expected a JSON object, got {_json_text(record)}", f"e.g. {_JSON_EXAMPLE}"
        )
    if "prompt" not in record:
        raise UsageError('missing "prompt"', f"e.g. {_JSON_EXAMPLE}")
    prompt = _json_value("prompt", str, record.pop("prompt"))
    overrides = {}
    for key, value in record.items():
        option = BY_KEY.get(key)
        if option is None or not option.per_image:
            close = difflib.get_close_matches(key, OVERRIDE_KEYS, n=1)
            did_you_mean = f"did you mean {close[0]!r}? " if close else ""
            raise UsageError(
                f"unknown key {key!r}",
                f"{did_you_mean}keys are prompt, {', '.join(OVERRIDE_KEYS)}",
            )
        overrides[key] = _json_value(key, option.kind, value)
        option.validate(overrides[key])
    return prompt, overrides


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    record: dict[str, Any] = {}
    for key, value in pairs:
        if key in record:
            raise UsageError(f"key {key!r} is given twice")
        record[key] = value
    return record


def _json_value(key: str, kind: type, value: Any) -> Any:
    try:
        return from_json(value, kind)
    except TypeError:
        raise UsageError(f"{key!r} must be {_KIND_NAMES[kind]}, got {_json_text(value)}") from None


def _json_text(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 40 else f"{text[:37]}..."
