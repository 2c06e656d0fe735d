"""--save-steps: a strip of the clean-image estimates, from noise to the final picture."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def frames(strip_path: Path, width: int) -> list[np.ndarray]:
    sheet = np.asarray(Image.open(strip_path).convert("RGB")).astype(int)
    return [sheet[:, i : i + width] for i in range(0, sheet.shape[1], width)]


@pytest.mark.parametrize(
    ("family", "scheduler", "expected_frames"),
    [
        ("sd1", "euler", 1 + 3),  # noise, steps 2 and 4, step 6 (the last)
        ("sd1", "pndm", 1 + 4),  # PLMS takes one extra timestep: 7 in all
        ("sd2-v", "ddim", 1 + 3),  # v-prediction
        ("sdxl", "dpm++2m", 1 + 3),  # x0 from the noise schedule
    ],
)
def test_strip_goes_from_noise_to_the_image(cli, tmp_path, models, family, scheduler,
                                            expected_frames):  # fmt: skip
    result = cli("a red fox", "-m", models[family], "--steps", 6, "--seed", 2, "--save-steps", 2,
                 "--scheduler", scheduler, "-q", "--json", "-o", tmp_path)  # fmt: skip
    assert result.exit_code == 0, result.stderr
    [record] = [json.loads(line) for line in result.stdout.splitlines()]
    image = np.asarray(Image.open(record["path"]).convert("RGB")).astype(int)
    strip = Path(record["path"].removesuffix(".png") + "-steps.png")
    parts = frames(strip, image.shape[1])
    assert len(parts) == expected_frames and parts[0].shape == image.shape
    start, end = np.abs(parts[0] - image).mean(), np.abs(parts[-1] - image).mean()
    assert end < start / 4  # the strip ends at (about) the picture and starts far from it
    if scheduler == "euler":  # its last step lands on sigma 0: the last x0 is the result
        assert np.abs(parts[-1] - image).max() <= 2


def test_strip_names_are_checked_like_images(cli, tmp_path, models):
    (tmp_path / "00000-2-a-fox-steps.png").write_bytes(b"mine")
    result = cli("a fox", "-m", models["sd1"], "--steps", 2, "--seed", 2, "--save-steps", 1,
                 "-q", "-o", tmp_path)  # fmt: skip
    assert result.exit_code == 7 and "00000-2-a-fox-steps.png" in result.stderr
    assert (tmp_path / "00000-2-a-fox-steps.png").read_bytes() == b"mine"
