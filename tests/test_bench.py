"""The benchmark harness runs on the demo model and writes its tables (no timing is
asserted: the figures are the harness's business, not the tests')."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.scripts  # see pyproject.toml

ROOT = Path(__file__).resolve().parent.parent

SECONDS = r"\d+\.\d{3} s \(\d+\.\d{3}-\d+\.\d{3}\)"  # median (min-max)


def row(report: str, name: str) -> list[str]:
    line = next(line for line in report.splitlines() if line.startswith(f"| {name} |"))
    return [cell.strip() for cell in line.strip("|").split("|")]


def bench_report(tmp_path: Path, argv: list[str]) -> str:
    """Run scripts/bench.py with `argv`; the report it wrote to tmp_path/BENCHMARKS.md."""
    out = tmp_path / "BENCHMARKS.md"
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench.py"), *argv, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr
    return out.read_text()


def test_bench_writes_startup_and_batch_tables(tmp_path):
    argv = ["--sections", "startup,batch", "--runs", "1", "--warmup", "0", "--prompts", "2",
            "--demo-steps", "2"]  # fmt: skip
    report = bench_report(tmp_path, argv)
    command = " ".join([*argv, "--out", str(tmp_path / "BENCHMARKS.md")])
    assert f"`python scripts/bench.py {command}`" in report
    assert "torch 2." in report and "diffusers 0." in report
    for name, reference in [
        ("txt2img --help", "txt2img --help"),
        ("bare Typer app --help", None),
        ("txt2img", "txt2img"),
        ("minimal diffusers script", None),
        ("diffusers-cli run", None),
        ("txt2img -f", "txt2img -f"),
        ("hand-written diffusers loop", None),
        ("diffusers-cli run per prompt", None),
    ]:
        _, seconds, ratio, rss = row(report, name)
        assert re.fullmatch(SECONDS, seconds), seconds
        assert re.fullmatch(r"\d+\.\d{3}x", ratio), ratio
        if reference == name:
            assert ratio == "1.000x"
        assert re.fullmatch(r"[\d,]+ MiB", rss) and int(rss[:-4].replace(",", "")) > 10
    assert re.search(r"txt2img against the hand-written loop: \*\*[+-]\d+\.\d%\*\*", report)


def test_bench_writes_the_server_tables(tmp_path):
    report = bench_report(tmp_path, ["--sections", "server", "--runs", "1", "--warmup", "0",
                                     "--calls", "2", "--demo-steps", "2"])  # fmt: skip
    assert "2 steps, fp32 on the CPU" in report
    for name in ("2 x txt2img", "2 x txt2img --server"):
        _, seconds, ratio, _ = row(report, name)
        assert re.fullmatch(SECONDS, seconds) and re.fullmatch(r"\d+\.\d{3}x", ratio)
    for name in ("--max-batch 1", "--max-batch 8"):
        _, seconds, rate = row(report, name)
        assert re.fullmatch(SECONDS, seconds) and re.fullmatch(r"\d+\.\d{2}", rate)
    assert re.search(r"`--server` against cold calls: \*\*\d+\.\dx\*\* faster", report)
