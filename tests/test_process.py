"""The CLI as a real process: start-up imports, Ctrl-C and other signals, closed pipes,
the Hub cache, debug tracebacks. Signals and pipes act at a pause point the child
announces (tests/paused.py), never after a sleep."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from paused import PausedChild, process_env
from PIL import Image

from txt2img.errors import ExitCode

HEAVY = ("torch", "diffusers", "transformers", "fastapi", "uvicorn")


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
    assert heavy_modules_after(["txt2img", "serve", "--help"]) == []
    assert heavy_modules_after(["txt2img", "serve", "--host", "0.0.0.0"]) == []
    # A --server run draws nothing here: it never imports torch, reachable server or not.
    assert heavy_modules_after(["txt2img", "fox", "--server", "http://127.0.0.1:9"]) == []


def draw_args(model, out, *extra):
    return ("fox", "-m", model, "--steps", 3, "--seed", 1, "-q", "-o", out, *extra)


def test_ctrl_c_exits_130_and_leaves_no_partial_file(tmp_path, models):
    out = tmp_path / "out"
    child = PausedChild(draw_args(models["sd1"], out), "step:0:2")
    child.wait_for_pause()  # drawing, nothing written yet
    child.process.send_signal(signal.SIGINT)
    stdout, stderr, code = child.finish()
    assert code == ExitCode.INTERRUPTED
    assert stdout == ""
    assert "interrupted" in stderr and "Traceback" not in stderr
    assert not out.exists() or list(out.iterdir()) == []


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_while_a_png_is_written_leave_nothing_behind(tmp_path, models, signum):
    out = tmp_path / "out"
    child = PausedChild(draw_args(models["sd1"], out), "write:00000-1-fox.png")
    child.wait_for_pause()  # the PNG is in its temporary file, not yet published
    assert [p.name.startswith(".") for p in out.iterdir()] == [True]
    child.process.send_signal(signum)
    stdout, stderr, code = child.finish()
    assert code == 128 + signum
    assert stdout == "" and "Traceback" not in stderr
    assert f"stopped by {signal.Signals(signum).name}" in stderr
    assert list(out.iterdir()) == []  # no temporary file, no half image


def test_a_temporary_file_left_by_sigkill_is_removed_by_the_next_run(tmp_path, models):
    out = tmp_path / "out"
    child = PausedChild(draw_args(models["sd1"], out), "write:00000-1-fox.png")
    child.wait_for_pause()
    child.process.kill()
    child.finish()
    [left] = list(out.iterdir())
    assert left.name.startswith(".00000-1-fox.png.") and left.name.endswith(".tmp")
    again = txt2img(*draw_args(models["sd1"], out), env=process_env())
    assert again.returncode == 0, again.stderr
    assert [p.name for p in out.iterdir()] == ["00000-1-fox.png"]


def test_closed_stdout_ends_the_run_quietly(tmp_path, models):
    child = PausedChild(
        ("fox", "-m", models["sd1"], "--steps", 1, "-N", 5, "--seed", 1, "-q", "-o", tmp_path),
        "step:1:1",
    )
    first = child.process.stdout.readline().strip()  # image 0 is written and reported
    child.wait_for_pause()  # image 1 is being drawn
    child.process.stdout.close()  # like `| head -1`
    child.go_on()
    child.process.stdout = None
    _, stderr, code = child.finish()
    assert code == ExitCode.STDOUT_CLOSED
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr
    assert Path(first).is_file()
    # Image 1 was finished (whole), its path could not be told; nothing more was drawn.
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "00000-1-fox.png",
        "00001-2-fox.png",
    ]


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
