"""The one sampler table: every scheduler txt2img offers is written as A1111's Sampler and
Schedule type, read back by A1111's own reader (tests/a1111.py, its defaults filled in),
and found again by `--from` as the same scheduler, with the same pixels. The A1111 API's
side of the round trip is in test_server.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from a1111 import read_infotext
from PIL import Image
from PIL.PngImagePlugin import PngInfo
from typer.testing import CliRunner

from txt2img.cli import app
from txt2img.errors import UsageError
from txt2img.model.schedulers import (
    SCHEDULERS,
    a1111_sampler,
    schedule_of,
    scheduler_for,
)
from txt2img.records.read import read_image_settings
from txt2img.records.write import infotext

# Each scheduler by name, and None: the model's own.
EVERY = [*SCHEDULERS, None]


def own_scheduler(class_name: str, config: dict) -> str | None:
    """The table's scheduler a model's own scheduler is (class, options and schedule)."""
    for name, spec in SCHEDULERS.items():
        if (spec.class_name == class_name and spec.schedule == schedule_of(config)
                and all(config.get(k) == v for k, v in spec.options.items())):  # fmt: skip
            return name
    return None


def a1111_reads(parameters: str) -> str:
    """txt2img's scheduler for the Sampler and Schedule type A1111's reader takes from
    an infotext."""
    fields = read_infotext(parameters)
    return scheduler_for(fields["Sampler"], fields["Schedule type"])


@pytest.mark.parametrize("name", SCHEDULERS)
def test_every_scheduler_is_written_as_a1111_reads_it_back(name):
    spec = SCHEDULERS[name]
    sampler, schedule = a1111_sampler(name, spec.class_name, spec.options)  # as built
    text = f"a fox\nSteps: 2, Sampler: {sampler}, Schedule type: {schedule}, CFG scale: 7"
    assert a1111_reads(text) == name


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ("Sampler: DPM++ 2M", "dpm++2m-karras"),  # Automatic: Karras, since A1111 1.9
        ("Sampler: DPM++ 2M, Version: v1.8.0", "dpm++2m"),  # before 1.9: uniform
        ("Sampler: DPM++ 2M, Version: f0.0.17v1.8.0rc-latest-276-g29be1da7", "dpm++2m"),  # Forge
        ("Sampler: Euler a Automatic", "euler-a"),
        ("Sampler: DPM++ 2M, Version: v1.10.1", "dpm++2m-karras"),
        ("Sampler: DPM++ 2M, Schedule type: Uniform", "dpm++2m"),
        ("Sampler: DPM++ 2M Karras", "dpm++2m-karras"),  # A1111 before 1.9
        ("Sampler: Euler a", "euler-a"),
        ("Sampler: Euler, Schedule type: Automatic", "euler"),
        ("Sampler: PLMS", "pndm"),
        ("Sampler: DDIM", "ddim"),
        ("Sampler: UniPC, Schedule type: Automatic", "unipc"),
        ("Sampler: DPM++ 2M, Schedule type: Karras", "dpm++2m-karras"),
        ("Sampler: k_euler_a", "euler-a"),  # A1111's API aliases, in an image too
        ("Sampler: dpmpp_2m, Schedule type: Karras", "dpm++2m-karras"),
        ("Sampler: euler_a", "euler-a"),  # stable-diffusion.cpp
        ("Sampler: dpm++2m karras", "dpm++2m-karras"),
        ("Sampler: euler discrete", "euler"),
    ],
)
def test_from_reads_samplers_with_a1111s_defaults(tmp_path, fields, expected):
    image = a1111_png(tmp_path / "a.png", f"a fox\nSteps: 2, {fields}, CFG scale: 7, Seed: 1")
    assert read_image_settings(image).values["scheduler"] == expected


@pytest.mark.parametrize(
    ("sampler", "schedule"),
    [("DPM++ SDE", None), ("Euler", "Exponential"), ("DDIM", "Karras"), ("Nope", None)],
)
def test_a_sampler_txt2img_lacks_is_refused_and_names_the_option(sampler, schedule):
    with pytest.raises(UsageError) as caught:
        scheduler_for(sampler, schedule)
    assert "--scheduler" in caught.value.hint
    assert caught.value.message.endswith(
        f"{sampler!r}" + (f" with schedule {schedule!r}" if schedule else "")
        + ", which txt2img does not have"
    )  # fmt: skip


def test_a1111s_missing_fields_take_a1111s_defaults_and_gpu_noise_is_said(tmp_path, capsys):
    from txt2img.records.redraw import values_from_image

    image = a1111_png(tmp_path / "a.png", "a fox\nSteps: 2, Sampler: Euler, CFG scale: 7, Seed: 1")
    settings = read_image_settings(image)
    assert (settings.values["clip_skip"], settings.values["emphasis"]) == (1, "original")
    assert settings.values["rng"] == "nv"  # A1111's GPU noise, as an NVIDIA card draws it
    assert settings.notes and "GPU noise" in settings.notes[0]
    values = {"clip_skip": 2, "emphasis": "ignore", "prompts_file": None, "model": None,
              "rng": "cpu"}  # fmt: skip
    _, drawn, _ = values_from_image(image, None, values, given=set(), remote=True)
    assert (drawn["clip_skip"], drawn["emphasis"], drawn["rng"]) == (1, "original", "nv")
    assert "an image drawn on another GPU comes out different" in capsys.readouterr().err
    cpu = a1111_png(tmp_path / "b.png", "a fox\nSteps: 2, Sampler: Euler, Seed: 1, RNG: CPU")
    assert read_image_settings(cpu).notes == []
    odd = a1111_png(tmp_path / "c.png", "a fox\nSteps: 2, Sampler: Euler, Emphasis: Loud, Seed: 1")
    assert "emphasis" in read_image_settings(odd).problems  # refused unless --emphasis is given


@pytest.mark.parametrize(
    ("name", "class_name", "config", "expected"),
    [
        (None, "EulerDiscreteScheduler", {"use_karras_sigmas": True}, ("Euler", "Karras")),
        (None, "EulerDiscreteScheduler", {}, ("Euler", "Uniform")),
        ("euler", "EulerDiscreteScheduler", {"use_karras_sigmas": True}, ("Euler", "Karras")),
        (None, "PNDMScheduler", {"skip_prk_steps": False}, ("PNDM", "Uniform")),  # not PLMS
        (None, "PNDMScheduler", {"skip_prk_steps": True}, ("PLMS", "Uniform")),
    ],
)
def test_the_schedule_written_is_the_one_the_config_draws_with(name, class_name, config, expected):
    """A model's own Euler with Karras sigmas is written Karras (and then refused by
    --from, which has no Karras Euler, rather than drawn as Uniform)."""
    assert a1111_sampler(name, class_name, config) == expected
    if expected == ("Euler", "Karras"):
        with pytest.raises(UsageError):
            scheduler_for(*expected)


def test_a_model_scheduler_outside_the_table_is_named_by_its_class():
    sde = {"algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True}
    assert own_scheduler("DPMSolverMultistepScheduler", sde) is None
    assert a1111_sampler(None, "DPMSolverMultistepScheduler", sde) == ("DPM++ 2M SDE", "Karras")
    assert a1111_sampler(None, "KDPM2DiscreteScheduler", {}) == ("KDPM2Discrete", "Uniform")


def a1111_png(path: Path, text: str, pixels: Image.Image | None = None) -> Path:
    """A PNG with only A1111's `parameters` (no txt2img record)."""
    info = PngInfo()
    info.add_text("parameters", text)
    (pixels or Image.new("RGB", (8, 8))).save(path, pnginfo=info)
    return path


def draw(*args) -> Path:
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.stderr
    return Path(result.stdout.strip())


@pytest.fixture(scope="module")
def drawn_with_each(models, tmp_path_factory) -> dict[tuple[str, str | None], Path]:
    """An image drawn with each scheduler (and the model's own), on the tiny SD 1.x model
    and on the demo model."""
    out = tmp_path_factory.mktemp("each-scheduler")
    images = {}
    for model in (str(models["sd1"]), "demo"):
        for k, name in enumerate(EVERY):
            chosen = ("--scheduler", name) if name else ()
            images[model, name] = draw("a red circle", "-m", model, "--seed", 4, "--steps", 3,
                                       "-W", 64, "-H", 64, *chosen, "-q",
                                       "-o", out / f"{Path(model).name}-{k}")  # fmt: skip
    return images


@pytest.mark.parametrize("model", ["sd1", "demo"])
@pytest.mark.parametrize("name", EVERY)
def test_every_scheduler_is_redrawn_from_its_infotext_alone(
    drawn_with_each, models, tmp_path, model, name
):
    """The txt2img record is dropped: `--from` reads A1111's fields only, and finds the
    scheduler A1111's reader finds."""
    model = str(models[model]) if model == "sd1" else model
    first = drawn_with_each[model, name]
    parameters = Image.open(first).text["parameters"]
    expected = name or own_scheduler(*own_of(first))
    assert expected is not None  # the tiny models' and the demo model's own are in the table
    assert a1111_reads(parameters) == expected
    bare = a1111_png(tmp_path / "bare.png", parameters)
    again = draw("--from", bare, "-m", model, "-q", "-o", tmp_path / "again")
    np.testing.assert_array_equal(np.asarray(Image.open(again)), np.asarray(Image.open(first)))


def own_of(path: Path) -> tuple[str, dict]:
    """The class and config of the scheduler an image was drawn with, from its record."""
    record = json.loads(Image.open(path).text["txt2img"])
    config = Path(record["model"]) / "scheduler" / "scheduler_config.json"
    return record["scheduler_class"], json.loads(config.read_text())


def test_the_writer_always_names_the_schedule(drawn_with_each):
    for path in drawn_with_each.values():
        text = Image.open(path).text["parameters"]
        assert ", Schedule type: " in text and ", RNG: CPU" in text


def test_the_infotext_writer_and_the_reader_agree_on_defaults():
    record = {
        "prompt": "a fox", "negative_prompt": "", "seed": 1, "steps": 2, "guidance": 7.0,
        "width": 64, "height": 64, "scheduler": None, "clip_skip": 1, "emphasis": "original",
        "sampler": "DPM++ 2M", "schedule_type": "Uniform", "model_hash": None,
        "model_name": "demo_model", "addons": [], "pad_conds": False, "rng": "cpu",
        "variation_seed": 5, "variation_strength": 0.0, "ensd": 0,
    }  # fmt: skip
    fields = read_infotext(infotext(record))
    assert (fields["Sampler"], fields["Schedule type"]) == ("DPM++ 2M", "Uniform")
    assert (fields["Clip skip"], fields["RNG"], fields["Emphasis"]) == ("1", "CPU", "Original")
