"""Argument and model-location errors: one line on stderr, the documented exit code,
nothing on stdout, no file written, and no model loaded."""

from __future__ import annotations

import pytest

from txt2img import __version__
from txt2img.errors import ExitCode


def assert_one_line_error(result, code: int, *fragments: str) -> None:
    assert result.exit_code == code, result.stderr
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("txt2img: error: ")
    for fragment in fragments:
        assert fragment in lines[0]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["   "], ["prompt is empty"]),
        (["fox", "--width", "500"], ["--width must be a multiple of 8", "496 or 504"]),
        (["fox", "--height", "0"], ["--height must be between 8 and 8192"]),
        (["fox", "--steps", "0"], ["--steps must be between 1 and 500"]),
        (["fox", "--guidance", "nan"], ["--guidance must be a finite number"]),
        (["fox", "--guidance", "-1"], ["--guidance must be a finite number"]),
        (["fox", "--num-images", "0"], ["--num-images must be between 1 and 100000"]),
        (["fox", "--seed", "-3"], ["--seed must be between 0"]),
        (["fox", "--scheduler", "dpm3000"], ["'dpm3000' is not one of", "dpm++2m-karras"]),
        (["fox", "--device", "tpu"], ["'tpu' is not one of"]),
        (["fox", "--dtype", "fp8"], ["'fp8' is not one of"]),
        (["fox", "--steps", "many"], ["--steps"]),
        (["fox", "--no-such-flag"], ["No such option"]),
        ([], ["no prompt given"]),
        (["fox", "-f", "p.txt"], ["either a PROMPT or --prompts-file"]),
        (["fox", "--resume", "--overwrite"], ["contradict"]),
        (["fox", "--resume"], ["--resume needs the --seed"]),
        (["fox", "--batch-size", "0"], ["--batch-size must be at least 1"]),
        (["-f", "missing-prompts.txt"], ["missing-prompts.txt"]),
    ],
)
def test_bad_arguments_exit_2_before_anything_happens(cli, tmp_path, args, fragments):
    out = tmp_path / "out"
    result = cli(*args, "-o", out, "-m", tmp_path / "no-model")
    assert_one_line_error(result, ExitCode.USAGE, *fragments)
    assert not out.exists()


def test_output_dir_that_is_a_file_exits_7(cli, tmp_path):
    target = tmp_path / "taken"
    target.write_text("keep me")
    result = cli("fox", "-o", target, "-m", tmp_path)
    assert_one_line_error(result, ExitCode.OUTPUT, "is not a folder")
    assert target.read_text() == "keep me"


@pytest.mark.parametrize(
    ("model", "fragment"),
    [
        ("./does-not-exist", "neither an existing folder or file nor a Hub id"),
        ("a/b/c", "neither an existing folder or file nor a Hub id"),
        ("weights.safetensors", "does not exist"),
        ("nobody-here/not-a-cached-model", "not in the Hugging Face cache"),
    ],
)
def test_unusable_model_exits_3(cli, tmp_path, model, fragment):
    result = cli("fox", "-m", model, "-o", tmp_path / "out", "--seed", "1", "-q")
    assert_one_line_error(result, ExitCode.MODEL, fragment)
    assert list((tmp_path / "out").glob("*")) == []


def test_folder_without_model_index_exits_3(cli, tmp_path):
    result = cli("fox", "-m", tmp_path, "-o", tmp_path / "out")
    assert_one_line_error(result, ExitCode.MODEL, "no model_index.json")


def test_model_from_environment_variable(cli, tmp_path):
    result = cli("fox", "-o", tmp_path / "out", env={"TXT2IMG_MODEL": str(tmp_path / "elsewhere")})
    assert_one_line_error(result, ExitCode.MODEL, "elsewhere")


def test_missing_device_is_a_usage_error(cli, tmp_path, models):
    result = cli("fox", "-m", models["sd1"], "--device", "cuda", "-o", tmp_path / "out", "-q")
    assert_one_line_error(result, ExitCode.USAGE, "--device cuda")


def test_version(cli):
    result = cli("--version")
    assert result.exit_code == 0
    assert result.stdout.strip() == f"txt2img {__version__}"


def test_help_lists_every_public_option(cli):
    result = cli("--help")
    assert result.exit_code == 0
    for flag in (
        "--model", "--negative-prompt", "--steps", "--guidance", "--width", "--height",
        "--seed", "--num-images", "--scheduler", "--output-dir", "--device", "--dtype",
        "--quiet",
    ):  # fmt: skip
        assert flag in result.stdout
