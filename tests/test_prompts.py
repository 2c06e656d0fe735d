"""Reading prompts files: line numbers, per-line options, and one-line errors naming the line."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest

from txt2img.errors import ExitCode, UsageError
from txt2img.options import MAX_SIDE, MAX_STEPS
from txt2img.prompt.files import PromptLine, read_prompt_lines

BOM = b"\xef\xbb\xbf"


def write(tmp_path, content: bytes | str, name: str = "prompts.txt") -> str:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return str(path)


def read_error(source: str, stdin=None) -> UsageError:
    with pytest.raises(UsageError) as caught:
        read_prompt_lines(source, stdin)
    assert caught.value.exit_code == ExitCode.USAGE == 2
    return caught.value


class TtyStdin(io.BytesIO):
    def isatty(self) -> bool:
        return True

    def read(self, *args):
        raise AssertionError("a terminal must not be read")


def test_text_file_with_bom_crlf_comments_and_blank_lines(tmp_path):
    source = write(
        tmp_path,
        BOM + b"a red fox\r\n\r\n# a comment\r\n   # an indented comment\r\n \t \r\n"
        b"  a lighthouse at night  \r\nthe last line, with no newline",
    )
    assert read_prompt_lines(source) == [
        PromptLine(1, "a red fox", {}),
        PromptLine(6, "a lighthouse at night", {}),
        PromptLine(7, "the last line, with no newline", {}),
    ]


def test_standard_input():
    stdin = io.BytesIO("un renard roux\n\n# skip\nüber den Wolken --seed 3\n".encode())
    assert read_prompt_lines("-", stdin) == [
        PromptLine(1, "un renard roux", {}),
        PromptLine(4, "über den Wolken", {"seed": 3}),
    ]


def test_standard_input_that_is_a_terminal_is_refused_without_reading():
    error = read_error("-", TtyStdin(b"a fox\n"))
    assert "it is a terminal" in error.message
    assert "txt2img -f -" in error.hint


@pytest.mark.parametrize(
    ("line", "prompt", "overrides"),
    [
        (
            'a red fox at dawn --seed 7 --steps 40 --negative-prompt "blurry, low quality"',
            "a red fox at dawn",
            {"seed": 7, "steps": 40, "negative_prompt": "blurry, low quality"},
        ),
        (
            "a fox --steps=25 --guidance=7 --negative-prompt='dark, grainy' --scheduler=euler-a",
            "a fox",
            {
                "steps": 25,
                "guidance": 7.0,
                "negative_prompt": "dark, grainy",
                "scheduler": "euler-a",
            },
        ),
        (
            "a fox -n ugly -s 20 -g 6.5 -W 512 -H 768 -N 2 --seed 0",
            "a fox",
            {
                "negative_prompt": "ugly",
                "steps": 20,
                "guidance": 6.5,
                "width": 512,
                "height": 768,
                "num_images": 2,
                "seed": 0,
            },
        ),
        # The prompt is the raw text before the first option: quotes, dashes, negative
        # numbers and double spaces stay as written.
        (
            """it's a "fox"  -- at -3 degrees, a t-shirt --- and -x --width 64""",
            """it's a "fox"  -- at -3 degrees, a t-shirt --- and -x""",
            {"width": 64},
        ),
        ('{"prompt"} is no JSON object', '{"prompt"} is no JSON object', {}),
        ("{red|blue} car -s40 -W64", "{red|blue} car", {"steps": 40, "width": 64}),
        ("a fox --negative-prompt=", "a fox", {"negative_prompt": ""}),
    ],
)
def test_text_line_options(tmp_path, line, prompt, overrides):
    [read] = read_prompt_lines(write(tmp_path, f"# first\n{line}\n"))
    assert read == PromptLine(2, prompt, overrides)
    assert [type(value) for value in read.overrides.values()] == [
        type(value) for value in overrides.values()
    ]


@pytest.mark.parametrize(
    ("line", "fragments"),
    [
        ("a fox --colour red", ["--colour is not a per-prompt option"]),
        ('{"prompt": "json in a text file"}', ["is a JSON object", ".jsonl"]),
        ("a plan -b4", ["-b is not a per-prompt option"]),
        ("a fox --stpes 30", ["--stpes is not", "did you mean --steps?"]),
        ("a fox --model other/model", ["--model is not a per-prompt option"]),
        ("a fox -m other/model", ["-m is not a per-prompt option"]),
        ("a fox --steps many", ["--steps expects an integer, got 'many'"]),
        ("a fox -W 51.2", ["-W expects an integer, got '51.2'"]),
        ("a fox --guidance=lots", ["--guidance expects a number, got 'lots'"]),
        ("a fox --steps 20 -s 30", ["--steps/-s is given twice"]),
        ("a fox --seed 1 --seed=1", ["--seed is given twice"]),
        ('a fox -n "blurry, dark', ["no closing quotation"]),
        ("a fox --steps", ["--steps needs a value"]),
        ("a fox --steps --seed 3", ["--steps needs a value"]),
        ("a fox -n blurry dark", ["unexpected 'dark' after the options"]),
        ("--seed 3", ["the prompt is empty"]),
        ("a fox --width 100", ["--width must be a multiple of 8, got 100", "try 96 or 104"]),
        ("a fox -H 9000", [f"--height must be between 8 and {MAX_SIDE}, got 9000"]),
        ("a fox --steps 0", [f"--steps must be between 1 and {MAX_STEPS}, got 0"]),
        ("a fox --seed -3", ["--seed must be between 0"]),
        ("a fox -g nan", ["--guidance must be a finite number"]),
        ("a fox -N 0", ["--num-images must be between 1 and 100000"]),
        ("a fox --scheduler dpm3000", ["unknown --scheduler 'dpm3000'", "dpm++2m-karras"]),
    ],
)
def test_bad_text_line_names_file_and_line(tmp_path, line, fragments):
    source = write(tmp_path, f"a good line --seed 1\n# a comment\n{line}\nnever read --steps x\n")
    error = read_error(source)
    assert error.message.startswith(f"{source}:3: ")
    for fragment in fragments:
        assert fragment in error.one_line()


def test_error_on_standard_input_is_named_stdin():
    error = read_error("-", io.BytesIO(b"a fox\r\n\r\na fox --steps many\r\n"))
    assert error.message == "<stdin>:3: --steps expects an integer, got 'many'"


def test_bad_utf8_names_its_line(tmp_path):
    source = write(tmp_path, "fine\n# ok\nbad \xff byte\nfine too\n".encode("latin-1"))
    error = read_error(source)
    assert error.message.startswith(f"{source}:3: not valid UTF-8")


@pytest.mark.parametrize(
    "content",
    [b"", b"\n\n", BOM, BOM + b"\r\n", b"# only\r\n   # comments\n\t\n"],
    ids=["empty", "blank-lines", "bom-only", "bom-crlf", "comments"],
)
@pytest.mark.parametrize("name", ["prompts.txt", "prompts.jsonl"])
def test_file_without_prompts(tmp_path, content, name):
    source = write(tmp_path, content, name)
    assert read_error(source).message == f"{source} holds no prompts"


def test_empty_standard_input():
    assert read_error("-", io.BytesIO(b"")).message == "<stdin> holds no prompts"


def test_missing_file_and_folder_name_the_path(tmp_path):
    missing = str(tmp_path / "nope.txt")
    assert read_error(missing).message == f"--prompts-file {missing} does not exist"
    assert read_error(str(tmp_path)).message == f"--prompts-file {tmp_path} is a folder"


def test_jsonl_lines(tmp_path):
    source = write(
        tmp_path,
        BOM + b'{"prompt": "a red fox"}\r\n\r\n# comment\r\n'
        b'{"prompt": "a fox", "negative_prompt": "blurry, dark", "seed": 7, "steps": 40,'
        b' "guidance": 7, "width": 512, "height": 768, "num_images": 2, "scheduler": "ddim"}\n'
        b'  {"guidance": 6.5, "prompt": "  kept as written  "}',
        "Prompts.JSONL",
    )
    lines = read_prompt_lines(source)
    assert lines == [
        PromptLine(1, "a red fox", {}),
        PromptLine(
            4,
            "a fox",
            {
                "negative_prompt": "blurry, dark",
                "seed": 7,
                "steps": 40,
                "guidance": 7.0,
                "width": 512,
                "height": 768,
                "num_images": 2,
                "scheduler": "ddim",
            },
        ),
        PromptLine(5, "  kept as written  ", {"guidance": 6.5}),
    ]
    assert type(lines[1].overrides["guidance"]) is float


@pytest.mark.parametrize(
    ("line", "fragments"),
    [
        ('{"prompt": "x", "colour": "red"}', ["unknown key 'colour'"]),
        ('{"prompt": "x", "negative-prompt": "a"}', ["did you mean 'negative_prompt'?"]),
        ('{"prompt": "x", "steps": "40"}', ["'steps' must be an integer, got \"40\""]),
        ('{"prompt": "x", "steps": 40.5}', ["'steps' must be an integer, got 40.5"]),
        ('{"prompt": "x", "seed": true}', ["'seed' must be an integer, got true"]),
        ('{"prompt": "x", "guidance": false}', ["'guidance' must be a number, got false"]),
        ('{"prompt": "x", "width": null}', ["'width' must be an integer, got null"]),
        ('{"prompt": "x", "scheduler": 1}', ["'scheduler' must be a string, got 1"]),
        ('{"prompt": "x", "steps": 30', ["not valid JSON"]),
        ("a plain prompt", ["not valid JSON"]),
        ('["x"]', ['expected a JSON object, got ["x"]']),
        ('{"seed": 1}', ['missing "prompt"']),
        ('{"prompt": ["x"]}', ["'prompt' must be a string"]),
        ('{"prompt": "  "}', ["the prompt is empty"]),
        ('{"prompt": "x", "seed": 1, "seed": 2}', ["key 'seed' is given twice"]),
        ('{"prompt": "x", "width": 100}', ["--width must be a multiple of 8", "try 96 or 104"]),
        ('{"prompt": "x", "guidance": NaN}', ["--guidance must be a finite number"]),
        ('{"prompt": "x", "scheduler": "dpm3000"}', ["unknown --scheduler 'dpm3000'"]),
    ],
)
def test_bad_jsonl_line_names_file_and_line(tmp_path, line, fragments):
    source = write(tmp_path, f'{{"prompt": "ok"}}\n\n{line}\n', "prompts.jsonl")
    error = read_error(source)
    assert error.message.startswith(f"{source}:3: ")
    for fragment in fragments:
        assert fragment in error.one_line()


def test_import_stays_light():
    code = "import sys, txt2img.prompt.files; print(*sorted(sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    loaded = set(result.stdout.split())
    assert "txt2img.prompt.files" in loaded
    assert not loaded & {"torch", "diffusers", "transformers", "PIL", "typer"}
