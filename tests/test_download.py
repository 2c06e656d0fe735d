"""The first run, as a new user meets it: a Hub model downloaded from a fake Hub on
loopback (tests/fake_hub.py speaks the Hub's protocol), shown on stderr, cached, drawn
offline the next time, resumed after a cut; the Hub's failures are one line each."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
from fake_hub import FakeHub
from paused import process_env
from PIL import Image

from txt2img.errors import ExitCode

REPO = "acme/tiny-sd1"
DRAW = ("a red fox", "-m", REPO, "--steps", "2", "-W", "64", "-H", "64", "--seed", "3")


def txt2img(hub: FakeHub, hf_home: Path, *args, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "txt2img", *map(str, args)], capture_output=True, text=True,
        timeout=300, env=process_env(**{**hub.child_env(hf_home), **env}),
    )  # fmt: skip


def pixels(path: str) -> np.ndarray:
    with Image.open(path.strip()) as image:
        return np.asarray(image)


def blobs(hf_home: Path) -> list[Path]:
    return sorted((hf_home / "hub" / f"models--{REPO.replace('/', '--')}" / "blobs").glob("*"))


def test_a_first_run_shows_its_download_survives_a_cut_and_works_offline_after(
    tmp_path, models, cli
):
    local = cli(*DRAW[:1], "-m", models["sd1"], *DRAW[3:], "-q", "-o", tmp_path / "local")
    assert local.exit_code == 0, local.stderr
    hf_home = tmp_path / "hf"
    with FakeHub() as hub:
        hub.add_repo(REPO, models["sd1"])
        hub.cut(4096)  # every file GET stops after 4 kB
        cut = txt2img(hub, hf_home, *DRAW, "-o", tmp_path / "cut")
        assert cut.returncode == ExitCode.MODEL, cut.stderr
        assert "stopped at 12.3 kB of 147.8 kB" in cut.stderr and "run again" in cut.stderr
        assert [p.suffix for p in blobs(hf_home)].count(".incomplete") == 1
        assert not (tmp_path / "cut").exists()

        hub.heal()
        hub.clear_requests()
        first = txt2img(hub, hf_home, *DRAW, "-o", tmp_path / "first")
        assert first.returncode == 0, first.stderr
        said = first.stderr
        # model_index.json and two small configs came whole before the cut.
        assert f"downloading {REPO}: 9 files, 746.9 kB, into the Hugging Face cache" in said
        assert "resuming: 12.3 kB were downloaded before" in said
        assert "txt2img: downloaded 746.9 kB of 746.9 kB (100%)" in said
        assert any(r.headers.get("range") == "bytes=12288-" for r in hub.requests)
        assert not [p for p in blobs(hf_home) if p.suffix == ".incomplete"]
        assert np.array_equal(pixels(first.stdout), pixels(local.stdout))

        hub.clear_requests()
        again = txt2img(hub, hf_home, *DRAW, "-o", tmp_path / "offline", HF_HUB_OFFLINE="1")
        assert again.returncode == 0, again.stderr
        assert hub.requests == [] and "downloading" not in again.stderr
        assert np.array_equal(pixels(again.stdout), pixels(local.stdout))

        hub.fail(500)  # online, but the Hub is down: the cached copy, as diffusers does
        down = txt2img(hub, hf_home, *DRAW, "-o", tmp_path / "down")
        assert down.returncode == 0, down.stderr
        assert "the Hub could not serve" in down.stderr and "with the cached copy" in down.stderr


FETCH = """
import sys
from txt2img.errors import Txt2ImgError
from txt2img.model.download import fetch_model
for repo in sys.argv[1:]:
    try:
        fetch_model(repo, fp16=False, safety_checker=True, quiet=True)
        print(repo, "ok")
    except Txt2ImgError as exc:
        print(repo, int(exc.exit_code), exc.one_line())
"""


def fetch(hub: FakeHub, hf_home: Path, repos: list[str], **popen) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", FETCH, *repos], capture_output=True, text=True, timeout=300,
        env=process_env(**hub.child_env(hf_home)), **popen,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_the_hubs_failures_are_one_line_and_leave_nothing_in_the_cache(tmp_path, models):
    faults = {"acme/gone": "404", "acme/gated": "401", "acme/broken": "500",
              "acme/garbled": "garbage"}  # fmt: skip
    with FakeHub() as hub:
        for repo, fault in faults.items():
            hub.add_repo(repo, models["sd1"])
            hub.garbage(repo=repo) if fault == "garbage" else hub.fail(int(fault), repo=repo)
        said = dict(line.split(" ", 1) for line in fetch(hub, tmp_path / "hf", list(faults)))
    assert all(line.startswith("3 ") for line in said.values()), said
    assert "there is no model acme/gone on the Hub" in said["acme/gone"]
    assert "gated" in said["acme/gated"] and "huggingface-cli login" in said["acme/gated"]
    assert "the Hub could not serve acme/broken: Server error '500" in said["acme/broken"]
    assert "cannot download acme/garbled from the Hub" in said["acme/garbled"]
    assert not list((tmp_path / "hf" / "hub").glob("models--*/blobs/*"))


def _small_files_only() -> None:
    """Files of at most 100 kB, and a write past that fails (EFBIG) instead of killing the
    process: a disk that fills up during the download."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))


def test_a_disk_that_fills_up_during_the_download_is_exit_7(tmp_path, models):
    with FakeHub() as hub:
        hub.add_repo(REPO, models["sd1"])
        [line] = fetch(hub, tmp_path / "hf", [REPO], preexec_fn=_small_files_only)
    assert line.startswith(f"{REPO} {int(ExitCode.OUTPUT)} cannot write {REPO} into the Hugging")
    assert "what was downloaded is kept" in line
    assert os.path.getsize(next(p for p in blobs(tmp_path / "hf") if p.suffix == ".incomplete"))


def test_a_partial_file_longer_than_its_file_is_fetched_again(tmp_path, models):
    import hashlib

    weights = models["sd1"] / "unet" / "diffusion_pytorch_model.safetensors"
    blob = hashlib.sha256(weights.read_bytes()).hexdigest()  # an LFS file's ETag
    folder = tmp_path / "hf" / "hub" / f"models--{REPO.replace('/', '--')}" / "blobs"
    folder.mkdir(parents=True)
    (folder / f"{blob}.incomplete").write_bytes(os.urandom(weights.stat().st_size + 10))
    with FakeHub() as hub:
        hub.add_repo(REPO, models["sd1"])
        assert fetch(hub, tmp_path / "hf", [REPO]) == [f"{REPO} ok"]
    assert (folder / blob).read_bytes() == weights.read_bytes()
