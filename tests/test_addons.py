"""Add-ons on tiny real models: LoRAs (diffusers and kohya formats, stacked, scaled), textual
inversion embeddings (SD 1.x and SDXL) and replacement VAEs (folder and single file).

Every image is compared, pixel for pixel, with what diffusers' own loaders give from the same
files; the metadata is read back with A1111's parser, and the hashes are computed here."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from a1111 import parse_generation_parameters
from addon_files import (
    lora_layers,
    text_encoder_dims,
    write_diffusers_lora,
    write_embedding,
    write_evil_pickle,
    write_kohya_lora,
    write_sdxl_embedding,
    write_vae,
    write_vae_file,
)
from diffusers import AutoencoderKL, DiffusionPipeline
from PIL import Image
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from txt2img.cli import app
from txt2img.errors import ExitCode

PROMPT = "a red fox at dawn"
SEED = 11
STEPS = 2
GUIDANCE = 7.5  # the CLI's default for non-Turbo models (diffusers' SDXL default is 5)
EMBEDDING_PROMPT = "a photo of myword at dawn"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --- the add-on files, built once for this module ------------------------------------------


@pytest.fixture(scope="module")
def files(models, tmp_path_factory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("addons")
    sd1, sdxl = models["sd1"], models["sdxl"]
    dims = text_encoder_dims(sdxl)
    lora_a = write_diffusers_lora(sd1, root / "style-a.safetensors", seed=1)
    torch.save(load_file(lora_a), root / "style-a.pt")  # the same LoRA as a pickle
    (root / "style-a-folder").mkdir()  # a diffusers training output folder
    shutil.copy(lora_a, root / "style-a-folder" / "pytorch_lora_weights.safetensors")
    embedding = write_embedding(root / "myword.safetensors", dim=32, vectors=2, seed=6)
    a1111_pt = {  # what A1111's textual inversion training saves
        "string_to_token": {"*": 265},
        "string_to_param": {"*": load_file(embedding)["emb_params"]},
        "name": "myword",
        "step": 1000,
        "sd_checkpoint": "cc6cb27103",
        "sd_checkpoint_name": "v1-5-pruned-emaonly",
    }
    (root / "pt").mkdir()
    torch.save(a1111_pt, root / "pt" / "myword.pt")
    vae = write_vae(sd1, root / "my-vae", seed=5)
    vae_file = write_vae_file(vae, root / "my-vae-ft-mse.safetensors")
    shutil.copy(vae_file, root / "my-vae-ft-mse.ckpt")  # safetensors bytes, pickle-style name
    return SimpleNamespace(
        lora_a=lora_a,
        lora_b=write_diffusers_lora(sd1, root / "style-b.safetensors", seed=2),
        kohya_a=write_kohya_lora(sd1, root / "style-a-kohya.safetensors", seed=1),
        # The usual kohya file: alpha below the rank (here 1 at rank 4: scale 1/4).
        kohya_alpha=write_kohya_lora(sd1, root / "style-c-kohya.safetensors", seed=9, alpha=1),
        pickled_a=root / "style-a.pt",
        lora_folder=root / "style-a-folder",
        # lora_alpha 8 at rank 4 (scale 2), recorded as adapter metadata in the header.
        alpha_lora=write_diffusers_lora(sd1, root / "alpha.safetensors", seed=4, alpha=8),
        xl_lora=write_diffusers_lora(sdxl, root / "xl-style.safetensors", seed=3),
        xl_kohya=write_kohya_lora(sdxl, root / "xl-style-kohya.safetensors", seed=3),
        embedding=embedding,
        pickled_embedding=root / "pt" / "myword.pt",
        other_embedding=write_embedding(root / "other.safetensors", dim=32, vectors=1, seed=7),
        xl_embedding=write_sdxl_embedding(
            root / "xlword.safetensors", dims["text_encoder"], dims["text_encoder_2"], seed=8
        ),
        vae=vae,
        vae_file=vae_file,
        vae_renamed=root / "my-vae-ft-mse.ckpt",
    )


# --- helpers ------------------------------------------------------------------------------


def diffusers_image(model: Path, prompt: str = PROMPT, setup=None, **load) -> np.ndarray:
    """What a hand-written diffusers script draws, after `setup(pipe)` loads the add-ons."""
    pipe = DiffusionPipeline.from_pretrained(model, local_files_only=True, **load)
    if setup is not None:
        setup(pipe)
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator("cpu").manual_seed(SEED)
    image = pipe(prompt, num_inference_steps=STEPS, guidance_scale=GUIDANCE, generator=generator)
    return np.asarray(image.images[0])


def with_loras(*loras: tuple[Path, float]):
    def setup(pipe) -> None:
        names = [f"adapter{i}" for i in range(len(loras))]
        for name, (path, _) in zip(names, loras, strict=True):
            pipe.load_lora_weights(str(path), adapter_name=name)
        pipe.set_adapters(names, adapter_weights=[scale for _, scale in loras])

    return setup


def draw(cli, out: Path, model: Path, *extra, prompt: str = PROMPT) -> Path:
    result = cli(prompt, "-m", model, "--steps", STEPS, "--seed", SEED, "-q", "-o", out, *extra)
    assert result.exit_code == 0, result.stderr
    [line] = result.stdout.splitlines()
    return Path(line)


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def infotext(path: Path) -> dict[str, str]:
    return parse_generation_parameters(Image.open(path).text["parameters"])


def addons(path: Path) -> list[dict]:
    return json.loads(Image.open(path).text["txt2img"])["addons"]


def autov3(path: Path) -> str:
    """A1111/Civitai's LoRA hash: sha256 of what follows the safetensors header, 12 chars."""
    data = Path(path).read_bytes()
    header_length = int.from_bytes(data[:8], "little")
    return hashlib.sha256(data[8 + header_length :]).hexdigest()[:12]


def sha256(path: Path, length: int) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:length]


def assert_one_line_error(result, code: int, out: Path) -> str:
    assert result.exit_code == code, result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("txt2img: error: "), result.stderr
    assert not out.exists() or not any(out.iterdir())
    return lines[0]


def lora_weights(pipe) -> dict[str, object]:
    """Every LoRA tensor PEFT holds in the pipeline, and each adapter's rank and alpha."""
    found: dict[str, object] = {}
    for name in ("unet", "text_encoder", "text_encoder_2"):
        model = getattr(pipe, name, None)
        if model is None:
            continue
        found |= {f"{name}.{k}": v for k, v in model.state_dict().items() if "lora_" in k}
        found |= {
            f"{name}:{adapter}": (float(c.r), float(c.lora_alpha), c.rank_pattern, c.alpha_pattern)
            for adapter, c in model.peft_config.items()
        }
    return found


@pytest.fixture(scope="module")
def plain(models) -> dict[str, np.ndarray]:
    """The images without any add-on, for "the add-on changed something" checks."""
    return {family: diffusers_image(models[family]) for family in ("sd1", "sdxl")}


@pytest.fixture(scope="module")
def with_lora_a(models, files) -> np.ndarray:
    """diffusers' image with LoRA style-a at scale 1."""
    return diffusers_image(models["sd1"], setup=with_loras((files.lora_a, 1.0)))


@pytest.fixture(scope="module")
def with_myword(models, files) -> np.ndarray:
    """diffusers' image of EMBEDDING_PROMPT with the embedding myword loaded."""

    def load(pipe) -> None:
        pipe.load_textual_inversion(str(files.embedding), token="myword")

    return diffusers_image(models["sd1"], EMBEDDING_PROMPT, setup=load)


@pytest.fixture(scope="module")
def with_vae(models, files) -> np.ndarray:
    """diffusers' image with the replacement VAE folder passed to from_pretrained."""
    return diffusers_image(models["sd1"], vae=AutoencoderKL.from_pretrained(files.vae))


@pytest.fixture(scope="module")
def stacked(models, files, tmp_path_factory) -> Path:
    """The CLI's image with two LoRAs, 0.7 and 0.3 (drawn once for the pixel and the
    metadata tests)."""
    runner = CliRunner()

    def invoke(*args):
        return runner.invoke(app, [str(a) for a in args])

    return draw(invoke, tmp_path_factory.mktemp("stacked"), models["sd1"],
                "--lora", f"{files.lora_a}:0.7", "--lora", f"{files.lora_b}:0.3")  # fmt: skip


# --- the builders make what diffusers reads ------------------------------------------------


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_kohya_file_maps_to_the_same_adapter_weights(models, files, family):
    """diffusers' own converter turns the kohya names into exactly the diffusers-format
    adapter: same modules, same tensors, same rank and alpha (scale 1)."""
    diffusers_file, kohya_file = {
        "sd1": (files.lora_a, files.kohya_a), "sdxl": (files.xl_lora, files.xl_kohya)
    }[family]  # fmt: skip
    loaded = []
    for path in (diffusers_file, kohya_file):
        pipe = DiffusionPipeline.from_pretrained(models[family], local_files_only=True)
        pipe.load_lora_weights(str(path), adapter_name="a")
        loaded.append(lora_weights(pipe))
    reference, converted = loaded
    modules = sum(len(layers) for layers in lora_layers(models[family], seed=0).values()) // 2
    assert sum(".lora_B." in key for key in reference) == modules  # every module has its LoRA
    assert set(reference) == set(converted)
    for key, value in reference.items():
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(converted[key], value, rtol=0, atol=0, msg=key)
        else:
            assert converted[key] == value == (4.0, 4.0, {}, {}), key
    kohya_keys = set(load_file(kohya_file))
    prefixes = ("lora_unet_input_blocks_", "lora_te1_", "lora_te2_") if family == "sdxl" else (
        "lora_unet_down_blocks_", "lora_te_text_model_encoder_layers_")  # fmt: skip
    assert all(any(k.startswith(p) for k in kohya_keys) for p in prefixes)


def test_lora_b_is_not_zero(files):
    state = load_file(files.lora_a)
    ups = [v for k, v in state.items() if ".lora_B." in k]
    assert ups and all(v.abs().mean() > 0.1 for v in ups)  # PEFT's default is all zeros


def test_vae_file_has_the_standalone_layout_and_the_folder_weights(models, files):
    keys = set(load_file(files.vae_file))
    assert {k.split(".")[0] for k in keys} == {"encoder", "decoder", "quant_conv",
                                               "post_quant_conv"}  # fmt: skip
    from_file = AutoencoderKL.from_single_file(
        str(files.vae_file), config=str(models["sd1"]), subfolder="vae", local_files_only=True
    ).state_dict()
    from_folder = AutoencoderKL.from_pretrained(files.vae).state_dict()
    own = AutoencoderKL.from_pretrained(models["sd1"], subfolder="vae").state_dict()
    assert from_file.keys() == from_folder.keys()
    assert all(torch.equal(from_file[k], from_folder[k]) for k in from_folder)
    assert not torch.equal(own["decoder.conv_out.weight"], from_folder["decoder.conv_out.weight"])


# --- LoRAs --------------------------------------------------------------------------------


def test_lora_equals_diffusers_at_full_and_half_scale(
    cli, tmp_path, models, files, plain, with_lora_a
):
    model = models["sd1"]
    full = draw(cli, tmp_path / "full", model, "--lora", files.lora_a)
    half = draw(cli, tmp_path / "half", model, "--lora", f"{files.lora_a}:0.5")
    expected_full = with_lora_a
    expected_half = diffusers_image(model, setup=with_loras((files.lora_a, 0.5)))
    np.testing.assert_array_equal(pixels(full), expected_full)
    np.testing.assert_array_equal(pixels(half), expected_half)
    assert not np.array_equal(expected_full, plain["sd1"])
    assert not np.array_equal(expected_half, expected_full)


def test_two_loras_stack_with_their_own_scales(models, files, stacked):
    model, path = models["sd1"], stacked
    expected = diffusers_image(model, setup=with_loras((files.lora_a, 0.7), (files.lora_b, 0.3)))
    np.testing.assert_array_equal(pixels(path), expected)
    only_a = diffusers_image(model, setup=with_loras((files.lora_a, 0.7)))
    assert not np.array_equal(expected, only_a)  # the second LoRA counts


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_kohya_lora_equals_the_diffusers_format_lora(cli, tmp_path, models, files, family):
    kohya, same = {"sd1": (files.kohya_a, files.lora_a), "sdxl": (files.xl_kohya, files.xl_lora)}[
        family
    ]
    path = draw(cli, tmp_path, models[family], "--lora", f"{kohya}:0.8")
    expected = diffusers_image(models[family], setup=with_loras((same, 0.8)))
    np.testing.assert_array_equal(pixels(path), expected)


def test_sdxl_lora_equals_diffusers(cli, tmp_path, models, files, plain):
    path = draw(cli, tmp_path, models["sdxl"], "--lora", files.xl_lora)
    expected = diffusers_image(models["sdxl"], setup=with_loras((files.xl_lora, 1.0)))
    np.testing.assert_array_equal(pixels(path), expected)
    assert not np.array_equal(expected, plain["sdxl"])


def test_lora_alpha_from_adapter_metadata_is_kept(cli, tmp_path, models, files):
    """diffusers-format files record lora_alpha in the safetensors header
    (`lora_adapter_metadata`, written by `save_lora_weights(..., *_lora_adapter_metadata=)` as
    diffusers' training scripts do); diffusers scales by alpha / rank = 2 when it reads the
    file. Reading only the tensors loses it (scale 1)."""
    path = draw(cli, tmp_path, models["sd1"], "--lora", files.alpha_lora)
    expected = diffusers_image(models["sd1"], setup=with_loras((files.alpha_lora, 1.0)))
    np.testing.assert_array_equal(pixels(path), expected)


def test_kohya_lora_alpha_sets_its_scale(cli, tmp_path, models, files, plain):
    """Most kohya files have alpha below the rank; the weights are scaled by alpha / rank."""
    path = draw(cli, tmp_path, models["sd1"], "--lora", files.kohya_alpha)
    expected = diffusers_image(models["sd1"], setup=with_loras((files.kohya_alpha, 1.0)))
    np.testing.assert_array_equal(pixels(path), expected)
    assert not np.array_equal(expected, plain["sd1"])


def test_lora_folder_equals_the_file_and_records_no_fake_hash(
    cli, tmp_path, models, files, with_lora_a
):
    """A diffusers training output folder (pytorch_lora_weights.safetensors) loads like the
    file. It has no file hash: A1111 then leaves it out of `Lora hashes` (it skips networks
    without a shorthash), it does not write `name: None`."""
    path = draw(cli, tmp_path, models["sd1"], "--lora", files.lora_folder)
    np.testing.assert_array_equal(pixels(path), with_lora_a)
    assert addons(path) == [
        {
            "kind": "lora",
            "name": "style-a-folder",
            "hash": None,
            "scale": 1.0,
            "token": None,
            "te_scale": 1.0,
            "location": str((files.lora_folder / "pytorch_lora_weights.safetensors").resolve()),
        }
    ]
    hashes = infotext(path).get("Lora hashes", "")
    assert "None" not in hashes, hashes


def test_lora_metadata_parses_back(files, stacked):
    path = stacked
    hash_a, hash_b = autov3(files.lora_a), autov3(files.lora_b)
    assert hash_a != sha256(files.lora_a, 12)  # the header is not hashed
    params = infotext(path)
    assert params["Lora hashes"] == f"style-a: {hash_a}, style-b: {hash_b}"
    assert "VAE hash" not in params and "TI hashes" not in params
    assert addons(path) == [
        {
            "kind": "lora",
            "name": "style-a",
            "hash": hash_a,
            "scale": 0.7,
            "token": None,
            "te_scale": 0.7,
            "location": str(files.lora_a.resolve()),
        },
        {
            "kind": "lora",
            "name": "style-b",
            "hash": hash_b,
            "scale": 0.3,
            "token": None,
            "te_scale": 0.3,
            "location": str(files.lora_b.resolve()),
        },
    ]


# --- textual inversion --------------------------------------------------------------------


def test_embedding_equals_diffusers_textual_inversion(cli, tmp_path, models, files, with_myword):
    model = models["sd1"]
    path = draw(cli, tmp_path, model, "--embedding", files.embedding, prompt=EMBEDDING_PROMPT)
    np.testing.assert_array_equal(pixels(path), with_myword)
    assert not np.array_equal(with_myword, diffusers_image(model, EMBEDDING_PROMPT))
    digest = sha256(files.embedding, 12)
    assert infotext(path)["TI hashes"] == f"myword: {digest}"
    assert addons(path) == [
        {
            "kind": "embedding",
            "name": "myword",
            "hash": digest,
            "scale": None,
            "token": "myword",
            "te_scale": None,
            "location": str(files.embedding.resolve()),
        }
    ]


def test_embedding_with_its_own_token(cli, tmp_path, models, files):
    model, prompt = models["sd1"], "a photo of tok at dawn"
    path = draw(cli, tmp_path, model, "--embedding", f"{files.other_embedding}:tok",
                prompt=prompt)  # fmt: skip

    def load(pipe) -> None:
        pipe.load_textual_inversion(str(files.other_embedding), token="tok")

    expected = diffusers_image(model, prompt, setup=load)
    np.testing.assert_array_equal(pixels(path), expected)
    assert not np.array_equal(expected, diffusers_image(model, prompt))
    [record] = addons(path)
    assert (record["name"], record["token"]) == ("other", "tok")
    assert record["hash"] == sha256(files.other_embedding, 12)


def test_sdxl_embedding_loads_into_both_text_encoders(cli, tmp_path, models, files):
    model, prompt = models["sdxl"], "a photo of xlword at dawn"
    path = draw(cli, tmp_path, model, "--embedding", files.xl_embedding, prompt=prompt)

    def load(pipe) -> None:
        state = load_file(files.xl_embedding)
        for vectors, encoder, tokenizer in (
            (state["clip_l"], pipe.text_encoder, pipe.tokenizer),
            (state["clip_g"], pipe.text_encoder_2, pipe.tokenizer_2),
        ):
            pipe.load_textual_inversion(
                vectors, token="xlword", text_encoder=encoder, tokenizer=tokenizer
            )

    expected = diffusers_image(model, prompt, setup=load)
    np.testing.assert_array_equal(pixels(path), expected)
    assert not np.array_equal(expected, diffusers_image(model, prompt))
    assert infotext(path)["TI hashes"] == f"xlword: {sha256(files.xl_embedding, 12)}"


# --- VAE ----------------------------------------------------------------------------------


def test_vae_folder_equals_diffusers(cli, tmp_path, models, files, plain, with_vae):
    path = draw(cli, tmp_path, models["sd1"], "--vae", files.vae)
    np.testing.assert_array_equal(pixels(path), with_vae)
    assert not np.array_equal(with_vae, plain["sd1"])
    params = infotext(path)
    assert params["VAE"] == "my-vae" and "VAE hash" not in params  # a folder has no file hash
    assert addons(path) == [
        {
            "kind": "vae",
            "name": "my-vae",
            "hash": None,
            "scale": None,
            "token": None,
            "te_scale": None,
            "location": str(files.vae.resolve()),
        }
    ]


def test_vae_single_file_equals_the_folder(cli, tmp_path, models, files, with_vae):
    from_file = draw(cli, tmp_path, models["sd1"], "--vae", files.vae_file)
    np.testing.assert_array_equal(pixels(from_file), with_vae)  # = diffusers with the folder
    params = infotext(from_file)
    assert params["VAE"] == "my-vae-ft-mse"
    assert params["VAE hash"] == sha256(files.vae_file, 10)
    [record] = addons(from_file)
    assert (record["kind"], record["hash"]) == ("vae", sha256(files.vae_file, 10))


# --- safety -------------------------------------------------------------------------------


def test_pickle_lora_is_refused_without_the_flag(cli, tmp_path, models, files, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("torch.load must not be called")

    monkeypatch.setattr(torch, "load", refuse)
    out = tmp_path / "out"
    result = cli(PROMPT, "-m", models["sd1"], "--lora", files.pickled_a, "-q", "-o", out)
    message = assert_one_line_error(result, ExitCode.UNSAFE_CHECKPOINT, out)
    assert "--allow-pickle" in message and "style-a.pt" in message


def test_pickle_lora_loads_with_the_flag(cli, tmp_path, models, files, with_lora_a):
    pickled = draw(cli, tmp_path, models["sd1"], "--lora", files.pickled_a, "--allow-pickle")
    np.testing.assert_array_equal(pixels(pickled), with_lora_a)  # = the safetensors file
    assert infotext(pickled)["Lora hashes"] == f"style-a: {sha256(files.pickled_a, 12)}"


def test_a1111_pt_embedding_needs_the_flag_and_then_equals_safetensors(
    cli, tmp_path, models, files, with_myword, monkeypatch
):
    real_load = torch.load

    def refuse(*args, **kwargs):
        raise AssertionError("torch.load must not be called")

    monkeypatch.setattr(torch, "load", refuse)
    out = tmp_path / "refused"
    refused = cli(EMBEDDING_PROMPT, "-m", models["sd1"], "--embedding", files.pickled_embedding,
                  "-q", "-o", out)  # fmt: skip
    assert "--allow-pickle" in assert_one_line_error(refused, ExitCode.UNSAFE_CHECKPOINT, out)
    monkeypatch.setattr(torch, "load", real_load)
    path = draw(cli, tmp_path / "allowed", models["sd1"], "--embedding", files.pickled_embedding,
                "--allow-pickle", prompt=EMBEDDING_PROMPT)  # fmt: skip
    np.testing.assert_array_equal(pixels(path), with_myword)


def test_vae_safetensors_under_a_pickle_style_name(cli, tmp_path, models, files, with_vae,
                                                   monkeypatch):  # fmt: skip
    """Formats are told from the bytes, not the name (as for --model): a safetensors VAE
    named .ckpt loads as safetensors, without --allow-pickle and without torch.load."""

    def refuse(*args, **kwargs):
        raise AssertionError("torch.load must not be called")

    monkeypatch.setattr(torch, "load", refuse)
    path = draw(cli, tmp_path, models["sd1"], "--vae", files.vae_renamed)
    np.testing.assert_array_equal(pixels(path), with_vae)


@pytest.mark.parametrize("flag", ["--lora", "--embedding", "--vae"])
def test_malicious_pickle_addon_never_runs_even_when_allowed(cli, tmp_path, models, flag):
    """Like a malicious --model (exit 4, "weights-only"): the weights-only loader refuses
    it, and the message says so instead of torch's advice on how to load it anyway."""
    canary, path, out = tmp_path / "canary", tmp_path / "evil.pt", tmp_path / "out"
    write_evil_pickle(path, canary)
    result = cli(PROMPT, "-m", models["sd1"], flag, path, "--allow-pickle", "-q", "-o", out)
    assert not canary.exists()
    message = assert_one_line_error(result, ExitCode.UNSAFE_CHECKPOINT, out)
    assert "weights-only" in message and "\x1b" not in message, message


def test_all_add_ons_together(cli, tmp_path, models, files):
    model = models["sd1"]
    path = draw(cli, tmp_path, model, "--vae", files.vae_file, "--lora", f"{files.lora_a}:0.5",
                "--embedding", files.embedding, prompt=EMBEDDING_PROMPT)  # fmt: skip

    def setup(pipe) -> None:
        with_loras((files.lora_a, 0.5))(pipe)
        pipe.load_textual_inversion(str(files.embedding), token="myword")

    vae = AutoencoderKL.from_pretrained(files.vae)
    expected = diffusers_image(model, EMBEDDING_PROMPT, setup=setup, vae=vae)
    np.testing.assert_array_equal(pixels(path), expected)
    params = infotext(path)
    assert (params["VAE hash"], params["VAE"]) == (sha256(files.vae_file, 10), "my-vae-ft-mse")
    assert params["Lora hashes"] == f"style-a: {autov3(files.lora_a)}"
    assert params["TI hashes"] == f"myword: {sha256(files.embedding, 12)}"
    assert [a["kind"] for a in addons(path)] == ["vae", "lora", "embedding"]


# --- errors -------------------------------------------------------------------------------


def test_missing_lora_file_exits_3_naming_it(cli, tmp_path, models):
    missing, out = tmp_path / "nowhere" / "gone.safetensors", tmp_path / "out"
    result = cli(PROMPT, "-m", models["sd1"], "--lora", f"{missing}:0.5", "-q", "-o", out)
    message = assert_one_line_error(result, ExitCode.MODEL, out)
    assert str(missing) in message and "does not exist" in message


@pytest.mark.parametrize(("family", "embedding"), [("sd1", "xl_embedding"), ("sdxl", "embedding")])
def test_embedding_of_the_other_family_is_a_clear_error(
    cli, tmp_path, models, files, family, embedding
):
    path, out = getattr(files, embedding), tmp_path / "out"
    result = cli(f"a photo of {path.stem}", "-m", models[family], "--steps", STEPS,
                 "--embedding", path, "-q", "-o", out)  # fmt: skip
    message = assert_one_line_error(result, ExitCode.MODEL, out)
    assert path.name in message or path.stem in message, message  # which add-on failed
    assert "tensor(" not in message and len(message) < 400, message  # no dump of the weights


def test_lora_scale_must_be_a_number(cli, tmp_path, models, files):
    out = tmp_path / "out"
    result = cli(PROMPT, "-m", models["sd1"], "--lora", f"{files.lora_a}:abc", "-q", "-o", out)
    message = assert_one_line_error(result, ExitCode.USAGE, out)
    assert "scale" in message and "abc" in message


# --- every path reads pickles one way: by their bytes, bounded, only when allowed ------------


@pytest.fixture
def no_torch_load(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("torch.load must not be called")

    monkeypatch.setattr(torch, "load", refuse)


def diffusers_embedding_folder(folder: Path, files, pickled: bool) -> Path:
    """What diffusers' textual-inversion training saves: {token: vector}."""
    folder.mkdir()
    vector = load_file(files.other_embedding)["emb_params"][0]
    if pickled:
        torch.save({"<cat-toy>": vector}, folder / "learned_embeds.bin")
    else:
        save_file({"<cat-toy>": vector}, folder / "learned_embeds.safetensors")
    return folder


def with_cat_toy(files):
    def load(pipe) -> None:
        vector = load_file(files.other_embedding)["emb_params"][0]
        pipe.load_textual_inversion({"<cat-toy>": vector}, token="<cat-toy>")

    return load


CAT_TOY_PROMPT = "a photo of <cat-toy> at dawn"


def test_embedding_folder_gets_its_trained_token(cli, tmp_path, models, files):
    folder = diffusers_embedding_folder(tmp_path / "cat-toy", files, pickled=False)
    path = draw(cli, tmp_path / "out", models["sd1"], "--embedding", folder,
                prompt=CAT_TOY_PROMPT)  # fmt: skip
    expected = diffusers_image(models["sd1"], CAT_TOY_PROMPT, setup=with_cat_toy(files))
    np.testing.assert_array_equal(pixels(path), expected)
    [record] = addons(path)
    assert (record["name"], record["token"]) == ("cat-toy", "<cat-toy>")


def test_pickled_embedding_folder_needs_the_flag(cli, tmp_path, models, files, monkeypatch):
    folder = diffusers_embedding_folder(tmp_path / "cat-toy", files, pickled=True)
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load was called"))
    out = tmp_path / "refused"
    refused = cli(CAT_TOY_PROMPT, "-m", models["sd1"], "--embedding", folder, "-q", "-o", out)
    message = assert_one_line_error(refused, ExitCode.UNSAFE_CHECKPOINT, out)
    assert "learned_embeds.bin" in message and "--allow-pickle" in message
    monkeypatch.setattr(torch, "load", real_load)
    path = draw(cli, tmp_path / "out", models["sd1"], "--embedding", folder, "--allow-pickle",
                prompt=CAT_TOY_PROMPT)  # fmt: skip
    expected = diffusers_image(models["sd1"], CAT_TOY_PROMPT, setup=with_cat_toy(files))
    np.testing.assert_array_equal(pixels(path), expected)
    assert addons(path)[0]["token"] == "<cat-toy>"


def test_pickle_named_safetensors_loads_with_the_flag(cli, tmp_path, models, files, with_lora_a):
    disguised = tmp_path / "style-a.safetensors"
    torch.save(load_file(files.lora_a), disguised)
    path = draw(cli, tmp_path / "out", models["sd1"], "--lora", disguised, "--allow-pickle")
    np.testing.assert_array_equal(pixels(path), with_lora_a)


def test_legacy_pickle_checkpoint_loads_with_the_flag(cli, tmp_path, models):
    from ldm_export import export_single_file

    from txt2img.model.load import checkpoint_family
    from txt2img.model.weights import WeightsFormat

    checkpoint = export_single_file(models["sd1"], tmp_path / "model.safetensors")
    legacy = tmp_path / "legacy.ckpt"
    torch.save({"state_dict": load_file(checkpoint)}, legacy, _use_new_zipfile_serialization=False)
    assert not legacy.read_bytes().startswith(b"PK")
    # Told from its tensor names, as a zip checkpoint is (no memory-mapping of a legacy file).
    assert checkpoint_family(legacy, WeightsFormat.pickle) == "sd1"
    from_legacy = draw(cli, tmp_path / "legacy", legacy, "--config", models["sd1"],
                       "--allow-pickle")  # fmt: skip
    from_folder = draw(cli, tmp_path / "folder", models["sd1"])
    np.testing.assert_array_equal(pixels(from_legacy), pixels(from_folder))


def bin_only_copy(model: Path, folder: Path) -> Path:
    """The model as an old diffusers folder: every component's weights as a .bin pickle."""
    shutil.copytree(model, folder)
    for weights in folder.glob("*/*.safetensors"):
        name = "pytorch_model.bin" if weights.stem == "model" else "diffusion_pytorch_model.bin"
        torch.save(load_file(weights), weights.with_name(name))
        weights.unlink()
    return folder


def test_a_model_folder_with_one_pickled_component_loads_with_the_flag(cli, tmp_path, models):
    folder = tmp_path / "mixed"
    shutil.copytree(models["sd1"], folder)
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    torch.save(load_file(weights), weights.with_suffix(".bin"))
    weights.unlink()
    out = tmp_path / "refused"
    refused = cli(PROMPT, "-m", folder, "-q", "-o", out)
    assert "unet" in assert_one_line_error(refused, ExitCode.UNSAFE_CHECKPOINT, out)
    allowed = draw(cli, tmp_path / "allowed", folder, "--allow-pickle")
    np.testing.assert_array_equal(
        pixels(allowed), pixels(draw(cli, tmp_path / "st", models["sd1"]))
    )


def test_a_pickled_vae_folder_is_refused_then_loads_with_the_flag(
    cli, tmp_path, models, files, with_vae
):
    folder = tmp_path / "old-vae"
    shutil.copytree(files.vae, folder)
    weights = folder / "diffusion_pytorch_model.safetensors"
    torch.save(load_file(weights), weights.with_suffix(".bin"))
    weights.unlink()
    out = tmp_path / "refused"
    refused = cli(PROMPT, "-m", models["sd1"], "--vae", folder, "-q", "-o", out)
    assert_one_line_error(refused, ExitCode.UNSAFE_CHECKPOINT, out)
    assert "loading" not in refused.stderr
    allowed = draw(cli, tmp_path / "allowed", models["sd1"], "--vae", folder, "--allow-pickle")
    np.testing.assert_array_equal(pixels(allowed), with_vae)


def test_bin_only_model_folder_is_refused_then_loads_with_the_flag(cli, tmp_path, models):
    folder = bin_only_copy(models["sd1"], tmp_path / "old-model")
    out = tmp_path / "refused"
    refused = cli(PROMPT, "-m", folder, "-q", "-o", out)
    message = assert_one_line_error(refused, ExitCode.UNSAFE_CHECKPOINT, out)
    assert "pickle" in message and "--allow-pickle" in message
    allowed = draw(cli, tmp_path / "allowed", folder, "--allow-pickle")
    np.testing.assert_array_equal(
        pixels(allowed), pixels(draw(cli, tmp_path / "st", models["sd1"]))
    )


@pytest.mark.parametrize("flag", ["--lora", "--embedding"])
def test_zip_bomb_is_refused_before_it_inflates(cli, tmp_path, models, no_torch_load, flag):
    import zipfile

    bomb = tmp_path / "bomb.ckpt"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/data.pkl", b"\0" * (64 << 20))
    assert bomb.stat().st_size < 1 << 20
    out = tmp_path / "out"
    result = cli(PROMPT, "-m", models["sd1"], flag, bomb, "--allow-pickle", "-q", "-o", out)
    message = assert_one_line_error(result, ExitCode.UNSAFE_CHECKPOINT, out)
    assert "would inflate" in message


def test_a_self_containing_embedding_dict_is_checked_without_looping():
    """With --allow-pickle, torch's weights-only loader can give a dict that holds itself."""
    from txt2img.model.addons import _check_width

    looped: dict = {}
    looped["again"] = looped
    encoder = torch.nn.Module()
    encoder.get_input_embeddings = lambda: torch.nn.Embedding(4, 8)
    _check_width(looped, encoder, "looped.pt")  # no tensors, no width to refuse
