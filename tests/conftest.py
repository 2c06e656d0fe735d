"""Shared fixtures: offline Hugging Face settings, tiny real models, and a CLI runner."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

# huggingface_hub reads these once, at import: set them before anything imports it.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ.pop("TXT2IMG_MODEL", None)
os.environ.pop("TXT2IMG_DEBUG", None)
# One thread per process, in this one and in every txt2img it starts: the tiny models'
# ops gain nothing from threads, and on a busy machine OpenMP threads that spin for a
# core another process holds make the suite many times slower. Read by torch at import.
os.environ["OMP_NUM_THREADS"] = "1"

import pytest
from typer.testing import CliRunner

from txt2img.cli import app

ROOT = Path(__file__).resolve().parent.parent


# The scripts (tiny models, configs, demo data) are plain modules the tests use too.
sys.path.insert(0, str(ROOT / "scripts"))
import make_tiny_model as tiny  # noqa: E402


@pytest.fixture(autouse=True)
def _restored_environment():
    """A run in this process sets variables for the libraries it imports (txt2img's
    runner does so before the imports); they must not leak into later tests' children."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(autouse=True)
def _isolated_hf_home(tmp_path_factory, monkeypatch):
    """The Hugging Face cache and txt2img's hash cache, out of the user's home."""
    monkeypatch.setenv("HF_HOME", str(tmp_path_factory.getbasetemp() / "hf-home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> dict[str, Path]:
    """Each family's tiny model, built once per test session."""
    root = tmp_path_factory.mktemp("models")
    return {family: tiny.build_tiny_model(root / family, family) for family in tiny.FAMILIES}


@pytest.fixture
def cli(tmp_path):
    """Run the CLI in-process; returns click's Result (separate .stdout and .stderr)."""
    runner = CliRunner()

    def invoke(*args: str, env: dict[str, str] | None = None):
        return runner.invoke(app, [str(a) for a in args], env=env)

    return invoke


@pytest.fixture
def nan_model(models, tmp_path) -> Path:
    """The tiny SD 1.x model with a VAE whose every decoded pixel is NaN."""
    import numpy as np
    import torch
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "nan-model"
    shutil.copytree(models["sd1"], broken)
    weights_file = broken / "vae" / "diffusion_pytorch_model.safetensors"
    weights = load_file(weights_file)
    weights["decoder.conv_out.bias"] = torch.full_like(weights["decoder.conv_out.bias"], np.nan)
    save_file(weights, weights_file)
    return broken


@pytest.fixture(scope="module")
def one_torch_thread():
    """For modules that draw with the CLI and with diffusers in this process: the tiny
    models' ops are far too small to gain from threads, and on a busy machine idle-spinning
    OpenMP threads make a module 10x slower. Both sides run alike, so pixels compare."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
