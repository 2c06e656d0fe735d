"""Inputs and faults a hostile review tried: each is a named error with its exit code, found
before any model is loaded where it can be, or survived with --keep-going."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from a1111 import parse_generation_parameters
from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from paused import process_env
from PIL import Image

from txt2img import draw as generate
from txt2img.errors import ExitCode
from txt2img.options import IMAGE_OPTIONS, MAX_IMAGES, MAX_LINE_BYTES, OPTIONS, all_flags
from txt2img.records.write import JSON_KEYS

ROOT = Path(__file__).resolve().parent.parent
CPU_OUT_OF_MEMORY = (
    "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: "
    "you tried to allocate 8589934592 bytes. Error code 12 (Cannot allocate memory)"
)


def one_line_error(result, code: int, *fragments: str) -> str:
    assert result.exit_code == code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("txt2img: error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[-1], lines[-1]
    assert "Traceback" not in result.stderr
    return lines[-1]


def draw(cli, model, out, *extra):
    return cli("a fox", "-m", model, "--steps", 1, "--seed", 1, "-q", "-o", out, *extra)


# --- unbounded input is refused at once ----------------------------------------------------


def test_a_huge_image_count_is_refused_before_planning(cli, tmp_path, models):
    result = cli("a fox", "-N", 10_000_000, "-m", models["sd1"], "-o", tmp_path / "out")
    one_line_error(result, ExitCode.USAGE, f"--num-images must be between 1 and {MAX_IMAGES}")
    assert not (tmp_path / "out").exists()


def test_per_line_counts_add_up_to_the_bound(cli, tmp_path, models):
    prompts = tmp_path / "p.txt"
    prompts.write_text(f"a fox -N {MAX_IMAGES}\na cat -N 1\n")
    result = cli("-f", prompts, "-m", models["sd1"], "--seed", 1, "-o", tmp_path / "out")
    one_line_error(result, ExitCode.USAGE, "line 2", f"more than {MAX_IMAGES} images")


def test_an_endless_prompts_file_is_refused_at_its_first_line(cli, tmp_path, models):
    result = cli("-f", "/dev/zero", "-m", models["sd1"], "-o", tmp_path / "out")
    one_line_error(result, ExitCode.USAGE, "/dev/zero:1:", f"longer than {MAX_LINE_BYTES} bytes")


def test_a_prompt_longer_than_the_bound_is_refused(cli, tmp_path, models):
    result = cli("fox " * 5000, "-m", models["sd1"], "-o", tmp_path / "out")
    one_line_error(result, ExitCode.USAGE, "the prompt is 20000 characters long")


# --- text that is not Unicode --------------------------------------------------------------


def test_undecodable_argv_bytes_are_refused_before_loading(tmp_path, models):
    done = subprocess.run(
        [sys.executable.encode(), b"-m", b"txt2img", b"a fox \xff", b"-n", b"ok",
         b"-m", str(models["sd1"]).encode(), b"-o", str(tmp_path).encode()],
        capture_output=True, env=process_env(),
    )  # fmt: skip
    stderr = done.stderr.decode("utf-8", "replace")
    assert done.returncode == ExitCode.USAGE, stderr
    assert "the prompt is not valid Unicode" in stderr and "loading" not in stderr


def test_a_lone_surrogate_in_jsonl_names_the_line(cli, tmp_path, models):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "a fox"}\n{"prompt": "ok", "negative_prompt": "\\ud800"}\n')
    result = cli("-f", prompts, "-m", models["sd1"], "-o", tmp_path / "out")
    one_line_error(
        result, ExitCode.USAGE, f"{prompts}:2:", "--negative-prompt is not valid Unicode"
    )


@pytest.mark.parametrize(
    ("value", "fragment"),
    [("[" * 20000 + "]" * 20000, "nested too deeply"), ("9" * 5000, "not usable JSON")],
)
def test_hostile_json_values_name_the_line(cli, tmp_path, models, value, fragment):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(f'{{"prompt": "a fox"}}\n{{"prompt": "x", "seed": {value}}}\n')
    result = cli("-f", prompts, "-m", models["sd1"], "-o", tmp_path / "out")
    one_line_error(result, ExitCode.USAGE, f"{prompts}:2:", fragment)


# --- per-line options come from the same table as the command line -------------------------


@pytest.mark.parametrize("flag", [f for f in all_flags() if f.startswith("-")])
def test_every_command_line_flag_is_an_option_on_a_prompt_line(tmp_path, flag):
    """A flag on a prompt line is never taken as prompt text: per-image flags apply,
    the others are refused naming the flag."""
    from txt2img.errors import UsageError
    from txt2img.prompt.files import read_prompt_lines

    per_image = {f: option for option in IMAGE_OPTIONS for f in option.flags}
    prompts = tmp_path / "p.txt"
    option = per_image.get(flag)
    value = "4"  # a valid value of every per-image option that takes a number
    if flag == "--variation-strength":
        value = "0.4"  # a fraction
    elif option is not None and option.choices:
        value = option.choices[-1]
    elif option is not None and option.kind is int:
        value = "8"
    prompts.write_text(f"a plan {flag} {value}\n")
    if flag in per_image:
        [line] = read_prompt_lines(str(prompts))
        assert line.prompt == "a plan" and per_image[flag].key in line.overrides
    else:
        with pytest.raises(UsageError, match=f"{re.escape(flag)} is not a per-prompt option"):
            read_prompt_lines(str(prompts))


def test_batch_size_on_a_prompt_line_is_refused(cli, tmp_path, models):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a plan -b 4\n")
    result = cli("-f", prompts, "-m", models["sd1"], "-o", tmp_path / "out")
    one_line_error(result, ExitCode.USAGE, f"{prompts}:1:", "-b is not a per-prompt option")


def test_help_lists_every_option_of_the_table(cli):
    result = cli("--help")
    assert result.exit_code == 0
    text = re.sub(r"\s+", " ", result.stdout)
    for option in OPTIONS:
        for flag in (*option.flags, option.off_flag):
            if flag:
                assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text), flag


# --- output: names already taken, stdout that cannot be written ------------------------------


def test_a_dangling_symlink_at_an_image_name_is_taken(cli, tmp_path, models):
    out = tmp_path / "out"
    out.mkdir()
    link = out / "00000-1-a-fox.png"
    link.symlink_to(tmp_path / "nowhere")
    refused = cli("a fox", "-m", models["sd1"], "--steps", 1, "--seed", 1, "-N", 2, "-o", out)
    one_line_error(refused, ExitCode.OUTPUT, "00000-1-a-fox.png", "already exists")
    assert "loading" not in refused.stderr
    resumed = cli("a fox", "-m", models["sd1"], "--steps", 1, "--seed", 1, "-N", 2, "-o", out,
                  "--resume", "--json")  # fmt: skip
    assert resumed.exit_code == 0, resumed.stderr
    records = [json.loads(line) for line in resumed.stdout.splitlines()]
    assert [(r["status"], r["index"]) for r in records] == [("skipped", 0), ("ok", 1)]
    assert link.is_symlink() and not link.exists()  # left as it was


def test_an_output_dir_that_is_a_dangling_link_is_refused_before_loading(cli, tmp_path, models):
    link = tmp_path / "out"
    link.symlink_to(tmp_path / "nowhere")
    result = draw(cli, models["sd1"], link)
    one_line_error(result, ExitCode.OUTPUT, "is a link to nothing")
    assert "loading" not in result.stderr


def test_stale_temporary_files_are_told_by_their_lock(cli, tmp_path, models):
    """One left by a killed process with this very PID (a container's next run) is
    removed; one that a live writer holds locked is kept, whatever its name says."""
    import fcntl

    from txt2img.outputs.files import temporary_name

    out = tmp_path / "out"
    out.mkdir()
    stale = temporary_name(out / "00000-1-a-fox.png")  # our own PID: a killed earlier run
    stale.write_bytes(b"half a png")
    live = out / ".00001-2-a-fox.png.1.tmp"
    with open(live, "wb") as writer:
        fcntl.flock(writer, fcntl.LOCK_EX)
        result = cli("a fox", "-m", models["sd1"], "--steps", 1, "--seed", 1, "-N", 2, "-q",
                     "-o", out)  # fmt: skip
        assert result.exit_code == 0, result.stderr
        assert sorted(p.name for p in out.iterdir()) == [
            live.name, "00000-1-a-fox.png", "00001-2-a-fox.png"
        ]  # fmt: skip


def test_a_prompts_file_of_endless_blank_lines_is_refused(cli, tmp_path, models):
    from txt2img.options import MAX_LINES

    prompts = tmp_path / "p.txt"
    prompts.write_bytes(b"\n" * (MAX_LINES + 1))
    result = cli("-f", prompts, "-m", models["sd1"], "-o", tmp_path / "out")
    one_line_error(result, ExitCode.USAGE, f"more than {MAX_LINES} lines")


def test_closed_stdout_is_refused_before_loading(tmp_path, models):
    done = subprocess.run(
        f'exec "{sys.executable}" -m txt2img "a fox" -m "{models["sd1"]}" --steps 1 --seed 1 '
        f'-o "{tmp_path / "out"}" >&-',
        shell=True, capture_output=True, text=True, env=process_env(),
    )  # fmt: skip
    assert done.returncode == ExitCode.OUTPUT, done.stderr
    assert "standard output is closed" in done.stderr and "loading" not in done.stderr
    assert not (tmp_path / "out").exists()


def test_full_stdout_is_an_output_error(tmp_path, models):
    with open("/dev/full", "w") as full:
        done = subprocess.run(
            [sys.executable, "-m", "txt2img", "a fox", "-m", models["sd1"], "--steps", "1",
             "--seed", "1", "-N", "2", "-q", "-o", tmp_path],
            stdout=full, stderr=subprocess.PIPE, text=True, env=process_env(),
        )  # fmt: skip
    assert done.returncode == ExitCode.OUTPUT, done.stderr
    assert "cannot write to standard output: No space left on device" in done.stderr
    assert "Traceback" not in done.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["00000-1-a-fox.png"]  # whole, then stopped


# --- checks that came too late or blamed the wrong thing -------------------------------------


def test_a_failed_load_leaves_no_output_folder(cli, tmp_path, models):
    broken = tmp_path / "broken"
    shutil.copytree(models["sd1"], broken)
    weights = broken / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    result = draw(cli, broken, tmp_path / "out")
    one_line_error(result, ExitCode.MODEL)
    assert not (tmp_path / "out").exists()


def test_an_empty_embedding_folder_is_refused_before_loading(cli, tmp_path, models):
    (tmp_path / "empty").mkdir()
    result = draw(cli, models["sd1"], tmp_path / "out", "--embedding", tmp_path / "empty")
    one_line_error(result, ExitCode.MODEL, "--embedding", "learned_embeds.safetensors")
    assert "loading" not in result.stderr


@pytest.mark.parametrize(
    ("index", "fragment"),
    [("{not json", "is not valid JSON"), ('{"_class_name": "FluxPipeline"}', "FluxPipeline")],
)
def test_a_bad_config_model_index_is_a_config_error(cli, tmp_path, models, index, fragment):
    from ldm_export import export_single_file

    checkpoint = export_single_file(models["sd1"], tmp_path / "model.safetensors")
    config = tmp_path / "config"
    config.mkdir()
    (config / "model_index.json").write_text(index)
    result = draw(cli, checkpoint, tmp_path / "out", "--config", config)
    one_line_error(result, ExitCode.USAGE, "--config", fragment)


def test_a_model_whose_parts_do_not_fit_is_a_model_error(cli, tmp_path, models):
    """A text encoder of another width than the U-Net's cross-attention: torch's own
    shape error while drawing, reported as the model's fault."""
    import make_tiny_model as tiny

    mixed = tmp_path / "mixed"
    shutil.copytree(models["sd1"], mixed)
    shutil.rmtree(mixed / "text_encoder")
    tiny._text_encoder(hidden_size=48, projection_dim=48, with_projection=False).save_pretrained(
        mixed / "text_encoder"
    )
    result = draw(cli, mixed, tmp_path / "out")
    one_line_error(result, ExitCode.MODEL, "the model failed while drawing", "shapes")


def test_a_value_error_inside_the_model_is_not_blamed_on_the_settings(
    cli, tmp_path, models, monkeypatch
):
    def broken_forward(self, *args, **kwargs):
        raise ValueError("the U-Net config and its weights disagree")

    monkeypatch.setattr(UNet2DConditionModel, "forward", broken_forward)
    result = draw(cli, models["sd1"], tmp_path / "out")
    one_line_error(result, ExitCode.MODEL, "the model failed while drawing", "disagree")


def test_empty_paths_are_refused(cli, tmp_path, models):
    for flag in ("--lora", "--embedding", "--vae", "--config"):
        result = draw(cli, models["sd1"], tmp_path / "out", flag, "")
        one_line_error(result, ExitCode.USAGE, f"{flag} is empty")


def test_a_device_file_as_an_add_on_is_named(cli, tmp_path, models):
    result = draw(cli, models["sd1"], tmp_path / "out", "--embedding", "/dev/null")
    one_line_error(result, ExitCode.MODEL, "/dev/null is not a file or folder")


def test_a_config_folder_without_its_components_is_a_config_error(cli, tmp_path, models):
    from ldm_export import export_single_file

    checkpoint = export_single_file(models["sd1"], tmp_path / "model.safetensors")
    config = tmp_path / "config"
    config.mkdir()
    shutil.copy(models["sd1"] / "model_index.json", config)
    result = draw(cli, checkpoint, tmp_path / "out", "--config", config)
    one_line_error(result, ExitCode.USAGE, "--config", "folder, which model_index.json lists")


def test_an_uncached_hub_embedding_offline_says_so(cli, tmp_path, models):
    result = draw(cli, models["sd1"], tmp_path / "out", "--embedding", "someone/cat-toy",
                  "--offline")  # fmt: skip
    one_line_error(result, ExitCode.MODEL, "someone/cat-toy is not in the Hugging Face cache")


def test_an_absurd_native_size_is_a_model_error(cli, tmp_path, models):
    model = tmp_path / "huge"
    shutil.copytree(models["sd1"], model)
    config_file = model / "unet" / "config.json"
    config = json.loads(config_file.read_text())
    config["sample_size"] = 100_000
    config_file.write_text(json.dumps(config))
    result = draw(cli, model, tmp_path / "out")
    one_line_error(result, ExitCode.MODEL, "native size", "--width must be between 8 and 8192")
    assert draw(cli, model, tmp_path / "sized", "-W", 64, "-H", 64).exit_code == 0


# --- out of memory on the CPU ---------------------------------------------------------------


def test_cpu_out_of_memory_is_exit_5(cli, tmp_path, models, monkeypatch):
    def out_of_memory(self, *args, **kwargs):
        raise RuntimeError(CPU_OUT_OF_MEMORY)

    monkeypatch.setattr(StableDiffusionPipeline, "__call__", out_of_memory)
    one_line_error(draw(cli, models["sd1"], tmp_path / "out"), ExitCode.OUT_OF_MEMORY, "--low-vram")


def raise_out_of_memory(*args, **kwargs):
    raise RuntimeError(CPU_OUT_OF_MEMORY)


def test_keep_going_survives_out_of_memory_in_the_fp32_decode(
    cli, tmp_path, nan_model, monkeypatch
):
    monkeypatch.setattr(generate, "decode_in_fp32", raise_out_of_memory)
    result = cli("a fox", "-m", nan_model, "--steps", 1, "--seed", 1, "-N", 2,
                 "--keep-going", "--json", "-o", tmp_path / "out")  # fmt: skip
    assert result.exit_code == ExitCode.PARTIAL, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(r["status"], r["index"]) for r in records] == [("failed", 0), ("failed", 1)]
    assert "ran out of memory" in records[0]["error"]


def test_keep_going_survives_out_of_memory_in_the_strip_decode(cli, tmp_path, models, monkeypatch):
    calls = []
    original = generate.strip

    def strip_once_out_of_memory(*args):
        calls.append(1)
        return raise_out_of_memory() if len(calls) == 1 else original(*args)

    monkeypatch.setattr(generate, "strip", strip_once_out_of_memory)
    out = tmp_path / "out"
    result = cli("a fox", "-m", models["sd1"], "--steps", 2, "--seed", 1, "-N", 2,
                 "--save-steps", 1, "--keep-going", "--json", "-o", out)  # fmt: skip
    assert result.exit_code == ExitCode.PARTIAL, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(r["status"], r["index"]) for r in records] == [("failed", 0), ("ok", 1)]
    # The failed image left nothing: neither the image nor its strip.
    assert sorted(p.name for p in out.iterdir()) == ["00001-2-a-fox-steps.png", "00001-2-a-fox.png"]


# --- JSON records: one schema for every status ------------------------------------------------


def test_every_json_record_has_the_documented_keys(cli, tmp_path, models):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red fox\na blue cat --scheduler lcm --steps 60\na green owl\n")
    args = ("-f", prompts, "-m", models["sd1"], "--steps", 1, "--seed", 1, "--json", "-q",
            "--keep-going", "-o", tmp_path / "out")  # fmt: skip
    first = cli(*args)
    assert first.exit_code == ExitCode.PARTIAL
    (tmp_path / "out" / "00002-3-a-green-owl.png").unlink()
    again = cli(*args, "--resume")
    records = [json.loads(line) for line in (first.stdout + again.stdout).splitlines()]
    assert {r["status"] for r in records} == {"ok", "failed", "skipped"}
    for record in records:
        assert list(record) == list(JSON_KEYS), record["status"]
        name = f"{record['index']:05d}-{record['seed']}-{record['prompt'].replace(' ', '-')}.png"
        assert record["path"] == str(tmp_path / "out" / name)
    readme = (ROOT / "README.md").read_text()
    documented = re.search(r"every line has the keys\s+(.*?)\.\n", readme, re.S)
    assert documented, "the README lists the JSON keys"
    assert re.findall(r"`(\w+)`", documented[1]) == list(JSON_KEYS)


# --- metadata a prompt cannot forge ------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "negative"),
    [
        ("a cat\nNegative prompt: a dog", ""),
        ("Negative prompt: a dog", "blurry"),
        ("a cat\n  Negative prompt: a dog", "ugly\nNegative prompt: sharp"),
    ],
)
def test_a_prompt_cannot_forge_the_negative_prompt(cli, tmp_path, models, prompt, negative):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": prompt, "negative_prompt": negative}) + "\n")
    result = cli("-f", prompts, "-m", models["sd1"], "--steps", 1, "--seed", 1, "-q",
                 "-o", tmp_path / "out")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    image = Image.open(result.stdout.strip())
    parsed = parse_generation_parameters(image.text["parameters"])
    lines = [line.strip() for line in prompt.split("\n")]
    # What a reader gets back is what was asked, up to the case of one letter (CLIP
    # lower-cases its input) and the white space at the ends of lines.
    assert parsed["Prompt"].lower() == "\n".join(lines).lower()
    assert (
        parsed.get("Negative prompt", "").lower()
        == "\n".join(line.strip() for line in negative.split("\n")).lower().strip()
    )
    assert json.loads(image.text["txt2img"])["prompt"] == prompt  # exact in the JSON chunk


# --- stderr carries txt2img's own lines ------------------------------------------------------


OWN_LINES = re.compile(r"(loading |sd1 model on |\[\d+/\d+\] |seed: \d+ \(drawn at random)")


def test_stderr_holds_only_txt2img_lines(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "txt2img", "a red square", "-m", "demo", "--steps", "2", "-o",
         tmp_path],
        capture_output=True, text=True, env=process_env(),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert [line for line in done.stderr.splitlines() if not OWN_LINES.match(line)] == []


@pytest.mark.parametrize(("flag", "level"), [(None, "CRITICAL"), ("--verbose", "WARNING")])
def test_verbose_leaves_the_libraries_logs_on(cli, tmp_path, models, flag, level):
    import logging

    import diffusers
    import transformers

    for library in (diffusers, transformers):
        library.utils.logging.set_verbosity_warning()
    result = draw(cli, models["sd1"], tmp_path / "out", *([flag] if flag else []))
    assert result.exit_code == 0, result.stderr
    for library in (diffusers, transformers):
        assert library.utils.logging.get_verbosity() == getattr(logging, level)


# --- the fp16 variant of a model ---------------------------------------------------------


def test_fp16_loads_the_fp16_variant_where_there_is_one(cli, tmp_path, models):
    model = tmp_path / "with-variant"
    shutil.copytree(models["sd1"], model)
    pipe = StableDiffusionPipeline.from_pretrained(models["sd1"], dtype=torch.float16)
    with torch.no_grad():
        for parameter in pipe.unet.parameters():
            parameter.mul_(0.5)  # the variant differs, so the pixels tell which was loaded
    pipe.save_pretrained(model, variant="fp16")
    assert list(model.glob("unet/*.fp16.safetensors"))

    def image(folder, **load):
        reference = StableDiffusionPipeline.from_pretrained(folder, dtype=torch.float16, **load)
        reference.set_progress_bar_config(disable=True)
        out = reference("a fox", num_inference_steps=1, guidance_scale=7.5,
                        generator=torch.Generator("cpu").manual_seed(1)).images[0]  # fmt: skip
        return np.asarray(out)

    result = draw(cli, model, tmp_path / "out", "--dtype", "fp16")
    assert result.exit_code == 0, result.stderr
    drawn = np.asarray(Image.open(result.stdout.strip()))
    np.testing.assert_array_equal(drawn, image(model, variant="fp16"))
    assert not np.array_equal(drawn, image(model))
    # Without a variant, fp16 loads the full weights as before.
    plain = draw(cli, models["sd1"], tmp_path / "plain", "--dtype", "fp16")
    assert plain.exit_code == 0, plain.stderr
    np.testing.assert_array_equal(
        np.asarray(Image.open(plain.stdout.strip())), image(models["sd1"])
    )
