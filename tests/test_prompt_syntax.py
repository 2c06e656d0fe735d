"""A1111's prompt language without a model: the worked parse examples and chunking cases of
the reference (../shared/reference/prompts.md §1.3, §1.4), LoRA tags, the refused syntax,
and the folders prompts name add-ons from."""

from __future__ import annotations

import pytest

from txt2img.errors import ModelError, UsageError
from txt2img.model.folders import embeddings_named, find_lora, folder_index
from txt2img.prompt.syntax import (
    BREAK,
    LoraTag,
    check_prompts,
    check_supported,
    chunk_tokens,
    parse_attention,
    take_lora_tags,
)

R, S = 1.1, 1 / 1.1  # written out below as the float products A1111 computes

PARSES = [
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", R), (" word", 1.0)]),
    ("(unbalanced", [("unbalanced", R)]),
    ("\\(literal\\]", [("(literal]", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", R)]),
    (
        "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
        [("a ", 1.0), ("house", 1.3 * R * R), (" ", R), ("on", S * R), (" a ", R),
         ("hill", 0.5 * R), (", sun, ", R), ("sky", R * R * R * R), (".", R)],
    ),  # the first "(" is never closed: it closes at the end, around all that follows it
    (
        "(masterpiece:1.2), best quality, ((1girl)), [blurry]",
        [("masterpiece", 1.2), (", best quality, ", 1.0), ("1girl", R * R), (", ", 1.0),
         ("blurry", S)],
    ),
    ("[[word]]", [("word", S * S)]),
    ("(word: 1.5 )", [("word", 1.5)]),
    ("(a [b] c)", [("a ", R), ("b", R * S), (" c", R)]),
    ("a cat BREAK a dog", [("a cat", 1.0), BREAK, ("a dog", 1.0)]),
    ("BREAK a dog", [("", 1.0), BREAK, ("a dog", 1.0)]),
    ("(a BREAK b:1.2)", [("a", 1.2), ("BREAK", -1.2), ("b", 1.2)]),
    ("a) b", [("a) b", 1.0)]),
    ("time: 10:30", [("time: 10:30", 1.0)]),
    ("(word:abc)", [("word:abc", R)]),
    ("a (b:-1) c", [("a ", 1.0), ("b", -1.0), (" c", 1.0)]),
    ("photo of \\(smiling\\) man, \\\\ slash", [("photo of (smiling) man, \\ slash", 1.0)]),
    ("", [("", 1.0)]),
    ("breakfast BREAKS", [("breakfast BREAKS", 1.0)]),  # BREAK only as a whole upper-case word
]  # fmt: skip


@pytest.mark.parametrize(("text", "expected"), PARSES)
def test_parse_attention_matches_a1111s_examples(text, expected):
    assert parse_attention(text) == expected


def test_the_doctest_weights_are_the_exact_float_products():
    parts = dict(p for p in parse_attention("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).")
                 if p is not BREAK)  # fmt: skip
    assert parts["house"] == 1.5730000000000004
    assert parts["sky"] == 1.4641000000000006
    assert parts["hill"] == 0.55


def test_a_weight_that_is_not_a_number_is_refused():
    with pytest.raises(UsageError, match="is not a number"):
        parse_attention("(b:1.1.1)")


# --- chunks: a stub tokenizer, one word = one token ---------------------------------------

COMMA = 0


def words(text: str) -> list[list[int]]:
    """Word i is token 100 + i; "," is COMMA; "EMB" is one 3-vector embedding."""
    units = []
    for word in text.replace(",", " , ").split():
        if word == ",":
            units.append([COMMA])
        elif word == "EMB":
            units.append([7, 8, 9])
        else:
            units.append([100 + int(word.lstrip("w"))])
    return units


def sizes(text: str, backtrack: int = 20) -> list[int]:
    chunks = chunk_tokens(parse_attention(text), words, 75, COMMA, backtrack)
    return [len(chunk.ids) for chunk in chunks]


def run(n: int, start: int = 0) -> str:
    return " ".join(f"w{i}" for i in range(start, start + n))


@pytest.mark.parametrize(
    ("text", "backtrack", "expected"),
    [
        (f"{run(60)}, {run(30, 60)}", 20, [61, 30]),  # the tokens after the comma move on
        (f"{run(60)}, {run(30, 60)}", 0, [75, 16]),  # backtrack 0: no comma rule
        (f"{run(40)}, {run(50, 40)}", 20, [75, 16]),  # the comma is 35 tokens back: too far
        ("BREAK w1", 20, [0, 1]),  # BREAK flushes an empty chunk too
        ("w1 BREAK BREAK w2", 20, [1, 0, 1]),
        ("w1 BREAK", 20, [1]),
        (run(75), 20, [75]),
        (run(76), 20, [75, 1]),
        (run(151), 20, [75, 75, 1]),
        ("", 20, [0]),
    ],
)
def test_chunking_matches_a1111s_cases(text, backtrack, expected):
    assert sizes(text, backtrack) == expected


def test_tokens_keep_their_fragments_weight_across_chunks():
    [first, second] = chunk_tokens(parse_attention(f"{run(74)} (w74 w75:1.5)"), words, 75, COMMA)
    assert first.weights == [1.0] * 74 + [1.5] and second.weights == [1.5]
    assert first.ids[-1] == 174 and second.ids == [175]


def test_an_embedding_never_straddles_two_chunks():
    [first, second] = chunk_tokens(parse_attention(f"{run(73)} EMB w1"), words, 75, COMMA)
    assert len(first.ids) == 73 and second.ids == [7, 8, 9, 101]


def test_the_comma_stays_in_the_first_chunk():
    chunks = chunk_tokens(parse_attention(f"{run(60)}, {run(30, 60)}"), words, 75, COMMA)
    assert chunks[0].ids[-1] == COMMA and chunks[1].ids[0] == 160


# --- LoRA tags ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "text", "tags"),
    [
        ("a fox <lora:foo:0.8>", "a fox ", [LoraTag("foo", 0.8, 0.8)]),
        ("<lora:bar:0.5:1.0> a fox", " a fox", [LoraTag("bar", 0.5, 1.0)]),
        ("a <lora:baz:te=0.7:unet=0.3> fox", "a  fox", [LoraTag("baz", 0.7, 0.3)]),
        ("<lora:my lora:1>", "", [LoraTag("my lora", 1.0, 1.0)]),
        ("<lora:plain>", "", [LoraTag("plain", 1.0, 1.0)]),
        ("<lora:x:0.5:unet=2>", "", [LoraTag("x", 0.5, 2.0)]),
        ("<lyco:old:0.6>", "", [LoraTag("old", 0.6, 0.6)]),
        ("a, <lora:a:1> <lora:b:-0.5>", "a,  ", [LoraTag("a", 1, 1), LoraTag("b", -0.5, -0.5)]),
        ("no tags (here:1.2)", "no tags (here:1.2)", []),
        ("<cat-toy> is an embedding token", "<cat-toy> is an embedding token", []),
    ],
)
def test_lora_tags_are_taken_out_with_their_weights(prompt, text, tags):
    assert take_lora_tags(prompt) == (text, tuple(tags))


@pytest.mark.parametrize(
    ("prompt", "fragment"),
    [
        ("<lora:../secret:1>", "is not a name"),
        ("<lora:sub/dir:1>", "is not a name"),
        ("<lora:C:\\x:1>", "is not a weight"),
        ("<lora:x:abc>", "is not a weight"),
        ("<lora:x:inf>", "is not a weight"),
        ("<lora:x:1:1:1>", "not understood"),
        ("<lora:x:dyn=4>", "dyn= not understood"),
        ("<hypernet:x:1>", "hypernetworks are not supported"),
        ("time <12:30>", "unknown type '12'"),
    ],
)
def test_bad_lora_tags_are_refused(prompt, fragment):
    with pytest.raises(UsageError, match=fragment):
        take_lora_tags(prompt)


# --- syntax txt2img does not draw ---------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "what"),
    [
        ("a [cat:dog:10] photo", "prompt editing"),
        ("a [dog:0.5] photo", "prompt editing"),
        ("a [cat::5]", "prompt editing"),
        ("a [cat:(dog:1.2):0.3]", "prompt editing"),
        ("a [cat|dog] photo", "alternation"),
        ("a [cat|dog|bird]", "alternation"),
        ("a cat AND a dog", "AND"),
    ],
)
def test_schedule_syntax_is_refused_by_name(prompt, what):
    with pytest.raises(UsageError, match=what):
        check_supported(prompt)


@pytest.mark.parametrize(
    "prompt",
    ["a \\[cat:dog:10\\]", "[cat:dog]", "(cat:1.2)", "time: 10:30", "ANDROID band and",
     "(a|b)", "{red|blue} fox", "\\[a|b\\]"],
)  # fmt: skip
def test_text_that_only_looks_like_it_is_drawn(prompt):
    check_supported(prompt)


def test_the_negative_prompt_is_checked_too():
    with pytest.raises(UsageError, match="alternation"):
        check_prompts("a fox", "[blurry|lowres]", "original")
    with pytest.raises(UsageError, match="not a number"):
        check_prompts("a fox", "(x:1.2.3)", "original")
    check_prompts("a fox", "(x:1.2.3)", "none")  # emphasis none: no parsing, nothing to refuse


# --- the folders prompts name add-ons from -------------------------------------------------


def test_folder_index_prefers_safetensors_and_the_first_folder(tmp_path):
    first, second = tmp_path / "one", tmp_path / "two"
    (first / "sub").mkdir(parents=True)
    second.mkdir()
    for path in (first / "style.pt", first / "style.safetensors", first / "sub" / "deep.pt",
                 second / "style.safetensors", second / "other.ckpt", first / ".hidden.pt",
                 first / "notes.txt"):  # fmt: skip
        path.write_bytes(b"x")
    index = folder_index([first, second], "--lora-dir")
    assert index == {
        "style": first / "style.safetensors",
        "deep": first / "sub" / "deep.pt",
        "other": second / "other.ckpt",
    }
    assert find_lora(index, "style", (first,)) == first / "style.safetensors"
    assert find_lora(index, "DEEP", (first,)) == first / "sub" / "deep.pt"  # one match in any case
    with pytest.raises(ModelError, match="<lora:missing> names no LoRA in --lora-dir"):
        find_lora(index, "missing", (first, second))
    with pytest.raises(UsageError, match="no --lora-dir was given"):
        find_lora({}, "style", ())


def test_embeddings_are_used_when_their_name_is_a_word_of_a_prompt(tmp_path):
    index = {name: tmp_path / f"{name}.pt" for name in ("EasyNegative", "bad", "bad-hands-5")}
    assert list(embeddings_named(index, ["(easynegative:1.2), lowres"])) == ["EasyNegative"]
    assert list(embeddings_named(index, ["badge, bad-hands-5"])) == ["bad-hands-5"]
    assert list(embeddings_named(index, ["a bad photo"])) == ["bad"]
    assert embeddings_named(index, ["nothing here"]) == {}


@pytest.mark.parametrize(
    ("prompt", "fragment"),
    [
        ("(x:" + "9" * 400 + ")", "is not a number"),
        ("(((x:3" + "0" * 38 + ")))", "multiply to infinity"),  # 3e38 x 1.21,
        # Hostile review, defect 10: finite in Python, infinite in the encoder's fp32.
        ("(fox:1" + "0" * 39 + ")", "multiply to infinity"),  # 1e39
        # Defect 6: each part is multiplied once per bracket around it, so 5461 nested
        # brackets were 15 million multiplications. Nesting is bounded.
        ("(" * 5461 + "x", "more than 64 deep"),
        ("([" * 33 + "x", "more than 64 deep"),
    ],
)
def test_weights_that_are_not_finite_are_refused(prompt, fragment):
    with pytest.raises(UsageError, match=fragment):
        parse_attention(prompt)


def test_the_deepest_nesting_multiplies_in_a1111s_closing_order():
    """Unclosed brackets close at the end, the round ones first (outermost first), then
    the square ones: a running product in opening order gives other last bits."""
    weight = 1.0
    for factor in [R] * 32 + [S] * 32:
        weight *= factor
    [(text, parsed)] = parse_attention("([" * 32 + "x")
    assert (text, parsed) == ("x", weight)
    running = 1.0
    for factor in [R, S] * 32:
        running *= factor
    assert running != weight  # so the order is seen


def test_and_is_text_in_the_negative_prompt_and_errors_name_the_negative():
    check_prompts("a fox", "cats AND dogs", "original")  # A1111 splits AND in the positive only
    with pytest.raises(UsageError, match="the negative prompt uses alternation"):
        check_prompts("a fox", "[a|b]", "original")
