"""The demo model shipped in the package draws what the prompt says (colours, shape, place,
size) with no download, through the same code path as any other model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent


# The geometry measures of scripts/eval_demo_model.py (100% on rendered pictures).
from demo_data import measure  # noqa: E402  (scripts/ is on sys.path: see conftest.py)


@pytest.mark.parametrize(
    ("prompt", "colour", "background"),
    [
        ("a red square on a white background", "red", "white"),
        ("a blue circle on a yellow background", "blue", "yellow"),
        ("a green triangle on a black background", "green", "black"),
        ("a large orange circle on a purple background", "orange", "purple"),
    ],
)
def test_demo_model_draws_the_asked_colours(cli, tmp_path, prompt, colour, background):
    result = cli(prompt, "-m", "demo", "--seed", 1, "-N", 4, "-q", "--json", "-o", tmp_path)
    assert result.exit_code == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    for record in records:
        pixels = np.asarray(Image.open(record["path"]).convert("RGB"))
        assert pixels.shape == (32, 32, 3)  # its native size, from its own config
        found = measure(pixels)
        assert (found["colour"], found["background"]) == (colour, background), record["path"]
    assert {r["model_name"] for r in records} == {"demo_model"}


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        (
            "a large magenta triangle in the top left on a white background",
            {"shape": "triangle", "position": "top left", "size": "large"},
        ),
        (
            "a small cyan circle in the bottom right on a black background",
            {"shape": "circle", "position": "bottom right", "size": "small"},
        ),
        (
            "a large yellow triangle in the bottom left on a blue background",
            {"shape": "triangle", "position": "bottom left", "size": "large"},
        ),
    ],
)
def test_demo_model_draws_the_asked_shape_place_and_size(cli, tmp_path, prompt, expected):
    result = cli(prompt, "-m", "demo", "--seed", 1, "-N", 4, "-q", "--json", "-o", tmp_path)
    assert result.exit_code == 0, result.stderr
    for record in map(json.loads, result.stdout.splitlines()):
        found = measure(np.asarray(Image.open(record["path"]).convert("RGB")))
        assert {key: found[key] for key in expected} == expected, record["path"]
