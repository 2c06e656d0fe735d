"""Reading an image's settings back (`txt2img info`) and drawing it again (`--from IMAGE`),
model hashes and their cache."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from addon_files import write_diffusers_lora, write_embedding
from diffusers import DiffusionPipeline, DPMSolverMultistepScheduler
from ldm_export import export_single_file
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from txt2img.errors import ExitCode
from txt2img.model import hashes
from txt2img.noise import nv_randn
from txt2img.records.read import parse_infotext, read_image_settings

A1111_TEXT = (
    "a red fox at dawn,\n(golden light:1.2), <lora:foxStyle:0.8>\n"
    "Negative prompt: blurry,\nlowres\n"
    "Steps: 30, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1234567890, "
    "Size: 512x768, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Clip skip: 2, "
    'Emphasis: No norm, Lora hashes: "foxStyle: 0123456789ab, other: ba9876543210", '
    'Prompt note: "a, b: c", Version: v1.10.1'
)


def test_an_a1111_infotext_parses_back_to_its_settings(tmp_path):
    fields = parse_infotext(A1111_TEXT)
    assert fields["Prompt"] == "a red fox at dawn,\n(golden light:1.2), <lora:foxStyle:0.8>"
    assert fields["Negative prompt"] == "blurry,\nlowres"
    assert fields["Prompt note"] == "a, b: c"  # a quoted value
    image = tmp_path / "a1111.png"
    info = PngInfo()
    info.add_text("parameters", A1111_TEXT)
    Image.new("RGB", (8, 8)).save(image, pnginfo=info)
    settings = read_image_settings(image)
    assert settings.source == "a1111"
    assert settings.values == {
        "prompt": fields["Prompt"], "negative_prompt": "blurry,\nlowres", "seed": 1234567890,
        "steps": 30, "guidance": 7.0, "clip_skip": 2, "width": 512, "height": 768,
        "scheduler": "dpm++2m-karras", "emphasis": "no-norm", "rng": "nv",
        "variation_strength": 0.0, "ensd": 0,
    }  # fmt: skip
    assert settings.model == {"name": "v1-5-pruned-emaonly", "hash": "6ce0161689"}
    assert settings.addons == [
        {"kind": "lora", "name": "foxStyle", "hash": "0123456789ab"},
        {"kind": "lora", "name": "other", "hash": "ba9876543210"},
    ]


def test_infotext_pairs_are_exactly_a1111s(tmp_path):
    """The one-pass scanner against A1111's own pattern, on every short line of key,
    value, quote, escape, comma and space characters a seeded generator makes."""
    import random

    from a1111 import RE_PARAM

    from txt2img.records.read import infotext_pairs

    pieces = ["a", "B", "7", "_", " ", "-", "/", ":", ",", '"', "\\", "\t", "é", ".", "k: v", ", "]
    generator = random.Random(5)
    for _ in range(30_000):
        line = "".join(generator.choice(pieces) for _ in range(generator.randint(0, 24)))
        assert infotext_pairs(line) == RE_PARAM.findall(line), line


def test_a_long_line_without_a_colon_is_read_in_one_pass(tmp_path):
    """Hostile review, defect 1: A1111's pattern takes hours on this line (about 60 G
    steps); the scanner reads it at once. Run in a child with a generous deadline, so a
    quadratic reader fails the test instead of hanging the suite."""
    import subprocess
    import sys

    code = (
        "from txt2img.records.read import parse_infotext, MAX_INFOTEXT_CHARS as M\n"
        "fields = parse_infotext('a fox\\n' + 'abc def ' * ((M - 100) // 8))\n"
        "assert fields['Prompt'].startswith('a fox')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_only_a_pngs_header_is_read(tmp_path, monkeypatch):
    """Hostile review, defect 7: reading the settings decoded every pixel (a 0.5 MB PNG of
    13000x13000 took 0.7 GB), and a download cut inside its pixels was refused."""
    from PIL.PngImagePlugin import PngImageFile

    info = PngInfo()
    info.add_text("parameters", A1111_TEXT)
    noise = np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8)
    whole = tmp_path / "whole.png"
    Image.fromarray(noise).save(whole, pnginfo=info)
    cut = tmp_path / "cut.png"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])  # a cut download
    assert read_image_settings(cut).values["seed"] == 1234567890

    def no_pixels(self, *args, **kwargs):
        raise AssertionError("the pixels were decoded")

    monkeypatch.setattr(PngImageFile, "load", no_pixels)
    assert read_image_settings(whole).values["seed"] == 1234567890


def test_jpeg_exif_user_comment_is_read(tmp_path):
    image = Image.new("RGB", (8, 8))
    exif = image.getexif()
    exif.get_ifd(0x8769)[0x9286] = b"UNICODE\0" + A1111_TEXT.encode("utf-16-be")
    path = tmp_path / "a1111.jpg"
    image.save(path, exif=exif)
    assert read_image_settings(path).values["seed"] == 1234567890


# --- the hash cache -----------------------------------------------------------------------


def test_a_file_is_hashed_once_until_it_changes(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    model = tmp_path / "model.safetensors"
    model.write_bytes(os.urandom(3 << 20))
    reads = []
    real_open = hashes.open_regular

    def counting_open(path):
        if Path(path) == model:
            reads.append(path)
        return real_open(path)

    monkeypatch.setattr(hashes, "open_regular", counting_open)
    import hashlib

    expected = hashlib.sha256(model.read_bytes()).hexdigest()
    assert hashes.model_hash(model) == expected[:10] and len(reads) == 1
    assert hashes.model_hash(model) == expected[:10] and len(reads) == 1  # from the cache
    other = tmp_path / "other.ckpt"
    other.write_bytes(b"x")
    hashes.file_sha256(other)
    stat = model.stat()
    os.utime(model, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # touched
    assert hashes.model_hash(model) == expected[:10] and len(reads) == 2
    hashes.flush()
    cached = json.loads(hashes.cache_file().read_text())
    assert set(cached) == {str(model.resolve()), str(other.resolve())}  # both entries kept


def test_one_run_reads_the_cache_once_and_writes_it_once(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    files = []
    for number in range(40):
        files.append(tmp_path / f"m{number}.safetensors")
        files[-1].write_bytes(os.urandom(64))
    reads, writes = [], []
    real_read, real_replace = hashes._read, os.replace
    monkeypatch.setattr(hashes, "_read", lambda path: reads.append(path) or real_read(path))
    monkeypatch.setattr(hashes.os, "replace", lambda *a: writes.append(a) or real_replace(*a))
    first = [hashes.model_hash(path) for path in files]
    assert len(reads) == 1 and writes == []  # one read, nothing written per entry
    hashes.flush()
    assert len(writes) == 1 and len(reads) == 2  # merged with the file as it is now
    assert [hashes.model_hash(path) for path in files] == first and len(writes) == 1


def test_the_cache_drops_entries_of_files_that_are_gone_and_is_bounded(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    kept, gone = tmp_path / "kept.safetensors", tmp_path / "gone.safetensors"
    kept.write_bytes(b"kept")
    gone.write_bytes(b"gone")
    hashes.model_hash(kept), hashes.model_hash(gone)
    gone.unlink()
    hashes.flush()
    assert set(json.loads(hashes.cache_file().read_text())) == {str(kept.resolve())}
    monkeypatch.setattr(hashes, "MAX_CACHE_BYTES", 10)  # a cache past its bound is not read
    hashes._CACHE.path = None
    assert hashes.cached_sha256(kept) is None


SPECIAL_FILES = """
import os, sys
from pathlib import Path
from txt2img.model import hashes
from txt2img.noise import nv_randn
from txt2img.model.folders import folder_index
from txt2img.records.redraw import find_model
from txt2img.records.read import ImageSettings
root = Path(sys.argv[1])
index = folder_index([root / "models"], "--models-dir")
model = {"name": "x", "hash": "0123456789"}
image = ImageSettings(root / "a.png", "a1111", "", {}, {}, model=model)
try:
    find_model(image, (root / "models",))
except Exception as exc:
    print(type(exc).__name__)
print(sorted(index), hashes.model_hash(root / "models" / "real.safetensors"))
hashes.flush()
"""


def test_fifos_and_device_links_are_passed_over_not_read(tmp_path):
    """A link to /dev/urandom in --models-dir, a FIFO beside it, and FIFOs in place of
    the hash cache and its lock: nothing blocks, and the real file is still found."""
    import hashlib
    import subprocess
    import sys

    models = tmp_path / "models"
    models.mkdir()
    (models / "real.safetensors").write_bytes(b"weights")
    (models / "random.safetensors").symlink_to("/dev/urandom")
    os.mkfifo(models / "fifo.safetensors")
    cache = tmp_path / "cache" / "txt2img"
    cache.mkdir(parents=True)
    os.mkfifo(cache / "hashes.json")
    os.mkfifo(cache / "hashes.lock")
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    done = subprocess.run(
        [sys.executable, "-c", SPECIAL_FILES, str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=120,  # a hang guard, not a timing
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    digest = hashlib.sha256(b"weights").hexdigest()[:10]
    assert done.stdout.splitlines() == ["ModelError", f"['real'] {digest}"]


# --- txt2img info -------------------------------------------------------------------------


def run_ok(cli, *args) -> list[str]:
    result = cli(*args)
    assert result.exit_code == 0, result.stderr
    return result.stdout.splitlines()


@pytest.fixture(scope="module")
def addon_dir(models, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("redraw-addons")
    write_diffusers_lora(models["sd1"], folder / "loras" / "style-a.safetensors", seed=1)
    write_embedding(folder / "myword.safetensors", dim=32, vectors=2, seed=6)
    return folder


@pytest.fixture(scope="module")
def drawn(models, addon_dir, tmp_path_factory) -> Path:
    """An SD 1.x image with a LoRA tag, an embedding, Clip skip, a scheduler, weights."""
    from typer.testing import CliRunner

    from txt2img.cli import app

    out = tmp_path_factory.mktemp("drawn")
    result = CliRunner().invoke(app, [
        "a (red:1.2) fox, myword <lora:style-a:0.7>", "-m", str(models["sd1"]), "--seed", "9",
        "--steps", "2", "--scheduler", "euler-a", "--clip-skip", "2", "-n", "blurry", "-q",
        "--lora-dir", str(addon_dir / "loras"),
        "--embedding", str(addon_dir / "myword.safetensors"), "-o", str(out),
    ])  # fmt: skip
    assert result.exit_code == 0, result.stderr
    return Path(result.stdout.strip())


def test_info_json_gives_back_every_recorded_setting(cli, drawn):
    [line] = run_ok(cli, "info", "--json", drawn)
    info = json.loads(line)
    record = json.loads(Image.open(drawn).text["txt2img"])
    assert info["source"] == "txt2img" and info["record"] == record
    assert info["settings"] == {key: record[key] for key in info["settings"]}
    assert set(info["settings"]) >= {
        "prompt",
        "negative_prompt",
        "seed",
        "steps",
        "guidance",
        "width",
        "height",
        "scheduler",
        "clip_skip",
        "emphasis",
    }
    assert info["parameters"] == Image.open(drawn).text["parameters"]
    assert [a["kind"] for a in info["addons"]] == ["lora", "embedding"]


def test_info_reads_many_images_and_says_which_have_no_settings(cli, drawn, tmp_path):
    bare = tmp_path / "bare.png"
    Image.new("RGB", (8, 8)).save(bare)
    result = cli("info", bare, drawn)
    assert result.exit_code == ExitCode.USAGE
    assert result.stdout.startswith(f"{drawn}\n  a (red:1.2) fox")
    assert result.stderr.strip() == (
        f"txt2img: error: {bare} records no generation settings (it has no txt2img or A1111 "
        "'parameters' metadata; image sites often strip it)"
    )


@pytest.mark.parametrize(
    ("family", "extra"),
    [("sd2-v", ("--scheduler", "dpm++2m-karras")), ("sdxl", ("-n", "blurry")), ("sd1", ())],
)
def test_every_family_redraws_from_its_record(cli, tmp_path, models, family, extra):
    [first] = run_ok(cli, "a (red:1.1) fox", "-m", models[family], "--seed", 3, "-s", 2, "-q",
                     "-o", tmp_path / "a", *extra)  # fmt: skip
    [line] = run_ok(cli, "info", "--json", first)
    record = json.loads(Image.open(first).text["txt2img"])
    assert json.loads(line)["record"] == record
    # The model folder is used because it lies in a folder the user gives.
    [again] = run_ok(cli, "--from", first, "--models-dir", models[family].parent, "-q", "-o",
                     tmp_path / "b")  # fmt: skip
    np.testing.assert_array_equal(np.asarray(Image.open(again)), np.asarray(Image.open(first)))
    assert json.loads(Image.open(again).text["txt2img"]) == record


def test_from_draws_the_same_pixels_and_overrides_change_only_themselves(
    cli, drawn, tmp_path, models
):
    [again] = run_ok(cli, "--from", drawn, "-m", models["sd1"], "-q", "-o", tmp_path / "again")
    np.testing.assert_array_equal(np.asarray(Image.open(again)), np.asarray(Image.open(drawn)))
    first, second = (json.loads(Image.open(p).text["txt2img"]) for p in (drawn, again))
    assert first == second
    [seeded] = run_ok(cli, "--from", drawn, "-m", models["sd1"], "--seed", "10", "-q", "-o",
                      tmp_path / "seeded")  # fmt: skip
    third = json.loads(Image.open(seeded).text["txt2img"])
    assert {key for key in first if first[key] != third[key]} == {"seed"}
    assert not np.array_equal(np.asarray(Image.open(seeded)), np.asarray(Image.open(drawn)))


# --- an A1111 image, its model found by hash ----------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(models, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("models-dir")
    return export_single_file(models["sd1"], folder / "sub" / "tiny-sd1.safetensors")


def a1111_png(path: Path, text: str) -> Path:
    info = PngInfo()
    info.add_text("parameters", text)
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    return path


def test_an_a1111_image_is_redrawn_with_its_model_found_by_hash(
    cli, tmp_path, models, checkpoint, monkeypatch
):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    digest = hashes.model_hash(checkpoint)
    image = a1111_png(tmp_path / "a1111.png", (
        "a red fox\nNegative prompt: blurry\nSteps: 2, Sampler: DPM++ 2M, Schedule type: "
        f"Karras, CFG scale: 6, Seed: 5, Size: 64x64, Model hash: {digest}, Model: renamed"
    ))  # fmt: skip
    models_dir = checkpoint.parent.parent
    [redrawn] = run_ok(cli, "--from", image, "--models-dir", models_dir, "--config", models["sd1"],
                       "-q", "-o", tmp_path / "redrawn")  # fmt: skip
    # No RNG key: A1111's GPU noise, which txt2img draws as an NVIDIA card does (--rng nv).
    [direct] = run_ok(cli, "a red fox", "-n", "blurry", "--steps", 2, "--scheduler",
                      "dpm++2m-karras", "-g", 6, "--seed", 5, "-W", 64, "-H", 64, "-m", checkpoint,
                      "--config", models["sd1"], "--rng", "nv", "-q",
                      "-o", tmp_path / "direct")  # fmt: skip
    np.testing.assert_array_equal(np.asarray(Image.open(redrawn)), np.asarray(Image.open(direct)))
    pipe = DiffusionPipeline.from_pretrained(
        models["sd1"], local_files_only=True
    )  # the same weights
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(
        pipe.scheduler.config, algorithm_type="dpmsolver++", solver_order=2, use_karras_sigmas=True
    )
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator("cpu").manual_seed(5)
    latents = torch.from_numpy(nv_randn(5, (4, 8, 8)))[None]
    reference = pipe("a red fox", negative_prompt="blurry", num_inference_steps=2, guidance_scale=6,
                     width=64, height=64, generator=generator, latents=latents)  # fmt: skip
    np.testing.assert_array_equal(np.asarray(Image.open(redrawn)), np.asarray(reference.images[0]))
    params = parse_infotext(Image.open(redrawn).text["parameters"])
    assert params["Model hash"] == digest  # written for single files, as A1111 does


def test_a_model_that_is_not_found_is_named(cli, tmp_path, checkpoint):
    image = a1111_png(tmp_path / "a1111.png", (
        "a red fox\nSteps: 2, Sampler: Euler, CFG scale: 6, Seed: 5, Size: 64x64, "
        "Model hash: 0123456789, Model: dreamy-v3"
    ))  # fmt: skip
    result = cli("--from", image, "--models-dir", checkpoint.parent, "-o", tmp_path / "out")
    assert result.exit_code == ExitCode.MODEL
    assert "drawn with dreamy-v3 (Model hash 0123456789), which is not found" in result.stderr


def test_a_prompt_named_like_a_subcommand_is_drawn_after_dashes(cli, tmp_path):
    [path] = run_ok(
        cli, "-m", "demo", "--seed", 1, "--steps", 1, "-q", "-o", tmp_path, "--", "info"
    )
    assert Path(path).name == "00000-1-info.png"
    assert "txt2img info IMAGE" in cli("--help").stdout


def test_a_sampler_txt2img_lacks_is_shown_and_refused_unless_overridden(
    cli, tmp_path, models, checkpoint
):
    image = a1111_png(tmp_path / "sde.png", (
        "a red fox\nSteps: 2, Sampler: DPM++ SDE, Schedule type: Karras, CFG scale: 6, "
        "Seed: 12345678901234567, Size: 64x64, Model: tiny-sd1"
    ))  # fmt: skip
    [line] = run_ok(cli, "info", "--json", image)
    assert json.loads(line)["fields"]["Sampler"] == "DPM++ SDE"
    assert json.loads(line)["settings"]["seed"] == 12345678901234567  # exactly, not via float
    args = ("--from", image, "--models-dir", checkpoint.parent, "--config", models["sd1"], "-q")
    refused = cli(*args, "-o", tmp_path / "a")
    assert refused.exit_code == ExitCode.USAGE and "--scheduler" in refused.stderr
    [path] = run_ok(cli, *args, "--scheduler", "euler", "-o", tmp_path / "b")  # found by name
    assert json.loads(Image.open(path).text["txt2img"])["scheduler"] == "euler"


@pytest.mark.parametrize(
    "record",
    [{"prompt": 5}, {"prompt": "a fox", "seed": "abc"}, {"prompt": "a fox", "seed": 1.5},
     {"prompt": "a fox", "seed": True}, {"prompt": "a fox", "negative_prompt": None}],
)  # fmt: skip
def test_a_record_with_values_of_the_wrong_type_is_a_usage_error(cli, tmp_path, record):
    info = PngInfo()
    info.add_text("txt2img", json.dumps({**record, "model": "demo"}))
    image = tmp_path / "odd.png"
    Image.new("RGB", (8, 8)).save(image, pnginfo=info)
    result = cli("--from", image, "-o", tmp_path / "out")
    assert result.exit_code == ExitCode.USAGE, result.stderr
    assert "is not a" in result.stderr and "Traceback" not in result.stderr


def test_the_model_variable_does_not_override_the_image(cli, tmp_path, drawn, monkeypatch, models):
    monkeypatch.setenv("TXT2IMG_MODEL", "no/such-model")
    monkeypatch.setenv("TXT2IMG_MODELS_DIR", str(models["sd1"].parent))
    [again] = run_ok(cli, "--from", drawn, "-q", "-o", tmp_path)
    assert np.array_equal(np.asarray(Image.open(again)), np.asarray(Image.open(drawn)))


def test_a_corrupt_hash_cache_is_hashed_around(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    model = tmp_path / "m.safetensors"
    model.write_bytes(b"weights")
    hashes.cache_file().parent.mkdir(parents=True)
    hashes.cache_file().write_text(json.dumps({str(model.resolve()): "x"}))
    import hashlib

    assert hashes.model_hash(model) == hashlib.sha256(b"weights").hexdigest()[:10]


def test_an_a1111_lora_tag_is_found_by_its_hash_when_the_file_is_renamed(
    cli, tmp_path, models, checkpoint, addon_dir
):
    from txt2img.model.hashes import lora_hash

    digest = lora_hash(addon_dir / "loras" / "style-a.safetensors")
    image = a1111_png(tmp_path / "civitai.png", (
        "a red fox <lora:foxStyle:0.5>\nSteps: 2, Sampler: Euler, CFG scale: 6, Seed: 5, "
        f'Size: 64x64, Model: tiny-sd1, Lora hashes: "foxStyle: {digest}"'
    ))  # fmt: skip
    common = ("--models-dir", checkpoint.parent, "--config", models["sd1"], "-q",
              "--lora-dir", addon_dir / "loras")  # fmt: skip
    [redrawn] = run_ok(cli, "--from", image, *common, "-o", tmp_path / "a")
    [direct] = run_ok(cli, "--from", image, *common, "-o", tmp_path / "b",
                      "a red fox <lora:style-a:0.5>")  # fmt: skip
    np.testing.assert_array_equal(np.asarray(Image.open(redrawn)), np.asarray(Image.open(direct)))
    missing = cli("--from", image, *common[:-2], "--lora-dir", tmp_path, "-o", tmp_path / "c")
    assert missing.exit_code == ExitCode.MODEL
    assert f"<lora:foxStyle> names no LoRA in --lora-dir {tmp_path} (nor one with its hash" in (
        missing.stderr
    )


# --- an image is untrusted input ----------------------------------------------------------


def forged(drawn: Path, path: Path, change) -> Path:
    """`drawn` with its txt2img record changed by `change(record)`, as anyone can."""
    record = json.loads(Image.open(drawn).text["txt2img"])
    change(record)
    info = PngInfo()
    info.add_text("txt2img", json.dumps(record))
    Image.open(drawn).save(path, pnginfo=info)
    return path


def addon(record: dict, kind: str) -> dict:
    return next(a for a in record["addons"] if a["kind"] == kind)


def test_from_uses_the_files_an_image_names_only_as_the_user_allows(
    cli, tmp_path, drawn, models, addon_dir
):
    """The LoRA and embedding files the record names match its hashes: used, and said.
    The model folder does not (no hash): used only inside --models-dir."""
    result = cli("--from", drawn, "--models-dir", models["sd1"].parent, "-q", "-o", tmp_path)
    assert result.exit_code == 0, result.stderr
    np.testing.assert_array_equal(
        np.asarray(Image.open(result.stdout.strip())), np.asarray(Image.open(drawn))
    )
    said = result.stderr
    assert f"--from: model {models['sd1']} (it lies in {models['sd1'].parent})" in said
    lora = addon_dir / "loras" / "style-a.safetensors"
    assert f"the LoRA of <lora:style-a>: {lora} (its hash matches the image's record)" in said
    assert f"the embedding myword: {addon_dir / 'myword.safetensors'} (its hash matches" in said
    refused = cli("--from", drawn, "-o", tmp_path / "no")
    assert refused.exit_code == ExitCode.MODEL
    assert f"drawn with {models['sd1']}, which is not used" in refused.stderr
    assert f"pass -m {models['sd1']} if you trust it" in refused.stderr


def test_a_forged_record_cannot_make_txt2img_open_a_file_or_fetch_a_hub_id(
    cli, tmp_path, drawn, models, addon_dir
):
    import hashlib

    secret = tmp_path / "secret.ckpt"
    secret.write_bytes(b"\x80\x02}q\x00.")  # a pickle the image wants loaded as a VAE

    def vae(record):
        record["addons"].append({"kind": "vae", "name": "secret", "hash": "0123456789",
                                 "location": str(secret)})  # fmt: skip

    image = forged(drawn, tmp_path / "vae.png", vae)
    common = ("-m", models["sd1"], "--allow-pickle", "-o", tmp_path / "out")
    result = cli("--from", image, *common)
    assert result.exit_code == ExitCode.MODEL
    assert f"the VAE secret ({secret}), which is not used" in result.stderr
    assert "pass --vae with the file" in result.stderr

    notes = tmp_path / "notes.txt"  # not a weights file: never read, whatever its hash
    notes.write_text("private")

    def vae_notes(record):
        record["addons"].append({"kind": "vae", "name": "notes", "location": str(notes),
                                 "hash": hashlib.sha256(b"private").hexdigest()[:10]})  # fmt: skip

    result = cli("--from", forged(drawn, tmp_path / "notes.png", vae_notes), *common)
    assert result.exit_code == ExitCode.MODEL and "the VAE notes" in result.stderr
    assert hashes.cached_sha256(notes) is None  # never hashed

    def hub(record):
        record["model"] = "someone/else-model"

    result = cli("--from", forged(drawn, tmp_path / "hub.png", hub), "-o", tmp_path / "out")
    assert result.exit_code == ExitCode.MODEL
    assert "nothing an image names is downloaded" in result.stderr
    assert "pass -m someone/else-model if you trust it" in result.stderr

    def lora_elsewhere(record):  # the tag's file replaced by another with the same name
        addon(record, "lora")["location"] = str(tmp_path / "style-a.safetensors")

    (tmp_path / "style-a.safetensors").write_bytes((addon_dir / "myword.safetensors").read_bytes())
    image = forged(drawn, tmp_path / "lora.png", lora_elsewhere)
    result = cli("--from", image, "-m", models["sd1"], "-o", tmp_path / "out")
    assert result.exit_code == ExitCode.USAGE
    assert "<lora:style-a>, but no --lora-dir was given" in result.stderr


def test_a_hub_id_an_image_names_is_used_from_the_cache_and_the_run_is_offline(
    tmp_path, drawn, capsys
):
    from huggingface_hub import constants

    from txt2img.records.redraw import values_from_image

    snapshot = Path(constants.HF_HUB_CACHE) / "models--someone--cached" / "snapshots" / "abc"
    snapshot.mkdir(parents=True, exist_ok=True)

    def hub(record):
        record["model"] = "someone/cached"
        record["addons"] = []
        record["prompt"] = "a red fox"

    image = forged(drawn, tmp_path / "hub.png", hub)
    values = {key: None for key in ("model", "models_dir", "lora_dir", "embeddings_dir",
                                    "vae", "lora", "embedding", "prompts_file")}  # fmt: skip
    values["offline"] = False
    _, drawn_with, _ = values_from_image(image, None, values, given=set())
    assert drawn_with["model"] == "someone/cached" and drawn_with["offline"] is True
    assert "a Hub id already in the Hugging Face cache" in capsys.readouterr().err


def test_an_image_with_what_txt2img_does_not_draw_is_refused_unless_told(
    cli, tmp_path, models, checkpoint
):
    image = a1111_png(tmp_path / "hires.png", (
        "a red fox\nSteps: 2, Sampler: Euler, CFG scale: 6, Seed: 5, Size: 64x64, "
        "Model: tiny-sd1, Denoising strength: 0.5, Hires upscale: 2, Hires upscaler: Latent, "
        "Tiling: False, Seed resize from: -1x-1, ControlNet 0: \"Module: canny\""
    ))  # fmt: skip
    common = ("--from", image, "--models-dir", checkpoint.parent, "--config", models["sd1"])
    refused = cli(*common, "-o", tmp_path / "a")
    assert refused.exit_code == ExitCode.USAGE and not (tmp_path / "a").exists()
    assert ("drawn with Denoising strength, Hires upscale, Hires upscaler, ControlNet 0, "
            "which txt2img does not draw") in refused.stderr  # fmt: skip
    assert "--ignore-unsupported" in refused.stderr
    anyway = cli(*common, "--ignore-unsupported", "-q", "-o", tmp_path / "b")
    assert anyway.exit_code == 0, anyway.stderr
    assert "warning: " in anyway.stderr and "drawn without its Denoising strength" in (
        anyway.stderr
    )
    [line] = run_ok(cli, "info", "--json", image)
    assert json.loads(line)["fields"]["Hires upscale"] == "2"  # info shows every key
