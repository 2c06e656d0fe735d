"""Batch runs: prompt files and stdin, per-line overrides, JSON output, batching,
resume, overwrite, keep-going and several processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from a1111 import parse_generation_parameters
from diffusers import DiffusionPipeline, StableDiffusionPipeline
from paused import PausedChild
from PIL import Image

from txt2img.errors import ExitCode
from txt2img.jobs import ImageJob, batches, process_share
from txt2img.options import RECORDED_OPTIONS

PROMPTS = """\
# a comment, then a blank line

a red fox at dawn
a blue cat --seed 50 --steps 2 -n "blurry, dark"
a green owl -N 2
"""


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def lines(result) -> list[str]:
    assert result.exit_code == 0, result.stderr
    return result.stdout.splitlines()


def folder_pixels(folder: Path) -> dict[str, np.ndarray]:
    return {path.name: pixels(path) for path in sorted(folder.glob("*.png"))}


@pytest.fixture
def prompts_file(tmp_path) -> Path:
    path = tmp_path / "prompts.txt"
    path.write_text(PROMPTS)
    return path


def test_prompts_file_with_overrides(cli, tmp_path, models, prompts_file):
    out = tmp_path / "out"
    result = cli("-f", prompts_file, "-m", models["sd1"], "--steps", 3, "--seed", 1, "-o", out)
    assert [Path(p).name for p in lines(result)] == [
        "00000-1-a-red-fox-at-dawn.png",
        "00001-50-a-blue-cat.png",  # its line sets seed 50
        "00002-3-a-green-owl.png",  # image 2 of the run: seed 1 + 2
        "00003-4-a-green-owl.png",
    ]
    cat = Image.open(out / "00001-50-a-blue-cat.png")
    params = parse_generation_parameters(cat.text["parameters"])
    assert (params["Negative prompt"], params["Steps"], params["Seed"]) == (
        "blurry, dark",
        "2",
        "50",
    )
    pipe = DiffusionPipeline.from_pretrained(models["sd1"])
    pipe.set_progress_bar_config(disable=True)
    expected = pipe(
        "a blue cat", negative_prompt="blurry, dark", num_inference_steps=2,
        generator=torch.Generator("cpu").manual_seed(50),
    ).images[0]  # fmt: skip
    np.testing.assert_array_equal(pixels(out / "00001-50-a-blue-cat.png"), np.asarray(expected))


def test_stdin_and_json_output(cli, tmp_path, models):
    result = CliInput(cli).run(
        "a red fox\r\n# skip me\r\na blue cat --steps 2\r\n",
        "-f", "-", "-m", models["sd1"], "--steps", 1, "--seed", 9, "--json", "-o", tmp_path,
    )  # fmt: skip
    records = [json.loads(line) for line in lines(result)]
    assert [(r["status"], r["prompt"], r["seed"], r["steps"], r["line"]) for r in records] == [
        ("ok", "a red fox", 9, 1, 1),
        ("ok", "a blue cat", 10, 2, 3),
    ]
    for record in records:
        assert Path(record["path"]).is_file()
        assert record["seconds"] > 0 and record["model"] == str(models["sd1"].resolve())
        stored = json.loads(Image.open(record["path"]).text["txt2img"])
        assert {k: record[k] for k in stored} == stored  # every setting is in the JSON


class CliInput:
    """`cli` with text on standard input."""

    def __init__(self, cli) -> None:
        from typer.testing import CliRunner

        from txt2img.cli import app

        self.runner, self.app = CliRunner(), app

    def run(self, stdin: str, *args):
        return self.runner.invoke(self.app, [str(a) for a in args], input=stdin)


def test_bad_line_is_reported_before_the_model_loads(cli, tmp_path, models):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a fox"}\n{"prompt": "a cat", "stepz": 3}\n')
    result = cli("-f", path, "-m", models["sd1"], "-o", tmp_path / "out")
    assert result.exit_code == ExitCode.USAGE
    assert f"{path}:2:" in result.stderr and "stepz" in result.stderr
    assert "loading" not in result.stderr and not (tmp_path / "out").exists()


def test_batch_size_does_not_change_the_images(cli, tmp_path, models):
    prompts_file = tmp_path / "same-settings.txt"
    prompts_file.write_text("a red fox\na blue cat\na green owl\na tiny boat\n")
    for size in (1, 3):  # batches of 3, 3 and 2 images
        lines(cli("-f", prompts_file, "-m", models["sd1"], "--steps", 3, "--seed", 1, "-N", 2,
                  "-b", size, "-q", "-o", tmp_path / f"b{size}"))  # fmt: skip
    one, three = folder_pixels(tmp_path / "b1"), folder_pixels(tmp_path / "b3")
    assert one.keys() == three.keys() and len(one) == 8
    for name in one:
        # Same starting noise per image; batched float kernels may round one 8-bit
        # level differently on a rare pixel.
        difference = np.abs(one[name].astype(int) - three[name].astype(int))
        assert difference.max() <= 1 and (difference > 0).mean() < 0.005, name


def test_resume_draws_only_the_missing_images(cli, tmp_path, models):
    args = ("a red fox", "-m", models["sd1"], "--steps", 2, "--seed", 3, "-N", 4, "-o", tmp_path)
    first = [Path(p) for p in lines(cli(*args, "-q"))]
    originals = {p.name: pixels(p) for p in first}
    first[1].unlink()
    first[3].unlink()
    untouched = first[0].stat().st_mtime_ns
    resumed = cli(*args, "--resume", "--json")
    records = [json.loads(line) for line in lines(resumed)]
    assert [(r["status"], Path(r["path"]).name) for r in records] == [
        ("skipped", first[0].name),
        ("skipped", first[2].name),
        ("ok", first[1].name),
        ("ok", first[3].name),
    ]
    assert folder_pixels(tmp_path).keys() == originals.keys()
    for name, image in folder_pixels(tmp_path).items():
        np.testing.assert_array_equal(image, originals[name])
    assert first[0].stat().st_mtime_ns == untouched
    again = cli(*args, "--resume")
    assert again.exit_code == 0 and again.stdout == "" and "nothing to do" in again.stderr


def test_overwrite_replaces_and_default_refuses(cli, tmp_path, models):
    args = ("a red fox", "-m", models["sd1"], "--steps", 1, "--seed", 3, "-q", "-o", tmp_path)
    [path] = lines(cli(*args))
    Path(path).write_bytes(b"junk")
    refused = cli(*args)
    assert refused.exit_code == ExitCode.OUTPUT and "--overwrite" in refused.stderr
    assert Path(path).read_bytes() == b"junk"
    assert lines(cli(*args, "--overwrite")) == [path]
    assert Image.open(path).size == (64, 64)
    assert sorted(p.name for p in tmp_path.iterdir()) == [Path(path).name]


def test_keep_going_reports_a_failed_item_and_continues(cli, tmp_path, models):
    path = tmp_path / "p.txt"
    path.write_text("a red fox\na blue cat --scheduler lcm --steps 60\na green owl\n")
    base = ("-f", path, "-m", models["sd1"], "--steps", 1, "--seed", 1)
    stopped = cli(*base, "-q", "-o", tmp_path / "stop")
    assert stopped.exit_code == ExitCode.USAGE
    assert [p.name for p in (tmp_path / "stop").glob("*.png")] == ["00000-1-a-red-fox.png"]

    going = cli(*base, "--keep-going", "--json", "-q", "-o", tmp_path / "go")
    assert going.exit_code == ExitCode.PARTIAL
    records = [json.loads(line) for line in going.stdout.splitlines()]
    assert [(r["status"], r["index"]) for r in records] == [("ok", 0), ("failed", 1), ("ok", 2)]
    assert "original_steps" in records[1]["error"]
    assert "failed: image 1 (line 2, seed 2)" in going.stderr
    assert "1 of 3 images failed" in going.stderr
    assert len(list((tmp_path / "go").glob("*.png"))) == 2


def test_nan_image_is_never_written(cli, tmp_path, nan_model):
    result = cli("a fox", "-m", nan_model, "--steps", 1, "--seed", 1, "-q", "-o", tmp_path / "out")
    assert result.exit_code == ExitCode.BAD_IMAGE and "NaN" in result.stderr
    assert "--dtype fp32" not in result.stderr  # it ran in fp32 (hostile review, defect 10)
    assert result.stdout == "" and not (tmp_path / "out").exists()  # not even the folder


def run_process(*argv, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *map(str, argv)], capture_output=True, text=True, timeout=300, env=env
    )


def torchrun(*args, env) -> subprocess.CompletedProcess:
    return run_process(
        "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", 2,
        "-m", "txt2img", *args, env=env,
    )  # fmt: skip


def test_two_processes_write_exactly_what_one_writes(tmp_path, models, prompts_file):
    # One thread per process on both sides, so float summation order is the same.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = ("-f", prompts_file, "-m", models["sd1"], "--steps", 2, "--seed", 5, "-q")
    single = run_process("-m", "txt2img", *args, "-o", tmp_path / "one", env=env)
    assert single.returncode == 0, single.stderr
    double = torchrun(*args, "-o", tmp_path / "two", env=env)
    assert double.returncode == 0, double.stderr
    one, two = folder_pixels(tmp_path / "one"), folder_pixels(tmp_path / "two")
    assert len(one) == 4 and one.keys() == two.keys()
    for name in one:
        np.testing.assert_array_equal(one[name], two[name])
    assert sorted(double.stdout.split()) == sorted(
        str(tmp_path / "two" / name) for name in one
    )  # every image reported once, by the process that drew it

    # Redo "a failed node's share": rank 0's images are gone, rank 1 has nothing to do
    # and must end on its own instead of waiting for rank 0.
    for name in sorted(two)[::2]:
        (tmp_path / "two" / name).unlink()
    redone = torchrun(*args, "--resume", "-o", tmp_path / "two", env=env)
    assert redone.returncode == 0, redone.stderr
    assert sorted(redone.stdout.split()) == [str(tmp_path / "two" / n) for n in sorted(two)[::2]]
    for name, image in folder_pixels(tmp_path / "two").items():
        np.testing.assert_array_equal(image, one[name])


def test_a_process_share_is_whole_batches_grouped_as_one_process_groups_them(monkeypatch):
    """Batches of 2 over settings K K K L K: one process draws [0 1] [2] [3] [4]; rank 0
    of two gets [0 1] [3], rank 1 gets [2] [4], each grouped as before, never [2 4]."""
    defaults = {option.key: option.default for option in RECORDED_OPTIONS}
    jobs = [ImageJob(k, 0, "a fox", {**defaults, "seed": k, "steps": 2 if key == "K" else 3})
            for k, key in enumerate("KKKLK")]  # fmt: skip

    def grouped(share):
        return [[job.index for job in batch] for batch in batches(share, 2)]

    assert grouped(jobs) == [[0, 1], [2], [3], [4]]
    monkeypatch.setenv("WORLD_SIZE", "2")
    shares = {}
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        shares[rank] = grouped(process_share(jobs, 2))
    assert shares == {0: [[0, 1], [3]], 1: [[2], [4]]}


def test_two_processes_draw_each_image_in_the_call_one_process_does(cli, tmp_path):
    """At -b 2 a batched call rounds differently from a single one (the demo model shows
    it at 64x64), so equal pixels mean equal calls: lines of 3, 1 and 3 images."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red square -N 3\na blue circle --steps 3\na red square -N 3\n")
    args = ("-f", prompts, "-m", "demo", "--seed", 1, "-W", 64, "-H", 64, "--steps", 3, "-q")
    one = lines(cli(*args, "-b", 2, "-o", tmp_path / "one"))
    for rank in (0, 1):
        env = {"WORLD_SIZE": "2", "RANK": str(rank)}
        lines(cli(*args, "-b", 2, "-o", tmp_path / "two", env=env))
    alone = lines(cli(*args, "-b", 1, "-o", tmp_path / "alone"))
    first, second = folder_pixels(tmp_path / "one"), folder_pixels(tmp_path / "two")
    assert len(one) == 7 and first.keys() == second.keys()
    for name in first:
        np.testing.assert_array_equal(first[name], second[name])
    singles = folder_pixels(tmp_path / "alone")
    assert len(alone) == 7 and any(not np.array_equal(first[n], singles[n]) for n in first)


def test_several_processes_report_a_missing_device_as_one_does(cli, tmp_path, models, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    result = cli("a fox", "-m", models["sd1"], "--device", "cuda", "--seed", 1, "-N", 2, "-q",
                 "-o", tmp_path, env={"WORLD_SIZE": "2", "RANK": "1"})  # fmt: skip
    assert result.exit_code == ExitCode.USAGE and "--device cuda" in result.stderr


def test_several_processes_need_a_shared_seed(cli, tmp_path, models):
    result = cli("a fox", "-m", models["sd1"], "-o", tmp_path,
                 env={"WORLD_SIZE": "2", "RANK": "1"})  # fmt: skip
    assert result.exit_code == ExitCode.USAGE and "shared --seed" in result.stderr


def test_resume_after_ctrl_c_matches_an_uninterrupted_run(tmp_path, models):
    args = ("-m", "txt2img", "a red fox", "-m", models["sd1"], "--steps", 3, "--seed", 8,
            "-N", 4, "-q")  # fmt: skip
    env = {**os.environ, "NO_COLOR": "1", "OMP_NUM_THREADS": "1"}
    child = PausedChild((*args[2:], "-o", tmp_path / "cut"), "step:1:2")
    child.wait_for_pause()  # image 0 has landed; image 1 is half drawn
    child.process.send_signal(signal.SIGINT)
    stdout, stderr, code = child.finish()
    assert code == ExitCode.INTERRUPTED and "Traceback" not in stderr
    cut = sorted(p.name for p in (tmp_path / "cut").iterdir())
    assert cut == ["00000-8-a-red-fox.png"] == [Path(stdout.strip()).name]  # no temporary file

    resumed = run_process(*args, "--resume", "-o", tmp_path / "cut", env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert len(resumed.stdout.split()) == 3
    whole = run_process(*args, "-o", tmp_path / "whole", env=env)
    assert whole.returncode == 0, whole.stderr
    cut_pixels, whole_pixels = folder_pixels(tmp_path / "cut"), folder_pixels(tmp_path / "whole")
    assert cut_pixels.keys() == whole_pixels.keys() and len(cut_pixels) == 4
    for name in cut_pixels:
        np.testing.assert_array_equal(cut_pixels[name], whole_pixels[name])


def pipeline_calls(monkeypatch) -> list[int]:
    """The batch size of every pipeline call from now on."""
    calls: list[int] = []
    original = StableDiffusionPipeline.__call__

    def spy(self, *args, **kwargs):
        calls.append(len(kwargs["prompt_embeds"]))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(StableDiffusionPipeline, "__call__", spy)
    return calls


def test_resume_keeps_the_batches_of_the_whole_run(cli, tmp_path, models, monkeypatch):
    args = ("a red fox", "-m", models["sd1"], "--steps", 2, "--seed", 3, "-N", 5, "-b", 3, "-q",
            "-o", tmp_path)  # fmt: skip
    first = [Path(p) for p in lines(cli(*args))]
    originals = folder_pixels(tmp_path)
    first[1].unlink()
    untouched = first[0].stat().st_mtime_ns
    calls = pipeline_calls(monkeypatch)
    resumed = cli(*args, "--resume", "--json")
    records = [json.loads(line) for line in lines(resumed)]
    assert [(r["status"], r["index"]) for r in records] == [
        ("skipped", 0), ("skipped", 2), ("skipped", 3), ("skipped", 4), ("ok", 1),
    ]  # fmt: skip
    assert calls == [3]  # image 1 drawn in its own batch of the whole run: images 0, 1, 2
    assert first[0].stat().st_mtime_ns == untouched  # the batch's done images are not rewritten
    for name, image in folder_pixels(tmp_path).items():
        np.testing.assert_array_equal(image, originals[name])


def test_resume_redraws_a_missing_strip_and_counts_images(cli, tmp_path, models):
    args = ("a red fox", "-m", models["sd1"], "--steps", 2, "--seed", 3, "-N", 2,
            "--save-steps", 1, "-q", "-o", tmp_path)  # fmt: skip
    first = lines(cli(*args))
    strip = Path(first[0]).with_name(Path(first[0]).stem + "-steps.png")
    strip_pixels, image_time = pixels(strip), Path(first[0]).stat().st_mtime_ns
    again = cli(*args[:-3], "-o", tmp_path, "--resume")  # without -q, to see the count
    assert again.stdout == "" and "all 2 images are already in" in again.stderr
    strip.unlink()
    redrawn = cli(*args, "--resume", "--json")
    assert redrawn.exit_code == 0, redrawn.stderr
    records = [json.loads(line) for line in redrawn.stdout.splitlines()]
    assert [(r["status"], r["index"]) for r in records] == [("skipped", 1), ("skipped", 0)]
    np.testing.assert_array_equal(pixels(strip), strip_pixels)
    assert Path(first[0]).stat().st_mtime_ns == image_time  # the image itself was there
