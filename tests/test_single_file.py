"""Single-file checkpoints in the original (LDM) layout, loaded with no network."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from ldm_export import export_single_file
from PIL import Image

from txt2img.errors import ExitCode
from txt2img.model.load import checkpoint_family
from txt2img.model.source import CONFIGS
from txt2img.model.weights import WeightsFormat


@pytest.fixture(scope="module")
def checkpoints(models, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("checkpoints")
    return {
        family: export_single_file(models[family], folder / f"{family}-model.safetensors")
        for family in ("sd1", "sd2-v", "sdxl")
    }


def pixels(path: str) -> np.ndarray:
    return np.asarray(Image.open(path.strip()))


@pytest.mark.parametrize("family", ["sd1", "sd2-v", "sdxl"])
def test_single_file_equals_the_diffusers_folder(cli, tmp_path, models, checkpoints, family):
    args = ("a red fox", "--steps", 2, "--seed", 3, "-q", "--offline")
    from_file = cli(*args, "-m", checkpoints[family], "--config", models[family],
                    "-o", tmp_path / "file")  # fmt: skip
    from_folder = cli(*args, "-m", models[family], "-o", tmp_path / "folder")
    assert from_file.exit_code == 0, from_file.stderr
    np.testing.assert_array_equal(pixels(from_file.stdout), pixels(from_folder.stdout))
    assert f"Model: {family}-model," in Image.open(from_file.stdout.strip()).text["parameters"]


@pytest.mark.parametrize(
    ("family", "expected"), [("sd1", "sd1"), ("sd2-v", "sd2-v"), ("sdxl", "sdxl")]
)
def test_family_is_told_from_the_tensor_names(checkpoints, family, expected):
    assert checkpoint_family(checkpoints[family], WeightsFormat.safetensors) == expected


def test_sd2_base_checkpoints_get_the_epsilon_config(checkpoints, tmp_path):
    renamed = tmp_path / "v2-1_512-base-ema.safetensors"
    renamed.symlink_to(checkpoints["sd2-v"])
    assert checkpoint_family(renamed, WeightsFormat.safetensors) == "sd2"


def test_without_config_the_built_in_one_is_used(cli, tmp_path, checkpoints, monkeypatch):
    seen = {}

    def fake_from_single_file(cls, path, **kwargs):
        folder = Path(kwargs["config"])  # links, while the call lasts
        seen.update(kwargs, path=path, index=(folder / "model_index.json").resolve(),
                    vocab=(folder / "tokenizer" / "vocab.json").resolve())  # fmt: skip
        raise OSError("stop here")

    monkeypatch.setattr(
        StableDiffusionPipeline, "from_single_file", classmethod(fake_from_single_file)
    )
    result = cli("a fox", "-m", checkpoints["sd1"], "-q", "-o", tmp_path)
    assert result.exit_code == ExitCode.MODEL
    assert seen["index"] == CONFIGS / "sd1" / "model_index.json"
    assert seen["vocab"] == CONFIGS / "clip-vocab" / "vocab.json"  # the one shared copy
    assert seen["local_files_only"] is True


def test_safetensors_under_another_name_still_loads(cli, tmp_path, models, checkpoints):
    renamed = tmp_path / "model.ckpt"  # safetensors bytes, pickle-style name
    renamed.write_bytes(checkpoints["sd1"].read_bytes())
    args = ("a fox", "--steps", 1, "--seed", 1, "-q")
    result = cli(*args, "-m", renamed, "--config", models["sd1"], "-o", tmp_path / "out")
    assert result.exit_code == 0, result.stderr  # no --allow-pickle needed: it is no pickle
    folder = cli(*args, "-m", models["sd1"], "-o", tmp_path / "folder")
    np.testing.assert_array_equal(pixels(result.stdout), pixels(folder.stdout))


def test_pickle_checkpoint_loads_with_the_flag(cli, tmp_path, models, checkpoints):
    from safetensors.torch import load_file

    pickled = tmp_path / "model.ckpt"
    torch.save({"state_dict": load_file(checkpoints["sd1"])}, pickled)
    args = ("a fox", "-m", pickled, "--config", models["sd1"], "--steps", 1, "--seed", 1, "-q")
    refused = cli(*args, "-o", tmp_path / "refused")
    assert refused.exit_code == ExitCode.UNSAFE_CHECKPOINT
    allowed = cli(*args, "--allow-pickle", "-o", tmp_path / "allowed")
    assert allowed.exit_code == 0, allowed.stderr
    reference = cli("a fox", "-m", models["sd1"], "--steps", 1, "--seed", 1, "-q",
                    "-o", tmp_path / "folder")  # fmt: skip
    np.testing.assert_array_equal(pixels(allowed.stdout), pixels(reference.stdout))


@pytest.mark.parametrize(
    ("config", "fragment"),
    [("sd3", "neither sd1, sd2, sd2-v, sdxl nor a folder"), ("./nowhere", "neither")],
)
def test_bad_config_is_a_usage_error(cli, tmp_path, checkpoints, config, fragment):
    result = cli("a fox", "-m", checkpoints["sd1"], "--config", config, "-o", tmp_path)
    assert result.exit_code == ExitCode.USAGE and fragment in result.stderr


def test_config_with_a_folder_model_is_a_usage_error(cli, tmp_path, models):
    result = cli("a fox", "-m", models["sd1"], "--config", "sd1", "-o", tmp_path)
    assert result.exit_code == ExitCode.USAGE and "only applies to single-file" in result.stderr
