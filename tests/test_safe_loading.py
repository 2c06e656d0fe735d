"""Weights are told apart by their bytes; pickle-based files never run code."""

from __future__ import annotations

import json
import pickle
import struct

import pytest
import torch
from addon_files import write_evil_pickle

from txt2img.errors import ExitCode


def safetensors_bytes() -> bytes:
    header = json.dumps({"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    return struct.pack("<Q", len(header)) + header + b"\x00\x00\x80\x3f"


@pytest.fixture
def no_torch_load(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("torch.load must not be called")

    monkeypatch.setattr(torch, "load", refuse)


def run(cli, tmp_path, model, *extra):
    return cli("a fox", "-m", model, "-q", "-o", tmp_path / "out", *extra)


@pytest.mark.parametrize("name", ["model.ckpt", "model.safetensors", "model.bin"])
def test_pickle_is_refused_without_the_flag(cli, tmp_path, no_torch_load, name):
    path = tmp_path / name
    torch.save({"model.diffusion_model.x": torch.zeros(1)}, path)  # zip of pickles
    result = run(cli, tmp_path, path)
    assert result.exit_code == ExitCode.UNSAFE_CHECKPOINT
    assert "pickle" in result.stderr and "--allow-pickle" in result.stderr
    assert result.stdout == "" and not (tmp_path / "out").exists()


def test_legacy_pickle_is_refused_too(cli, tmp_path, no_torch_load):
    path = tmp_path / "model.pt"
    path.write_bytes(pickle.dumps({"a": 1}, protocol=2))
    assert run(cli, tmp_path, path).exit_code == ExitCode.UNSAFE_CHECKPOINT


def test_unknown_format_is_refused_even_with_the_flag(cli, tmp_path, no_torch_load):
    path = tmp_path / "model.pt"
    path.write_bytes(b"7z\xbc\xaf\x27\x1c" + b"\x00" * 64)
    result = run(cli, tmp_path, path, "--allow-pickle")
    assert result.exit_code == ExitCode.UNSAFE_CHECKPOINT
    assert "neither a safetensors nor a PyTorch" in result.stderr


def test_truncated_safetensors_is_a_model_error(cli, tmp_path, no_torch_load):
    path = tmp_path / "model.safetensors"
    path.write_bytes(safetensors_bytes()[:20])
    result = run(cli, tmp_path, path)
    assert result.exit_code == ExitCode.MODEL and "truncated" in result.stderr


@pytest.mark.parametrize("force_unsafe", [False, True])
def test_malicious_pickle_never_runs_even_when_allowed(cli, tmp_path, monkeypatch, force_unsafe):
    if force_unsafe:  # only applies when a caller passes no weights_only; we always pass True
        monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    canary = tmp_path / "canary"
    path = tmp_path / "model.ckpt"
    write_evil_pickle(path, canary)
    result = run(cli, tmp_path, path, "--allow-pickle")
    assert result.exit_code == ExitCode.UNSAFE_CHECKPOINT, result.stderr
    assert "weights-only" in result.stderr
    assert not canary.exists()
