"""The CLI as a real process: start-up imports, Ctrl-C, closed pipes, the Hub cache,
debug tracebacks."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from txt2img.errors import ExitCode

HEAVY = ("torch", "diffusers", "transformers")


def process_env(**extra: str) -> dict[str, str]:
    # One thread each: the test process and the CLI process share the machine's cores.
    env = {**os.environ, "NO_COLOR": "1", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    env.pop("TXT2IMG_DEBUG", None)
    return {**env, **extra}


def txt2img(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "txt2img", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        **kwargs,
    )


def heavy_modules_after(argv: list[str]) -> list[str]:
    code = (
        "import sys\n"
        "from txt2img.cli import main\n"
        f"sys.argv = {argv!r}\n"
        "try:\n    main()\n"
        "except SystemExit:\n    pass\n"
        f"print([m for m in {HEAVY!r} if m in sys.modules], file=sys.stderr)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    return json.loads(done.stderr.strip().splitlines()[-1].replace("'", '"'))


def test_help_and_argument_errors_do_not_import_torch():
    assert heavy_modules_after(["txt2img", "--help"]) == []
    assert heavy_modules_after(["txt2img", "fox", "--width", "7"]) == []
    assert heavy_modules_after(["txt2img", "fox", "-m", "./missing-model"]) == []


def test_ctrl_c_exits_130_and_leaves_no_partial_file(tmp_path, models):
    out = tmp_path / "out"
    process = subprocess.Popen(
        [sys.executable, "-m", "txt2img", "fox", "-m", models["sd1"], "--steps", "500",
         "--seed", "1", "-o", out],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=process_env(),
    )  # fmt: skip
    for line in process.stderr:  # wait until the model is loaded and drawing
        if "defaults:" in line:
            break
    time.sleep(1.0)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == ExitCode.INTERRUPTED
    assert stdout == ""
    assert "interrupted" in stderr and "Traceback" not in stderr
    assert list(out.iterdir()) == []


def test_closed_stdout_ends_the_run_quietly(tmp_path, models):
    process = subprocess.Popen(
        [sys.executable, "-m", "txt2img", "fox", "-m", models["sd1"], "--steps", "1",
         "-N", "5", "--seed", "1", "-o", tmp_path],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=process_env(),
    )  # fmt: skip
    first = process.stdout.readline().strip()
    process.stdout.close()  # like `| head -1`
    stderr = process.stderr.read()
    process.wait(timeout=60)
    assert process.returncode == ExitCode.STDOUT_CLOSED
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr
    assert Path(first).is_file()
    assert len(list(tmp_path.glob("*.png"))) < 5  # it stopped instead of drawing for no one


def test_debug_variable_shows_the_traceback(tmp_path):
    quiet = txt2img("fox", "-m", "./missing", env=process_env())
    loud = txt2img("fox", "-m", "./missing", env=process_env(TXT2IMG_DEBUG="1"))
    assert quiet.returncode == ExitCode.MODEL and "Traceback" not in quiet.stderr
    assert loud.returncode != 0 and "Traceback" in loud.stderr and "ModelError" in loud.stderr


def put_in_hub_cache(hf_home: Path, repo_id: str, folder: Path) -> None:
    """Lay a model out as huggingface_hub's cache does after a download."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)


def test_hub_id_loads_from_the_cache_offline(tmp_path, models):
    hf_home = tmp_path / "hf"
    put_in_hub_cache(hf_home, "tiny-org/tiny-sd1", models["sd1"])
    # --offline alone (no HF_HUB_OFFLINE), with any attempt to reach the Hub failing fast.
    env = process_env(HF_HOME=str(hf_home), HF_ENDPOINT="http://127.0.0.1:9")
    env.pop("HF_HUB_OFFLINE", None)
    args = ("a red fox", "--steps", 2, "--seed", 4, "-q", "--offline")
    from_hub = txt2img(*args, "-m", "tiny-org/tiny-sd1", "-o", tmp_path / "hub", env=env)
    from_dir = txt2img(*args, "-m", models["sd1"], "-o", tmp_path / "dir", env=env)
    assert from_hub.returncode == 0, from_hub.stderr
    hub_png, dir_png = Path(from_hub.stdout.strip()), Path(from_dir.stdout.strip())
    np.testing.assert_array_equal(np.asarray(Image.open(hub_png)), np.asarray(Image.open(dir_png)))
    record = json.loads(Image.open(hub_png).text["txt2img"])
    assert record["model"] == "tiny-org/tiny-sd1"
    assert "Model: tiny-org/tiny-sd1" in Image.open(hub_png).text["parameters"]


def test_offline_with_an_uncached_hub_id_says_how_to_get_it(tmp_path):
    env = process_env(HF_HOME=str(tmp_path / "empty"), HF_ENDPOINT="http://127.0.0.1:9")
    env.pop("HF_HUB_OFFLINE", None)
    done = txt2img("a fox", "-m", "someone/not-cached", "--offline", "-q", "-o", tmp_path, env=env)
    assert done.returncode == ExitCode.MODEL
    assert "not in the Hugging Face cache" in done.stderr and "network access" in done.stderr
    assert done.stderr.count("\n") == 1
