"""The command line as a spec: what `Settings` each command line builds, seen at the seam
between the CLI and the run (no model is loaded), and the README's option table against
the option table in the code (`options.OPTIONS`, `options.SERVE_OPTIONS`)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from txt2img import run as run_module
from txt2img.options import BY_KEY, OPTIONS, SERVE_OPTIONS
from txt2img.settings import Existing, Settings

README = Path(__file__).resolve().parent.parent / "README.md"


@pytest.fixture
def settings_of(cli, monkeypatch):
    """The Settings a command line hands to the run (which is not run)."""
    seen: list[Settings] = []
    monkeypatch.setattr(run_module, "run", seen.append)

    def build(*args: str, env: dict[str, str] | None = None) -> Settings:
        result = cli(*args, env=env)
        assert result.exit_code == 0, result.stderr
        assert len(seen) == 1
        return seen.pop()

    return build


def test_a_plain_command_line_builds_the_default_settings(settings_of, tmp_path):
    settings = settings_of("a red fox", "--seed", 7, "-o", tmp_path)
    assert [(line.prompt, line.overrides) for line in settings.prompts] == [("a red fox", {})]
    assert settings.image["seed"] == 7 and not settings.seed_is_random
    assert settings.image["steps"] is None and settings.image["scheduler"] is None  # the model's
    assert settings.image["clip_skip"] == 1 and settings.image["emphasis"] == "original"
    assert settings.batch_size == 1 and settings.existing is Existing.refuse
    assert settings.server is None and settings.output_dir == tmp_path


def test_options_land_in_their_settings(settings_of, tmp_path):
    settings = settings_of(
        "a fox", "-m", "demo", "--steps", 12, "-g", 3.5, "-W", 64, "-H", 96, "-N", 3, "-b", 2,
        "--scheduler", "euler-a", "--clip-skip", 2, "--resume", "--seed", 1, "--keep-going",
        "--json", "--save-steps", 4, "--low-vram", "-o", tmp_path,
    )  # fmt: skip
    image = settings.image
    assert (image["steps"], image["guidance"], image["width"], image["height"]) == (12, 3.5, 64, 96)
    assert (image["num_images"], image["scheduler"], image["clip_skip"]) == (3, "euler-a", 2)
    assert settings.model == "demo" and settings.batch_size == 2 and settings.keep_going
    assert settings.existing is Existing.skip and settings.json_lines and settings.save_steps == 4
    assert settings.load.memory.cpu_offload and settings.load.memory.vae_tiling


def test_a_server_run_leaves_loading_to_the_server(settings_of, tmp_path):
    settings = settings_of("a fox", "--seed", 1, "-o", tmp_path, "--server", "http://127.0.0.1:9",
                           env={"TXT2IMG_LORA_DIR": str(tmp_path)})  # fmt: skip
    assert settings.server == "http://127.0.0.1:9"
    assert settings.model is None  # the server's current model
    assert settings.lora_dirs == ()  # the local folder variables are not read
    here = settings_of("a fox", "--seed", 1, "-o", tmp_path, "--server", "",
                       env={"TXT2IMG_SERVER": "http://127.0.0.1:9"})  # fmt: skip
    assert here.server is None and here.model == BY_KEY["model"].default  # drawn here


def readme_table_flags() -> set[str]:
    """The flags the README's option table (after the Usage block) documents."""
    text = README.read_text()
    table = text[text.index("| option | meaning |") :].split("\n\n", 1)[0]
    first_cells = [row.split(" | ")[0] for row in table.splitlines()[2:]]
    return {flag for cell in first_cells for flag in re.findall(r"(--?[A-Za-z][\w-]*)", cell)}


def test_the_readme_option_table_is_the_option_table():
    documented = readme_table_flags()
    for option in OPTIONS:
        spellings = {*option.flags, *([option.off_flag] if option.off_flag else [])}
        assert spellings & documented, f"{option.flags[0]} is not in the README's option table"
    known = {flag for o in OPTIONS for flag in (*o.flags, o.off_flag) if flag}
    assert documented <= known, documented - known


def test_the_readme_names_every_serve_option():
    text = README.read_text()
    for option in SERVE_OPTIONS:
        assert option.flags[0] in text, f"txt2img serve {option.flags[0]} is not in the README"
