"""AUTOMATIC1111's prompt language, written from its rules (see ../shared/reference/prompts.md
in the team's notes; A1111's own code is AGPL and is not copied here).

- `parse_attention`: `(x)` times 1.1, `[x]` over 1.1, `(x:w)`, nesting multiplies, open brackets
  close at the end, `\\(` `\\)` `\\[` `\\]` `\\\\` are literal, `BREAK` starts a new chunk.
- `chunk_tokens`: the 75-token chunks (the tokenizer's length less BOS and EOS), each
  fragment tokenized on its own, with the 20-token comma backtrack and BREAK.
- `take_lora_tags`: `<lora:NAME:W>` tags taken out of the positive prompt.
- `check_supported`: the schedule syntax this tool does not draw (prompt editing,
  alternation, AND) is refused, never drawn as text.

Pure Python: no torch here, so every prompt is checked before a model loads.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from ..errors import UsageError

ROUND = 1.1  # (x)
SQUARE = 1 / 1.1  # [x]
# Each part's weight is multiplied by every bracket around it, in the order they close,
# as in A1111 (floats: the order changes the last bits). That is work in proportion to
# the nesting; deeper prompts (1.1^64 is 445) are refused, so parsing stays linear.
MAX_NESTING = 64
COMMA_BACKTRACK = 20  # A1111's default "Prompt word wrap length limit"

# The tokens of the attention syntax, tried in this order: escapes, a lone backslash,
# openers, ":weight)" (spaces allowed around the number), closers, plain text, a colon.
_ATTENTION = re.compile(
    r"""
    \\\( | \\\) | \\\[ | \\\] | \\\\ | \\
    | \( | \[
    | :\s*([+-]?[.\d]+)\s*\)
    | \) | \]
    | [^\\()\[\]:]+
    | :
    """,
    re.VERBOSE,
)
_BREAK = re.compile(r"\s*\bBREAK\b\s*")


@dataclass(frozen=True)
class Break:
    """BREAK: the next text starts a new chunk (an empty chunk if the current one is)."""


BREAK = Break()
Fragment = tuple[str, float]


FLOAT32_MAX = 3.4028234663852886e38  # the largest weight a text encoder's fp32 holds


def parse_attention(text: str) -> list[Fragment | Break]:
    """The prompt as (text, weight) fragments and BREAKs. Adjacent fragments of exactly
    equal weight are merged; an empty prompt is one empty fragment."""
    parts: list[list] = []  # [text, weight]; BREAK is ["BREAK", -1] until the end
    round_open: list[int] = []
    square_open: list[int] = []

    def multiply(start: int, factor: float) -> None:
        for part in parts[start:]:
            part[1] *= factor

    for match in _ATTENTION.finditer(text):
        token, weight = match.group(0), match.group(1)
        if token.startswith("\\"):
            parts.append([token[1:], 1.0])
        elif token in "([":
            (round_open if token == "(" else square_open).append(len(parts))
            if len(round_open) + len(square_open) > MAX_NESTING:
                raise UsageError(
                    f"the prompt nests brackets more than {MAX_NESTING} deep",
                    "give the words one weight instead, like (word:1.5)",
                )
        elif weight is not None and round_open:
            multiply(round_open.pop(), _weight(weight, token))
        elif token == ")" and round_open:
            multiply(round_open.pop(), ROUND)
        elif token == "]" and square_open:
            multiply(square_open.pop(), SQUARE)
        else:
            for k, piece in enumerate(_BREAK.split(token)):
                if k:
                    parts.append(["BREAK", -1.0])
                parts.append([piece, 1.0])
    for start in round_open:
        multiply(start, ROUND)
    for start in square_open:
        multiply(start, SQUARE)
    if not all(abs(weight) <= FLOAT32_MAX for _, weight in parts):  # (NaN and inf too)
        raise UsageError(
            "the prompt's weights multiply to infinity in the text encoder's 32-bit numbers",
            "use fewer brackets or smaller weights",
        )
    if not parts:
        parts = [["", 1.0]]
    merged = [parts[0]]
    for part in parts[1:]:
        if part[1] == merged[-1][1]:
            merged[-1][0] += part[0]
        else:
            merged.append(part)
    # A BREAK inside brackets was multiplied with them and is then the word "BREAK",
    # as in A1111.
    return [BREAK if (t, w) == ("BREAK", -1.0) else (t, w) for t, w in merged]


def _finite(text: str) -> float | None:
    """`text` as a finite float, else None."""
    try:
        number = float(text)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _weight(number: str, token: str) -> float:
    weight = _finite(number)
    if weight is None:
        raise UsageError(
            f"the prompt's weight {token!r} is not a number", "write it like (word:1.2)"
        )
    return weight


# --- chunks -------------------------------------------------------------------------------


@dataclass
class Chunk:
    """At most `length` token ids (BOS, EOS and padding are added by the encoder) and
    the weight of each."""

    ids: list[int] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)


def chunk_tokens(
    fragments: Sequence[Fragment | Break],
    tokenize: Callable[[str], list[list[int]]],
    length: int,
    comma: int | None,
    backtrack: int = COMMA_BACKTRACK,
) -> list[Chunk]:
    """A1111's chunks. `tokenize(text)` gives a fragment's units: one token id each, or
    the ids of one textual-inversion embedding's vectors, which never straddle two
    chunks. When a chunk is full and its last comma is at most `backtrack` tokens back,
    the tokens after the comma move to the next chunk."""
    chunks: list[Chunk] = []
    chunk, last_comma = Chunk(), -1

    def flush() -> None:
        nonlocal chunk, last_comma
        chunks.append(chunk)
        chunk, last_comma = Chunk(), -1

    for fragment in fragments:
        if fragment is BREAK:
            flush()
            continue
        text, weight = fragment
        for unit in tokenize(text):
            if len(unit) > length:
                raise UsageError(
                    f"an embedding in the prompt has {len(unit)} vectors, more than the "
                    f"{length} tokens of a chunk",
                    "use a smaller embedding",
                )
            if unit[0] == comma:
                last_comma = len(chunk.ids)
            elif (
                backtrack
                and len(chunk.ids) == length
                and last_comma != -1
                and length - last_comma <= backtrack
            ):
                cut = last_comma + 1
                moved = Chunk(chunk.ids[cut:], chunk.weights[cut:])
                del chunk.ids[cut:], chunk.weights[cut:]
                flush()
                chunk = moved
            if len(chunk.ids) + len(unit) > length:
                flush()
            chunk.ids += unit
            chunk.weights += [weight] * len(unit)
    if chunk.ids or not chunks:
        flush()
    return chunks


# --- LoRA tags ----------------------------------------------------------------------------

_EXTRA_NETWORK = re.compile(r"<(\w+):([^>]+)>")
LORA_TYPES = ("lora", "lyco")  # A1111 reads <lyco:...> as <lora:...>


@dataclass(frozen=True)
class LoraTag:
    """`<lora:NAME:TE:UNET>`: a LoRA in --lora-dir by its file stem, with its weight on
    the text encoders and on the U-Net."""

    name: str
    te: float
    unet: float


def take_lora_tags(prompt: str) -> tuple[str, tuple[LoraTag, ...]]:
    """The prompt without its extra-network tags (each replaced by nothing, the spaces
    around it kept, as A1111 does) and the LoRAs they name."""
    tags = tuple(_lora_tag(match) for match in _EXTRA_NETWORK.finditer(prompt))
    return _EXTRA_NETWORK.sub("", prompt), tags


def _lora_tag(match: re.Match) -> LoraTag:
    kind, tag = match.group(1), match.group(0)
    if kind == "hypernet":
        raise UsageError(f"{tag}: hypernetworks are not supported", "use a LoRA instead")
    if kind not in LORA_TYPES:
        raise UsageError(
            f"{tag} is an extra-network tag of unknown type {kind!r}",
            "txt2img reads <lora:NAME:WEIGHT>; write other text without the angle brackets",
        )
    positional, named = [], {}
    for item in match.group(2).split(":"):
        key, sep, value = item.partition("=")
        if sep and "=" not in value:
            named[key.strip()] = value
        else:
            positional.append(item)
    unknown = set(named) - {"te", "unet"}
    if unknown or len(positional) > 3 or not positional:
        what = f"{sorted(unknown)[0]}=" if unknown else "its arguments"
        raise UsageError(
            f"{tag}: {what} not understood",
            "write <lora:NAME:WEIGHT>, <lora:NAME:TE:UNET> or <lora:NAME:te=W:unet=W>",
        )
    name = positional[0].strip()
    check_addon_name(name, tag)
    te = _tag_number(positional[1], tag) if len(positional) > 1 else 1.0
    te = _tag_number(named["te"], tag) if "te" in named else te
    unet = _tag_number(positional[2], tag) if len(positional) > 2 else te
    unet = _tag_number(named["unet"], tag) if "unet" in named else unet
    return LoraTag(name, te, unet)


def _tag_number(text: str, tag: str) -> float:
    number = _finite(text)
    if number is None:
        raise UsageError(f"{tag}: {text.strip()!r} is not a weight", "e.g. <lora:NAME:0.8>")
    return number


def words_pattern(names: Iterable[str]) -> re.Pattern | None:
    """A pattern that finds any of `names` as a whole word, in any case, the longest name
    first (how an embedding's name acts in a prompt: A1111 matches its whole tokens, and
    CLIP reads lower case); None for no names."""
    ordered = sorted(set(names), key=len, reverse=True)
    if not ordered:
        return None
    return re.compile(r"(?<!\w)(" + "|".join(map(re.escape, ordered)) + r")(?!\w)", re.I)


def check_addon_name(name: str, where: str) -> None:
    """Add-ons in prompts are named by their file stems in the configured folders, never
    by a path, so a prompt cannot reach outside those folders."""
    if not name or name.startswith(".") or any(c in name for c in "/\\\0"):
        raise UsageError(
            f"{where}: {name!r} is not a name",
            "name a file in --lora-dir by its stem (the file name without .safetensors), "
            "not by a path",
        )


# --- syntax this tool does not draw -------------------------------------------------------

_AND = re.compile(r"\bAND\b")
_EDIT_END = re.compile(r":\s*[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?\s*$")


def check_prompts(prompt: str, negative: str, emphasis: str) -> None:
    """Everything about a prompt line's text that can be refused before a model loads."""
    for text, which in ((take_lora_tags(prompt)[0], "prompt"), (negative, "negative prompt")):
        try:
            check_supported(text, negative=which != "prompt")
            if emphasis != "none":
                parse_attention(text)
        except UsageError as exc:
            message = exc.message.replace("the prompt", f"the {which}", 1)
            raise UsageError(message, exc.hint) from None


def check_supported(prompt: str, negative: bool = False) -> None:
    """Refuse A1111's schedule syntax: prompt editing `[a:b:N]`, alternation `[a|b]`
    and, in the positive prompt (A1111 splits only that one), `AND`. Drawn as text they
    would silently give another picture."""
    if not negative and _AND.search(prompt):
        raise UsageError(
            "the prompt uses AND (composable prompts), which txt2img does not draw",
            "write one prompt; lower-case 'and' is plain text",
        )
    for group in _square_groups(prompt):
        if "|" in group:
            _unsupported("alternation [a|b]", group)
        if _EDIT_END.search(group):
            _unsupported("prompt editing [from:to:when]", group)


def _unsupported(what: str, group: str) -> None:
    raise UsageError(
        f"the prompt uses {what}, which txt2img does not draw: [{group}]",
        "rewrite it without; escape brackets meant as text as \\[ \\]",
    )


_CLOSERS = {")": "(", "]": "["}


def _square_groups(prompt: str) -> list[str]:
    """The top-level text of every [...] group (nested groups shown as "x"), escapes
    and round groups respected."""
    groups: list[str] = []
    stack: list[tuple[str, list[str]]] = [("", [])]
    i = 0
    while i < len(prompt):
        ch = prompt[i]
        if ch == "\\":
            stack[-1][1].append(prompt[i : i + 2])
            i += 2
            continue
        if ch in "([":
            stack.append((ch, []))
        elif ch in _CLOSERS and len(stack) > 1 and stack[-1][0] == _CLOSERS[ch]:
            opener, text = stack.pop()
            if opener == "[":
                groups.append("".join(text))
            stack[-1][1].append("x")
        else:
            stack[-1][1].append(ch)
        i += 1
    return groups
