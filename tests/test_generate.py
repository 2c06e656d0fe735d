"""End to end on tiny real models: the CLI's PNGs equal diffusers' own pipeline output,
pixel for pixel, and carry metadata that A1111's reader parses back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from a1111 import parse_generation_parameters
from diffusers import DiffusionPipeline, DPMSolverMultistepScheduler
from PIL import Image

from txt2img import __version__
from txt2img.errors import ExitCode

PROMPT = "a red fox at dawn"


def diffusers_image(model: Path, seed: int, scheduler=None, **call) -> np.ndarray:
    """What a hand-written diffusers script produces from the same folder."""
    pipe = DiffusionPipeline.from_pretrained(model)
    if scheduler is not None:
        pipe.scheduler = scheduler(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    image = pipe(PROMPT, generator=torch.Generator("cpu").manual_seed(seed), **call).images[0]
    return np.asarray(image)


def written(result) -> list[Path]:
    assert result.exit_code == 0, result.stderr
    return [Path(line) for line in result.stdout.splitlines()]


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.mark.parametrize("family", ["sd1", "sd2-v", "sdxl"])
def test_png_equals_diffusers_pipeline(cli, tmp_path, models, family):
    result = cli(PROMPT, "-m", models[family], "--steps", 3, "--seed", 42, "-o", tmp_path)
    [path] = written(result)
    # guidance 7.5 is our default for every non-Turbo family (diffusers' SDXL default is 5).
    expected = diffusers_image(models[family], 42, num_inference_steps=3, guidance_scale=7.5)
    assert pixels(path).shape == expected.shape
    np.testing.assert_array_equal(pixels(path), expected)


@pytest.mark.parametrize("family", ["sd-turbo", "sdxl-turbo"])
def test_turbo_defaults_to_one_step_without_guidance(cli, tmp_path, models, family):
    [path] = written(cli(PROMPT, "-m", models[family], "--seed", 3, "-o", tmp_path))
    expected = diffusers_image(models[family], 3, num_inference_steps=1, guidance_scale=0.0)
    np.testing.assert_array_equal(pixels(path), expected)
    params = parse_generation_parameters(Image.open(path).text["parameters"])
    assert (params["Steps"], params["CFG scale"]) == ("1", "0")
    assert json.loads(Image.open(path).text["txt2img"])["model_family"] == family


def test_each_image_uses_base_seed_plus_index(cli, tmp_path, models):
    result = cli(PROMPT, "-m", models["sd1"], "--steps", 2, "--seed", 10, "-N", 3, "-o", tmp_path)
    paths = written(result)
    assert [p.name for p in paths] == [
        "00000-10-a-red-fox-at-dawn.png",
        "00001-11-a-red-fox-at-dawn.png",
        "00002-12-a-red-fox-at-dawn.png",
    ]
    # Image 2 regenerated alone, as diffusers would from seed 12.
    np.testing.assert_array_equal(
        pixels(paths[2]), diffusers_image(models["sd1"], 12, num_inference_steps=2)
    )
    assert not np.array_equal(pixels(paths[0]), pixels(paths[1]))


def test_named_scheduler_is_built_from_the_model_config(cli, tmp_path, models):
    result = cli(
        PROMPT, "-m", models["sd2-v"], "--steps", 3, "--seed", 1,
        "--scheduler", "dpm++2m-karras", "-o", tmp_path,
    )  # fmt: skip
    [path] = written(result)

    def karras(config):
        return DPMSolverMultistepScheduler.from_config(
            config, algorithm_type="dpmsolver++", solver_order=2, use_karras_sigmas=True
        )

    expected = diffusers_image(models["sd2-v"], 1, scheduler=karras, num_inference_steps=3)
    np.testing.assert_array_equal(pixels(path), expected)
    record = json.loads(Image.open(path).text["txt2img"])
    assert record["scheduler_class"] == "DPMSolverMultistepScheduler"
    assert record["prediction_type"] == "v_prediction"  # kept from the model's config
    params = parse_generation_parameters(Image.open(path).text["parameters"])
    assert (params["Sampler"], params["Schedule type"]) == ("DPM++ 2M", "Karras")


def test_metadata_parses_back_with_a1111_reader(cli, tmp_path, models):
    result = cli(
        "a fox, in the snow: 8k", "-m", models["sd1"], "-n", "blurry, lowres",
        "--steps", 2, "--guidance", 6.5, "--seed", 7, "-W", 64, "-H", 96, "-o", tmp_path,
    )  # fmt: skip
    [path] = written(result)
    image = Image.open(path)
    assert image.size == (64, 96)
    params = parse_generation_parameters(image.text["parameters"])
    assert params == {
        "Prompt": "a fox, in the snow: 8k",
        "Negative prompt": "blurry, lowres",
        "Steps": "2",
        "Sampler": "PLMS",
        "Schedule type": "Uniform",  # A1111 reads a missing one as "Automatic"
        "CFG scale": "6.5",
        "Seed": "7",
        "Size-1": "64",
        "Size-2": "96",
        "Model": "sd1",
        "RNG": "CPU",
        "Version": f"txt2img {__version__}",
    }
    record = json.loads(image.text["txt2img"])
    assert record["model"] == str(models["sd1"].resolve())
    assert (record["device"], record["dtype"], record["scheduler"]) == ("cpu", "fp32", None)
    assert record["versions"]["torch"] == torch.__version__
    assert {"prompt", "negative_prompt", "seed", "steps", "guidance", "width", "height"} <= set(
        record
    )


def test_random_seed_is_printed_and_recorded(cli, tmp_path, models):
    result = cli(PROMPT, "-m", models["sd1"], "--steps", 1, "-o", tmp_path)
    [path] = written(result)
    seed = json.loads(Image.open(path).text["txt2img"])["seed"]
    assert f"seed: {seed}" in result.stderr
    assert path.name == f"00000-{seed}-a-red-fox-at-dawn.png"


def test_stdout_holds_only_paths_and_quiet_silences_stderr(cli, tmp_path, models):
    result = cli(PROMPT, "-m", models["sd1"], "--steps", 1, "-N", 2, "-q", "-o", tmp_path)
    paths = written(result)
    assert len(paths) == 2 and all(p.is_file() and p.parent == tmp_path for p in paths)
    assert result.stderr == ""


def test_existing_image_is_never_overwritten(cli, tmp_path, models):
    args = (PROMPT, "-m", models["sd1"], "--steps", 1, "--seed", 5, "-o", tmp_path)
    [path] = written(cli(*args))
    path.write_bytes(b"the user's own file")
    result = cli(*args)
    assert result.exit_code == ExitCode.OUTPUT
    assert "already exists" in result.stderr and result.stdout == ""
    assert path.read_bytes() == b"the user's own file"
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_interrupted_write_leaves_no_file(cli, tmp_path, models, monkeypatch):
    def interrupted_save(self, fp, *args, **kwargs):
        fp.write(b"\x89PNG half")
        raise KeyboardInterrupt

    monkeypatch.setattr(Image.Image, "save", interrupted_save)
    result = cli(PROMPT, "-m", models["sd1"], "--steps", 1, "--seed", 5, "-o", tmp_path)
    assert result.exit_code == ExitCode.INTERRUPTED
    assert result.stdout == "" and "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_corrupt_weights_exit_3(cli, tmp_path, models):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(models["sd1"], broken)
    weights = next((broken / "unet").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:100])
    result = cli(PROMPT, "-m", broken, "--steps", 1, "-o", tmp_path / "out")
    assert result.exit_code == ExitCode.MODEL, result.stderr
    assert "damaged" in result.stderr and "Traceback" not in result.stderr


def test_unsupported_pipeline_class_exits_3(cli, tmp_path):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
    result = cli(PROMPT, "-m", tmp_path, "-o", tmp_path / "out")
    assert result.exit_code == ExitCode.MODEL
    assert "FluxPipeline" in result.stderr


# Written out here independently of txt2img.model.schedulers, as a diffusers user would.
SCHEDULER_RECIPES = {
    "ddim": ("DDIMScheduler", {}, "DDIM"),
    "pndm": ("PNDMScheduler", {"skip_prk_steps": True}, "PLMS"),
    "euler": ("EulerDiscreteScheduler", {}, "Euler"),
    "euler-a": ("EulerAncestralDiscreteScheduler", {}, "Euler a"),
    "heun": ("HeunDiscreteScheduler", {}, "Heun"),
    "lms": ("LMSDiscreteScheduler", {}, "LMS"),
    "dpm++2m": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": False}, "DPM++ 2M"),
    "unipc": ("UniPCMultistepScheduler", {}, "UniPC"),
    "lcm": ("LCMScheduler", {}, "LCM"),
}


@pytest.mark.parametrize("name", SCHEDULER_RECIPES)
def test_every_scheduler_name_matches_diffusers(cli, tmp_path, models, name):
    import diffusers

    class_name, options, sampler = SCHEDULER_RECIPES[name]
    result = cli(PROMPT, "-m", models["sd1"], "--steps", 3, "--seed", 9, "--scheduler", name,
                 "-o", tmp_path)  # fmt: skip
    [path] = written(result)

    def recipe(config):
        return getattr(diffusers, class_name).from_config(config, **options)

    expected = diffusers_image(models["sd1"], 9, scheduler=recipe, num_inference_steps=3)
    np.testing.assert_array_equal(pixels(path), expected)
    assert json.loads(Image.open(path).text["txt2img"])["scheduler_class"] == class_name
    assert parse_generation_parameters(Image.open(path).text["parameters"])["Sampler"] == sampler


def test_settings_diffusers_refuses_are_a_usage_error(cli, tmp_path, models):
    result = cli(PROMPT, "-m", models["sd1"], "--steps", 60, "--scheduler", "lcm", "-q",
                 "-o", tmp_path)  # fmt: skip
    assert result.exit_code == ExitCode.USAGE
    assert "original_steps" in result.stderr and "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []
