"""A1111's prompt language on tiny real models (SD 1.x, SD 2.x, SDXL).

The embeddings txt2img hands the pipeline are compared with an independent computation of
A1111's rules written here from the reference (../shared/reference/prompts.md §1.4-1.8):
hand-written fragments, tokenized one by one, cut every 75 tokens and at BREAK, wrapped in
BOS/EOS, padded with EOS (CLIP-L) or 0 after the first EOS (OpenCLIP), encoded, weighted,
mean restored. Images are compared with diffusers' own pipeline given those embeddings."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from a1111 import parse_generation_parameters
from addon_files import write_diffusers_lora, write_embedding
from diffusers import DiffusionPipeline, StableDiffusionPipeline, StableDiffusionXLPipeline
from PIL import Image
from safetensors.torch import load_file

from txt2img.errors import ExitCode
from txt2img.prompt.encode import _emphasised

SEED, STEPS, GUIDANCE = 5, 2, 7.5
R, S = 1.1, 1 / 1.1
LENGTH = 75  # the tiny tokenizers are 77 long, like the real ones
WORDS = " ".join(["fox"] * 30)  # 90 tokens: the tiny tokenizer reads one character a token
# 11 + 90 tokens, BREAK, then 15: three chunks (75, 26, 15).
LONG = f"(masterpiece:1.2) {WORDS} BREAK [blurry] ((sharp)) tail"
LONG_FRAGMENTS = [[("masterpiece", 1.2), (" " + WORDS, 1.0)],
                  [("blurry", S), (" ", 1.0), ("sharp", R * R), (" tail", 1.0)]]  # fmt: skip
NEGATIVE = "lowres, (bad:1.4)"
NEGATIVE_FRAGMENTS = [[("lowres, ", 1.0), ("bad", 1.4)]]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def pipes(models) -> dict[str, object]:
    return {
        family: DiffusionPipeline.from_pretrained(models[family], local_files_only=True)
        for family in ("sd1", "sd2-v", "sdxl")
    }


@pytest.fixture
def calls(monkeypatch) -> list[dict]:
    """The keyword arguments of every pipeline call from now on."""
    seen: list[dict] = []
    for cls in (StableDiffusionPipeline, StableDiffusionXLPipeline):
        original = cls.__call__

        def spy(self, *args, _original=original, **kwargs):
            seen.append(kwargs)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(cls, "__call__", spy)
    return seen


# --- A1111's rules, written out independently ---------------------------------------------


def token_chunks(tokenizer, fragments_by_break: list[list[tuple[str, float]]]):
    """Each BREAK-separated part's tokens, fragment by fragment, cut every 75 tokens."""
    chunks = []
    for fragments in fragments_by_break:
        ids, weights = [], []
        for text, weight in fragments:
            tokens = tokenizer(text, add_special_tokens=False).input_ids
            ids += tokens
            weights += [weight] * len(tokens)
        for start in range(0, max(len(ids), 1), LENGTH):
            chunks.append((ids[start : start + LENGTH], weights[start : start + LENGTH]))
    return chunks


def a1111_encode(tokenizer, encoder, chunks, layer, emphasis="original", openclip=False):
    """[1, 77 * chunks, C] and the first chunk's pooled output."""
    zs, pooled = [], None
    for ids, weights in chunks:
        row = [tokenizer.bos_token_id, *ids] + [tokenizer.eos_token_id] * (LENGTH + 1 - len(ids))
        if openclip:  # 0 after the first EOS
            first_eos = row.index(tokenizer.eos_token_id)
            row = row[: first_eos + 1] + [0] * (len(row) - first_eos - 1)
        with torch.no_grad():
            output = encoder(torch.tensor([row]), output_hidden_states=True)
            z = layer(encoder, output)
        multipliers = torch.tensor([[1.0, *weights] + [1.0] * (LENGTH + 1 - len(weights))])
        if emphasis in ("original", "no-norm"):
            mean = z.mean()
            z = z * multipliers[..., None]
            if emphasis == "original" and z.mean() != 0:  # a zero mean must not give NaN
                z = z * (mean / z.mean())
        zs.append(z)
        pooled = output[0] if pooled is None else pooled
    return torch.cat(zs, dim=1), pooled


def last(encoder, output):
    return output.last_hidden_state


def penultimate(encoder, output):
    return output.hidden_states[-2]


def clip_skip(n: int):
    def layer(encoder, output):
        return encoder.final_layer_norm(output.hidden_states[-n])

    return layer


def padded(chunks, count):
    return chunks + [([], [])] * (count - len(chunks))


def expected_embeds(pipe, family, positive, negative, emphasis="original", layer=None):
    """What A1111's rules give for hand-written fragment lists; `negative` None means the
    empty negative prompt."""
    encoders = (
        [(pipe.tokenizer, pipe.text_encoder, False), (pipe.tokenizer_2, pipe.text_encoder_2, True)]
        if family == "sdxl"
        else [(pipe.tokenizer, pipe.text_encoder, family == "sd2-v")]
    )
    sides, pooled = [[], []], []
    for tokenizer, encoder, openclip in encoders:
        pos = token_chunks(tokenizer, positive)
        neg = token_chunks(tokenizer, negative or [[("", 1.0)]])
        count = max(len(pos), len(neg))
        chosen = layer or (penultimate if family == "sdxl" else last)
        for k, chunks in enumerate((padded(pos, count), padded(neg, count))):
            z, pool = a1111_encode(tokenizer, encoder, chunks, chosen, emphasis, openclip)
            if k == 1 and negative is None and family == "sdxl":  # zeros, then "" chunks
                z[:, : LENGTH + 2] = 0
                pool = torch.zeros_like(pool)
            sides[k].append(z)
            pooled.append(pool)
    embeds = {"prompt_embeds": torch.cat(sides[0], -1),
              "negative_prompt_embeds": torch.cat(sides[1], -1)}  # fmt: skip
    if family == "sdxl":
        embeds["pooled_prompt_embeds"] = pooled[2]
        embeds["negative_pooled_prompt_embeds"] = pooled[3]
    return embeds


def diffusers_pixels(pipe, **embeds) -> np.ndarray:
    pipe.set_progress_bar_config(disable=True)
    image = pipe(**embeds, num_inference_steps=STEPS, guidance_scale=GUIDANCE,
                 generator=torch.Generator("cpu").manual_seed(SEED)).images[0]  # fmt: skip
    return np.asarray(image)


# --- running txt2img ----------------------------------------------------------------------


def draw(cli, out: Path, model: Path, prompt: str, *extra) -> list[Path]:
    result = cli(prompt, "-m", model, "--steps", STEPS, "--seed", SEED, "-q", "-o", out, *extra)
    assert result.exit_code == 0, result.stderr
    return [Path(line) for line in result.stdout.splitlines()]


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def infotext(path: Path) -> dict[str, str]:
    return parse_generation_parameters(Image.open(path).text["parameters"])


def record(path: Path) -> dict:
    return json.loads(Image.open(path).text["txt2img"])


def assert_embeds_equal(actual: dict, expected: dict) -> None:
    assert set(expected) <= set(actual)
    for key, tensor in expected.items():
        torch.testing.assert_close(actual[key], tensor, rtol=0, atol=0, msg=key)


# --- embeddings equal A1111's rules -------------------------------------------------------


@pytest.mark.parametrize("family", ["sd1", "sd2-v", "sdxl"])
def test_weights_break_and_long_prompts_follow_a1111(cli, tmp_path, models, pipes, calls, family):
    draw(cli, tmp_path, models[family], LONG, "-n", NEGATIVE)
    expected = expected_embeds(pipes[family], family, LONG_FRAGMENTS, NEGATIVE_FRAGMENTS)
    assert expected["prompt_embeds"].shape[1] == 3 * 77
    assert_embeds_equal(calls[-1], expected)


def test_sdxl_empty_negative_is_zeros_padded_with_empty_prompt_chunks(
    cli, tmp_path, models, pipes, calls
):
    draw(cli, tmp_path, models["sdxl"], LONG)
    assert_embeds_equal(calls[-1], expected_embeds(pipes["sdxl"], "sdxl", LONG_FRAGMENTS, None))


def test_the_image_is_diffusers_own_with_those_embeddings(cli, tmp_path, models, pipes):
    [path] = draw(cli, tmp_path, models["sd1"], LONG, "-n", NEGATIVE)
    embeds = expected_embeds(pipes["sd1"], "sd1", LONG_FRAGMENTS, NEGATIVE_FRAGMENTS)
    np.testing.assert_array_equal(pixels(path), diffusers_pixels(pipes["sd1"], **embeds))
    assert infotext(path)["Prompt"] == LONG  # the prompt as written


def test_the_comma_backtrack_on_the_real_tokenizer(cli, tmp_path, models, pipes, calls):
    """A comma 15 tokens before the end of a full chunk: what follows it moves on."""
    before, after = " ".join(["fox"] * 20) + ",", " ".join(["cat"] * 10)  # 61 and 30 tokens
    draw(cli, tmp_path, models["sd1"], f"{before} {after}")
    fragments = [[(before, 1.0)], [(after, 1.0)]]  # cut after the comma, as BREAK would
    assert_embeds_equal(calls[-1], expected_embeds(pipes["sd1"], "sd1", fragments, None))


def test_pad_conds_is_recorded_when_the_prompts_were_padded(cli, tmp_path, models):
    [padded_image] = draw(cli, tmp_path / "a", models["sd1"], LONG, "-n", NEGATIVE)
    assert infotext(padded_image)["Pad conds"] == "True" and record(padded_image)["pad_conds"]
    [plain] = draw(cli, tmp_path / "b", models["sd1"], "a red fox", "-n", NEGATIVE)
    assert "Pad conds" not in infotext(plain) and not record(plain)["pad_conds"]


@pytest.mark.parametrize("family", ["sd1", "sd2-v", "sdxl"])
def test_tokens_past_the_first_chunk_change_the_image(cli, tmp_path, models, family):
    [cat] = draw(cli, tmp_path / "cat", models[family], f"{WORDS} cat")
    [dog] = draw(cli, tmp_path / "dog", models[family], f"{WORDS} dog")
    assert not np.array_equal(pixels(cat), pixels(dog))


# --- emphasis -----------------------------------------------------------------------------


def test_emphasis_no_norm_weights_without_restoring_the_mean(cli, tmp_path, models, pipes, calls):
    [path] = draw(cli, tmp_path, models["sd1"], LONG, "--emphasis", "no-norm")
    expected = expected_embeds(pipes["sd1"], "sd1", LONG_FRAGMENTS, None, emphasis="no-norm")
    assert_embeds_equal(calls[-1], expected)
    assert infotext(path)["Emphasis"] == "No norm"


def test_emphasis_ignore_drops_the_weights_and_none_reads_the_brackets(
    cli, tmp_path, models, pipes
):
    model, prompt = models["sd1"], "a (red:1.5) fox"
    [ignored] = draw(cli, tmp_path / "i", model, prompt, "--emphasis", "ignore")
    [plain] = draw(cli, tmp_path / "p", model, "a red fox")
    np.testing.assert_array_equal(pixels(ignored), pixels(plain))  # one token per character
    assert infotext(ignored)["Emphasis"] == "Ignore"
    [literal] = draw(cli, tmp_path / "n", model, prompt, "--emphasis", "none")
    pipe = pipes["sd1"]
    pipe.set_progress_bar_config(disable=True)
    reference = pipe(prompt, num_inference_steps=STEPS, guidance_scale=GUIDANCE,
                     generator=torch.Generator("cpu").manual_seed(SEED)).images[0]  # fmt: skip
    np.testing.assert_array_equal(pixels(literal), np.asarray(reference))
    assert "Emphasis" not in infotext(plain)  # the default, and no brackets: not written


def test_a_chunk_whose_weighted_mean_is_zero_is_not_nan():
    z = torch.zeros(1, 77, 2)
    z[0, 0], z[0, 1] = 1.0, 1.0  # BOS and one token; that token's weight -1 cancels it
    out = _emphasised(z, [[-1.0]], "original")
    assert torch.isfinite(out).all()
    assert torch.equal(out[0, 1], torch.tensor([-1.0, -1.0]))


# --- Clip skip ----------------------------------------------------------------------------


def test_clip_skip_2_is_the_penultimate_layer_with_the_final_norm(
    cli, tmp_path, models, pipes, calls
):
    [path] = draw(cli, tmp_path, models["sd1"], "a red fox", "--clip-skip", "2")
    fragments = [[("a red fox", 1.0)]]
    expected = expected_embeds(pipes["sd1"], "sd1", fragments, None, layer=clip_skip(2))
    assert_embeds_equal(calls[-1], expected)
    np.testing.assert_array_equal(pixels(path), diffusers_pixels(pipes["sd1"], **expected))
    assert infotext(path)["Clip skip"] == "2" and record(path)["clip_skip"] == 2
    [default] = draw(cli, tmp_path / "one", models["sd1"], "a red fox")
    assert not np.array_equal(pixels(path), pixels(default))
    assert "Clip skip" not in infotext(default)


def test_clip_skip_leaves_sdxl_as_a1111_does_and_is_recorded(cli, tmp_path, models):
    result = cli("a red fox", "-m", models["sdxl"], "--steps", STEPS, "--seed", SEED,
                 "-o", tmp_path / "two", "--clip-skip", "2")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert "--clip-skip changes SD 1.x models only" in result.stderr
    [skipped] = [Path(p) for p in result.stdout.splitlines()]
    [default] = draw(cli, tmp_path / "one", models["sdxl"], "a red fox")
    np.testing.assert_array_equal(pixels(skipped), pixels(default))
    assert infotext(skipped)["Clip skip"] == "2"


def test_clip_skip_past_the_encoders_layers_is_refused(cli, tmp_path, models):
    result = cli("a fox", "-m", models["sd1"], "--clip-skip", "3", "-o", tmp_path)
    assert result.exit_code == ExitCode.USAGE
    assert "more than this model's 2 text-encoder layers" in result.stderr


def test_per_line_clip_skip_and_emphasis(cli, tmp_path, models):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a (red:1.5) fox --emphasis no-norm\na red fox --clip-skip 2\n")
    result = cli("-f", prompts, "-m", models["sd1"], "--steps", STEPS, "--seed", SEED,
                 "--json", "-o", tmp_path / "file")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(r["emphasis"], r["clip_skip"]) for r in lines] == [("no-norm", 1), ("original", 2)]
    [alone0] = draw(cli, tmp_path / "a", models["sd1"], "a (red:1.5) fox", "--emphasis", "no-norm")
    result = cli("a red fox", "-m", models["sd1"], "--steps", STEPS, "--seed", SEED + 1, "-q",
                 "-o", tmp_path / "b", "--clip-skip", "2")  # fmt: skip
    alone1 = Path(result.stdout.strip())
    np.testing.assert_array_equal(pixels(Path(lines[0]["path"])), pixels(alone0))
    np.testing.assert_array_equal(pixels(Path(lines[1]["path"])), pixels(alone1))


def test_verbose_reports_tokens_and_chunks(cli, tmp_path, models):
    result = cli(LONG, "-m", models["sd1"], "--steps", 1, "--seed", 1, "-v", "-o", tmp_path)
    assert result.exit_code == 0, result.stderr
    assert "the prompt: 116 tokens in 3 chunks of 75" in result.stderr


def test_prompts_of_different_chunk_counts_are_drawn_in_separate_calls(
    cli, tmp_path, models, calls
):
    prompts = tmp_path / "p.txt"
    prompts.write_text(f"a red fox\n{WORDS} cat\n{WORDS} dog\n")
    result = cli("-f", prompts, "-m", models["sd1"], "--steps", STEPS, "--seed", SEED, "-b", 3,
                 "-q", "-o", tmp_path / "out")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert [call["prompt_embeds"].shape[:2] for call in calls] == [(1, 77), (2, 154)]


@pytest.mark.parametrize(
    ("prompt", "code", "fragment"),
    [
        ("a [cat:dog:5] photo", ExitCode.USAGE, "prompt editing [from:to:when]"),
        ("a [cat|dog] photo", ExitCode.USAGE, "alternation [a|b]"),
        ("a cat AND a dog", ExitCode.USAGE, "AND (composable prompts)"),
        ("(b:1.1.1)", ExitCode.USAGE, "not a number"),
    ],
)
def test_unsupported_syntax_is_refused_before_loading(cli, tmp_path, prompt, code, fragment):
    prompts = tmp_path / "p.txt"
    prompts.write_text(f"a fox\n{prompt}\n")
    result = cli("-f", prompts, "-m", tmp_path / "no-such-model", "-o", tmp_path / "out")
    assert result.exit_code == code, result.stderr
    assert f"{prompts}:2:" in result.stderr or "line 2" in result.stderr
    assert fragment in result.stderr and "Traceback" not in result.stderr


# --- LoRA tags and embedding folders ------------------------------------------------------


@pytest.fixture(scope="module")
def lora_dir(models, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("loras")
    write_diffusers_lora(models["sd1"], folder / "style-a.safetensors", seed=1)
    (folder / "more").mkdir()
    write_diffusers_lora(models["sd1"], folder / "more" / "style-b.safetensors", seed=2)
    return folder


def lora_pixels(
    model: Path, prompt: str, *loras: tuple[Path, dict | float], seed: int = SEED
) -> np.ndarray:
    pipe = DiffusionPipeline.from_pretrained(model, local_files_only=True)
    names = [f"adapter{i}" for i in range(len(loras))]
    for name, (path, _) in zip(names, loras, strict=True):
        pipe.load_lora_weights(str(path), adapter_name=name)
    if loras:
        pipe.set_adapters(names, adapter_weights=[weight for _, weight in loras])
    pipe.set_progress_bar_config(disable=True)
    image = pipe(prompt, num_inference_steps=STEPS, guidance_scale=GUIDANCE,
                 generator=torch.Generator("cpu").manual_seed(seed)).images[0]  # fmt: skip
    return np.asarray(image)


def test_a_lora_tag_applies_its_weights_from_the_folder(cli, tmp_path, models, lora_dir):
    model, style_a = models["sd1"], lora_dir / "style-a.safetensors"
    prompt = "a red fox <lora:style-a:0.5>"
    [path] = draw(cli, tmp_path / "a", model, prompt, "--lora-dir", lora_dir)
    np.testing.assert_array_equal(pixels(path), lora_pixels(model, "a red fox ", (style_a, 0.5)))
    params = infotext(path)
    assert params["Prompt"] == prompt
    assert params["Lora hashes"].startswith("style-a: ")
    assert record(path)["addons"][0] == {"kind": "lora", "name": "style-a",
        "hash": params["Lora hashes"].split(": ")[1], "scale": 0.5, "token": None,
        "te_scale": 0.5, "location": str(style_a.resolve())}  # fmt: skip
    split = "a red fox <lora:style-a:0:1>"  # text encoders 0, U-Net 1
    [path] = draw(cli, tmp_path / "b", model, split, "--lora-dir", lora_dir)
    expected = lora_pixels(model, "a red fox ", (style_a, {"unet": 1.0, "text_encoder": 0.0}))
    np.testing.assert_array_equal(pixels(path), expected)


def test_each_line_gets_its_own_loras_loaded_once(cli, tmp_path, models, lora_dir, monkeypatch):
    loads = []
    original = StableDiffusionPipeline.load_lora_weights

    def counted(self, *args, **kwargs):
        loads.append(args[0])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(StableDiffusionPipeline, "load_lora_weights", counted)
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red fox <lora:style-a:1>\na red fox\na red fox <lora:style-b:0.7>\n"
                       "a red fox <lora:style-a:1>\n")  # fmt: skip
    env = {"TXT2IMG_LORA_DIR": str(lora_dir)}
    result = cli("-f", prompts, "-m", models["sd1"], "--steps", STEPS, "--seed", SEED,
                 "--json", "-o", tmp_path / "out", env=env)  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert len(loads) == 2
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [[a["name"] for a in line["addons"]] for line in lines] == [
        ["style-a"],
        [],
        ["style-b"],
        ["style-a"],
    ]
    monkeypatch.setattr(StableDiffusionPipeline, "load_lora_weights", original)
    style_a, style_b = lora_dir / "style-a.safetensors", lora_dir / "more" / "style-b.safetensors"
    for k, loras in enumerate([[(style_a, 1.0)], [], [(style_b, 0.7)], [(style_a, 1.0)]]):
        # never one line's LoRAs stacked onto the next: each image is its own LoRAs' only
        expected = lora_pixels(models["sd1"], "a red fox", *loras, seed=SEED + k)
        np.testing.assert_array_equal(pixels(Path(lines[k]["path"])), expected)


@pytest.mark.parametrize(
    ("prompt", "extra", "code", "fragment"),
    [
        ("a fox <lora:nothing:1>", True, ExitCode.MODEL, "<lora:nothing> names no LoRA"),
        ("a fox <lora:../style-a:1>", True, ExitCode.USAGE, "is not a name"),
        ("a fox <lora:style-a:1>", False, ExitCode.USAGE, "no --lora-dir was given"),
        ("a fox <hypernet:x:1>", True, ExitCode.USAGE, "hypernetworks are not supported"),
    ],
)
def test_lora_tag_refusals(cli, tmp_path, models, lora_dir, prompt, extra, code, fragment):
    args = ("--lora-dir", lora_dir) if extra else ()
    result = cli(prompt, "-m", models["sd1"], "-o", tmp_path, *args)
    assert result.exit_code == code, result.stderr
    assert fragment in result.stderr and "Traceback" not in result.stderr


def test_embeddings_in_a_folder_are_used_by_name(cli, tmp_path, models):
    folder = tmp_path / "embeddings"
    folder.mkdir()
    embedding = write_embedding(folder / "myword.safetensors", dim=32, vectors=2, seed=6)
    model, prompt = models["sd1"], "a photo of MyWord at dawn"
    [by_name] = draw(cli, tmp_path / "a", model, prompt, "--embeddings-dir", folder)
    [given] = draw(cli, tmp_path / "b", model, prompt, "--embedding", embedding)
    np.testing.assert_array_equal(pixels(by_name), pixels(given))
    assert infotext(by_name)["TI hashes"].startswith("myword: ")
    [unused] = draw(cli, tmp_path / "c", model, "a photo at dawn", "--embeddings-dir", folder)
    assert "TI hashes" not in infotext(unused) and record(unused)["addons"] == []
    pipe = DiffusionPipeline.from_pretrained(model, local_files_only=True)
    pipe.load_textual_inversion(load_file(embedding), token="myword")
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator("cpu").manual_seed(SEED)
    reference = pipe("a photo of myword at dawn", num_inference_steps=STEPS,
                     guidance_scale=GUIDANCE, generator=generator)  # fmt: skip
    np.testing.assert_array_equal(pixels(by_name), np.asarray(reference.images[0]))


def test_a_pasted_a1111_prompt_gets_a1111s_conditioning(cli, tmp_path, models, lora_dir):
    """Weights, BREAK, more than 75 tokens, a LoRA tag and Clip skip 2 at once: the
    embeddings are A1111's, computed on a pipeline with the LoRA's text-encoder layers
    at the tag's weight, and the image is diffusers' own with them."""
    prompt = f"{LONG} <lora:style-a:0.6>"
    [path] = draw(cli, tmp_path, models["sd1"], prompt, "-n", NEGATIVE, "--clip-skip", "2",
                  "--lora-dir", lora_dir)  # fmt: skip
    pipe = DiffusionPipeline.from_pretrained(models["sd1"], local_files_only=True)
    pipe.load_lora_weights(str(lora_dir / "style-a.safetensors"), adapter_name="a")
    pipe.set_adapters(["a"], adapter_weights=[0.6])
    embeds = expected_embeds(pipe, "sd1", LONG_FRAGMENTS, NEGATIVE_FRAGMENTS, layer=clip_skip(2))
    np.testing.assert_array_equal(pixels(path), diffusers_pixels(pipe, **embeds))
    params = infotext(path)
    assert params["Prompt"] == prompt and params["Negative prompt"] == NEGATIVE
    assert params["Clip skip"] == "2" and params["Lora hashes"].startswith("style-a: ")


def test_an_embedding_acts_only_as_a_whole_word(cli, tmp_path, models):
    """With bad.safetensors in the folder, "a badge" is drawn as without it (diffusers'
    own token matching would read "bad" + "ge"); "a bad photo" uses it."""
    folder = tmp_path / "embeddings"
    folder.mkdir()
    write_embedding(folder / "bad.safetensors", dim=32, vectors=2, seed=6)
    prompts = tmp_path / "p.txt"
    prompts.write_text("a badge\na bad photo\n")
    result = cli("-f", prompts, "-m", models["sd1"], "--steps", STEPS, "--seed", SEED, "-q",
                 "-o", tmp_path / "out", "--embeddings-dir", folder)  # fmt: skip
    assert result.exit_code == 0, result.stderr
    badge, bad = (Path(line) for line in result.stdout.splitlines())
    [alone] = draw(cli, tmp_path / "alone", models["sd1"], "a badge")
    np.testing.assert_array_equal(pixels(badge), pixels(alone))
    assert "TI hashes" not in infotext(badge) and infotext(bad)["TI hashes"].startswith("bad: ")


def test_embeddings_whose_names_look_like_vector_names_stay_apart(cli, tmp_path, models):
    folder = tmp_path / "embeddings"
    folder.mkdir()
    write_embedding(folder / "bad_prompt.safetensors", dim=32, vectors=2, seed=6)
    write_embedding(folder / "bad_prompt_2.safetensors", dim=32, vectors=1, seed=7)
    both = "a bad_prompt and bad_prompt_2 photo"
    [path] = draw(cli, tmp_path / "a", models["sd1"], both, "--embeddings-dir", folder)
    names = [pair.split(": ")[0] for pair in infotext(path)["TI hashes"].split(", ")]
    assert names == ["bad_prompt", "bad_prompt_2"]
    [first] = draw(cli, tmp_path / "b", models["sd1"], "a bad_prompt and photo",
                   "--embeddings-dir", folder)  # fmt: skip
    assert not np.array_equal(pixels(path), pixels(first))
