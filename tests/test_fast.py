"""--fast and --compile: which speed-ups apply where, that they are recorded, and that the
pictures stay what the default path draws."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from demo_data import measure
from diffusers import DiffusionPipeline
from PIL import Image

from txt2img.model import fast
from txt2img.settings import Dtype, LoadOptions

PROMPTS = [
    "a red square on a white background",
    "a large blue circle in the top left on a yellow background",
    "a small green triangle in the bottom right on a black background",
    "a large orange circle on a purple background",
]


@pytest.mark.parametrize(
    ("device", "options", "bf16_instructions", "loras", "expected"),
    [
        ("cpu", {"fast": True}, True, False, ("bf16", "channels_last")),
        ("cpu", {"fast": True}, False, False, ("channels_last",)),
        ("cpu", {"fast": True, "dtype": Dtype.fp32}, True, False, ("channels_last",)),
        ("cuda", {"fast": True}, True, False, ("channels_last", "fused_qkv")),
        ("cuda", {"fast": True}, True, True, ("channels_last",)),
        (
            "cuda",
            {"fast": True, "compile": True},
            True,
            False,
            ("channels_last", "fused_qkv", "compile"),
        ),
        ("mps", {"fast": True}, True, False, ()),
        ("cpu", {"compile": True}, True, False, ("compile",)),
        ("cpu", {}, True, False, ()),
    ],
)
def test_speedups_follow_the_device_and_the_settings(
    monkeypatch, device, options, bf16_instructions, loras, expected
):
    monkeypatch.setattr(fast, "cpu_has_fast_bf16", lambda: bf16_instructions)
    assert fast.speedups_for(LoadOptions(**options), torch.device(device), loras) == expected


def draw(cli, folder: Path, *options: str) -> list[dict]:
    prompts = folder.with_suffix(".txt")
    prompts.write_text("\n".join(PROMPTS) + "\n")
    result = cli("-f", prompts, "-m", "demo", "--seed", 5, "--json", "-q", "-o", folder, *options)
    assert result.exit_code == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_fast_pictures_match_the_default_path(cli, tmp_path, monkeypatch):
    monkeypatch.setattr(fast, "cpu_has_fast_bf16", lambda: True)
    default = draw(cli, tmp_path / "default")
    quick = draw(cli, tmp_path / "fast", "--fast")
    for plain, fast_one in zip(default, quick, strict=True):
        a = np.asarray(Image.open(plain["path"]).convert("RGB")).astype(int)
        b = np.asarray(Image.open(fast_one["path"]).convert("RGB")).astype(int)
        assert np.abs(a - b).mean() < 4  # 8-bit levels: bf16 rounding, not another picture
        # Colours and place read back the same; a borderline shape may not (bf16 rounding
        # can tip a square's corners), as docs/BENCHMARKS.md's fidelity table shows.
        robust = ("colour", "background", "position")
        found_a, found_b = measure(a.astype(np.uint8)), measure(b.astype(np.uint8))
        assert [found_a[k] for k in robust] == [found_b[k] for k in robust]
        chunk = json.loads(Image.open(fast_one["path"]).text["txt2img"])
        assert (chunk["speedups"], chunk["dtype"]) == (["bf16", "channels_last"], "bf16")
        assert json.loads(Image.open(plain["path"]).text["txt2img"])["speedups"] == []


def test_fused_qkv_and_channels_last_keep_the_pixels(models):
    def image(parts: tuple[str, ...]) -> np.ndarray:
        pipe = DiffusionPipeline.from_pretrained(models["sd1"])
        pipe.set_progress_bar_config(disable=True)
        fast.apply_fast_path(pipe, parts)
        generator = torch.Generator("cpu").manual_seed(3)
        return pipe("a fox", num_inference_steps=2, generator=generator, output_type="np").images

    plain = image(())
    tuned = image(("channels_last", "fused_qkv"))
    np.testing.assert_allclose(tuned, plain, atol=1e-4)


def test_compile_uses_a_lasting_cache(cli, tmp_path, models, monkeypatch):
    compiled = []  # (module, Inductor's cache folder when it was compiled)

    def fake_compile(self, **kwargs):
        compiled.append((type(self).__name__, os.environ.get("TORCHINDUCTOR_CACHE_DIR")))

    monkeypatch.setattr(torch.nn.Module, "compile", fake_compile)
    # setenv first, so that the variable txt2img sets is removed again after the test
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "unset")
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    result = cli("a fox", "-m", models["sd1"], "--steps", 1, "--seed", 1, "--compile",
                 "--json", "-q", "-o", tmp_path / "out")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    cache = str(tmp_path / "cache" / "txt2img" / "torch-compile")
    assert compiled == [("UNet2DConditionModel", cache), ("Decoder", cache)]
    assert json.loads(result.stdout)["speedups"] == ["compile"]
