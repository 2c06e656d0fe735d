"""Benchmarks: txt2img against a hand-written diffusers script, `diffusers-cli run`, and
against itself with and without `--fast`. Writes docs/BENCHMARKS.md.

Every comparison runs in this one process tree: each contender is a child process, the
contenders alternate (the order rotates from round to round), and every figure in the
report is a median over the runs with its spread (lowest and highest) and the ratio to
txt2img. An untimed warm-up round comes first, so the page cache and Python's bytecode
cache are warm for everyone.

Sections (``--sections``, default all):

- startup: ``txt2img --help`` against a bare Typer app; command to first PNG with the demo
  model against the minimal diffusers script and ``diffusers-cli run``.
- batch: ``--prompts`` prompts from a file against a hand-written diffusers loop that loads
  once, and against one ``diffusers-cli run`` per prompt.
- fidelity: the demo model's images with ``--fast`` against the default path, pixel by pixel.
- steps: full-size step time, SD 1.5 at 512x512 and SDXL at 1024x1024: diffusers defaults,
  then each speed-up added one at a time (SD 1.5), and ``--fast``.
- memory: load time and peak resident memory of the SD 1.5-size fp16 safetensors folder.
- gpu: on CUDA, SD 1.5 512x512 50 steps and SDXL 1024x1024 30 steps end to end, default
  against ``--fast``, with peak VRAM (reported as not measured when there is no GPU).
- server: ``--calls`` one-image ``txt2img`` calls, each a cold process, against the same
  calls with ``--server`` to a running ``txt2img serve``; and 8 concurrent A1111 API
  requests with ``--max-batch 1`` against ``--max-batch 8``.

The full-size models are built from the published SD 1.5 and SDXL configs shipped in
``txt2img/model/configs`` with random weights (speed does not depend on the values), saved once
as fp16 safetensors under ``--cache``. Nothing is downloaded.

Usage::

    python scripts/bench.py --out docs/BENCHMARKS.md [--sections startup,batch] [--runs 5]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from txt2img.options import STANDARD  # txt2img's defaults, so every contender draws alike

ROOT = Path(__file__).resolve().parent.parent
BASELINES = ROOT / "scripts" / "baselines"
SECTIONS = ("startup", "batch", "fidelity", "steps", "memory", "gpu", "server")
DEMO_PROMPT = "a red square on a white background"
BIN = Path(sys.executable).parent


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------- measuring


@dataclass
class Sample:
    seconds: float
    peak_rss: int  # bytes, the largest of the run's processes
    output: str = ""  # the last process's stdout


def run_timed(commands: list[list[str]], env: dict[str, str]) -> Sample:
    """Run `commands` one after another; wall time of all, peak RSS of the largest."""
    peak, started, output = 0, time.perf_counter(), ""
    for argv in commands:
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            process = subprocess.Popen(argv, stdout=out, stderr=err, env=env, cwd=ROOT)
            _, status, usage = os.wait4(process.pid, 0)
            process.returncode = os.waitstatus_to_exitcode(status)
            if process.returncode != 0:
                err.seek(0)
                tail = err.read().decode(errors="replace")[-3000:]
                raise RuntimeError(f"{shlex.join(argv)} failed ({process.returncode}):\n{tail}")
            out.seek(0)
            output = out.read().decode()
        peak = max(peak, usage.ru_maxrss * 1024)  # Linux reports KiB
    return Sample(time.perf_counter() - started, peak, output)


@dataclass
class Contender:
    name: str
    commands: Callable[[Path], list[list[str]]]  # given a fresh output folder
    check: Callable[[Path, Sample], None] = lambda folder, sample: None
    samples: list[Sample] = field(default_factory=list)


def compare(contenders: list[Contender], runs: int, env: dict[str, str], warmup: int) -> None:
    """Alternate the contenders, rotating their order each round. A warm-up round, untimed,
    runs only each contender's first process: enough to warm the page cache."""
    for round_ in range(warmup + runs):
        shift = round_ % len(contenders)
        for contender in contenders[shift:] + contenders[:shift]:
            with tempfile.TemporaryDirectory() as folder:
                commands = contender.commands(Path(folder))
                if round_ < warmup:
                    run_timed(commands[:1], env)
                    continue
                sample = run_timed(commands, env)
                contender.check(Path(folder), sample)
            contender.samples.append(sample)
            log(f"{contender.name}: {sample.seconds:.3f} s")


def median(values: list[float]) -> float:
    return statistics.median(values)


def seconds_cell(values: list[float]) -> str:
    """Median with the spread: '1.234 s (1.200-1.300)'."""
    return f"{median(values):.3f} s ({min(values):.3f}-{max(values):.3f})"


def mib(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def comparison_table(contenders: list[Contender], reference: str) -> str:
    ref = median([s.seconds for s in next(c for c in contenders if c.name == reference).samples])
    rows = []
    for c in contenders:
        times = [s.seconds for s in c.samples]
        rows.append(
            [
                c.name,
                seconds_cell(times),
                f"{median(times) / ref:.3f}x",
                mib(max(s.peak_rss for s in c.samples)),
            ]
        )
    return table(["contender", "wall time, median (min-max)", f"vs {reference}", "peak RSS"], rows)


# -------------------------------------------------------------------------- contenders


def base_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1", PYTHONUNBUFFERED="1")
    env.pop("TXT2IMG_MODEL", None)
    return env


def txt2img_argv(*args: str) -> list[str]:
    script = BIN / "txt2img"
    return [str(script), *args] if script.exists() else [sys.executable, "-m", "txt2img", *args]


def demo_file_argv(prompts_file: Path, out: Path, *extra: str) -> list[str]:
    """txt2img drawing a prompts file with the demo model, seeds 1, 2, ..., quietly."""
    return txt2img_argv("-f", str(prompts_file), "-m", "demo", "--seed", "1", "-q", "-o",
                        str(out), *extra)  # fmt: skip


def demo_model() -> str:
    from txt2img.model.source import DEMO_MODEL

    return str(DEMO_MODEL)


def diffusers_cli_argv(prompt: str, seed: int, target: Path, steps: int) -> list[str]:
    kwargs = {
        "prompt": prompt,
        "num_inference_steps": steps,
        "guidance_scale": STANDARD.guidance,
    }
    return [
        str(BIN / "diffusers-cli"),
        "run",
        "-m",
        demo_model(),
        "--dtype",
        "fp32",
        "--pipeline-kwargs",
        json.dumps(kwargs),
        "--seed",
        str(seed),
        "-o",
        str(target),
    ]


def loop_argv(prompts_file: Path, out: Path, steps: int) -> list[str]:
    """The hand-written diffusers loop (scripts/baselines/diffusers_loop.py)."""
    script = BASELINES / "diffusers_loop.py"
    return [sys.executable, str(script), demo_model(), str(prompts_file), str(out), "1", str(steps)]


def expect_pngs(count: int) -> Callable[[Path, Sample], None]:
    def check(folder: Path, sample: Sample) -> None:
        found = len(list(folder.rglob("*.png")))
        if found != count:
            raise RuntimeError(f"expected {count} PNGs in {folder}, found {found}")

    return check


def demo_prompts(count: int) -> list[str]:
    sys.path.insert(0, str(ROOT / "scripts"))
    import demo_data

    scenes = demo_data.eval_scenes(count, held_out=False, seed=7)
    return [scene.caption() for scene in scenes]


def startup_section(args: argparse.Namespace, env: dict[str, str]) -> str:
    log("startup: --help")
    help_contenders = [
        Contender("txt2img --help", lambda _: [txt2img_argv("--help")]),
        Contender(
            "bare Typer app --help",
            lambda _: [[sys.executable, str(BASELINES / "bare_typer.py"), "--help"]],
        ),
    ]
    compare(help_contenders, args.runs * 2, env, args.warmup)

    log("startup: command to first PNG")
    steps = ("--steps", str(args.demo_steps))
    prompts_file = args.work / "one-prompt.txt"
    prompts_file.write_text(DEMO_PROMPT + "\n")
    png_contenders = [
        Contender(
            "txt2img",
            lambda out: [
                txt2img_argv(DEMO_PROMPT, "-m", "demo", "--seed", "1", *steps, "-q", "-o", str(out))
            ],
            expect_pngs(1),
        ),
        Contender(
            "minimal diffusers script",
            lambda out: [loop_argv(prompts_file, out, args.demo_steps)],
            expect_pngs(1),
        ),
        Contender(
            "diffusers-cli run",
            lambda out: [diffusers_cli_argv(DEMO_PROMPT, 1, out / "0.png", args.demo_steps)],
            expect_pngs(1),
        ),
    ]
    compare(png_contenders, args.runs, env, args.warmup)
    return STARTUP.format(
        help_table=comparison_table(help_contenders, "txt2img --help"),
        png_table=comparison_table(png_contenders, "txt2img"),
        prompt=DEMO_PROMPT,
        steps=args.demo_steps,
    )


STARTUP = """\
## 1. Start-up

`--help` and argument errors never import torch or diffusers, so `txt2img --help` costs
about what any Typer program costs (the bare app is `scripts/baselines/bare_typer.py`):

{help_table}

From the command to the first PNG on disk, with the demo model shipped in the package
(`"{prompt}"`, {steps} steps, guidance 7.5, fp32 on the CPU, seed 1). The minimal diffusers
script is `scripts/baselines/diffusers_loop.py` with a one-line prompts file;
`diffusers-cli run` gets the same settings through `--pipeline-kwargs` and `--dtype fp32`.
Each is a new process:
imports, model load, {steps} steps, VAE decode, PNG write.

{png_table}
"""


def batch_section(args: argparse.Namespace, env: dict[str, str]) -> str:
    prompts = demo_prompts(args.prompts)
    prompts_file = args.work / "prompts.txt"
    prompts_file.write_text("\n".join(prompts) + "\n")
    log(f"batch: {len(prompts)} prompts")
    steps = ("--steps", str(args.demo_steps))
    contenders = [
        Contender(
            "txt2img -f",
            lambda out: [demo_file_argv(prompts_file, out, *steps)],
            expect_pngs(len(prompts)),
        ),
        Contender(
            "hand-written diffusers loop",
            lambda out: [loop_argv(prompts_file, out, args.demo_steps)],
            expect_pngs(len(prompts)),
        ),
        Contender(
            "diffusers-cli run per prompt",
            lambda out: [
                diffusers_cli_argv(p, 1 + i, out / f"{i}.png", args.demo_steps)
                for i, p in enumerate(prompts)
            ],
            expect_pngs(len(prompts)),
        ),
    ]
    compare(contenders, args.runs, env, args.warmup)
    ours, loop, per_prompt = (median([s.seconds for s in c.samples]) for c in contenders)
    overhead = ours / loop - 1
    return BATCH.format(
        n=len(prompts),
        table=comparison_table(contenders, "txt2img -f"),
        overhead=f"{100 * overhead:+.1f}%",
        verdict="met" if overhead <= 0.03 else "NOT met",
        saved=f"{per_prompt - ours:.1f} s",
        per_image=f"{(per_prompt - ours) / len(prompts):.2f} s",
        steps=args.demo_steps,
    )


BATCH = """\
## 2. Batch

{n} prompts from a file (demo-model captions, {steps} steps, guidance 7.5, fp32, seeds 1, 2, …),
each run a new process tree. txt2img writes every PNG with its metadata, through a temporary
file that is synced and linked into place, and reports progress on stderr; the hand-written
loop (`scripts/baselines/diffusers_loop.py`) only calls the pipeline and `Image.save`.

{table}

txt2img against the hand-written loop: **{overhead}** (goal: at most +3%: {verdict}).
Against one `diffusers-cli run` per prompt it saves {saved} ({per_image} per image): the
imports and the model load that each of those processes repeats.
"""


def fidelity_section(args: argparse.Namespace, env: dict[str, str]) -> str:
    """The demo model's pictures with --fast against the default path."""
    import numpy as np
    from PIL import Image

    sys.path.insert(0, str(ROOT / "scripts"))
    import demo_data

    prompts = demo_prompts(args.prompts)
    prompts_file = args.work / "fidelity.txt"
    prompts_file.write_text("\n".join(prompts) + "\n")
    images, speedups = {}, []
    for name, extra in (("default", []), ("fast", ["--fast"])):
        out = args.work / f"fidelity-{name}"
        shutil.rmtree(out, ignore_errors=True)
        sample = run_timed(
            [demo_file_argv(prompts_file, out, "--json", *extra)],
            env,
        )
        records = [json.loads(line) for line in sample.output.splitlines()]
        images[name] = [np.asarray(Image.open(r["path"]).convert("RGB")) for r in records]
        speedups = records[0]["speedups"]  # the fast run's, being the last
    a = np.stack(images["default"]).astype(np.int16)
    b = np.stack(images["fast"]).astype(np.int16)
    diff = np.abs(a - b)
    agree = sum(
        demo_data.measure(x) == demo_data.measure(y)
        for x, y in zip(images["default"], images["fast"], strict=True)
    )
    rows = [
        [
            ", ".join(speedups) or "none",
            str(len(prompts)),
            f"{diff.mean():.2f}",
            f"{np.percentile(diff, 99):.0f}",
            f"{diff.max()}",
            f"{agree} of {len(prompts)}",
        ]
    ]
    header = [
        "--fast parts here",
        "images",
        "mean |Δ| (8-bit levels)",
        "99th percentile",
        "max",
        "same shape, colours, position, size",
    ]
    return FIDELITY.format(table=table(header, rows))


FIDELITY = """\
## 3. Fidelity of the fast path

The demo model's pictures for the batch prompts, default path against `--fast` (same seeds),
compared pixel by pixel, and read back with the demo model's evaluation measures
(`scripts/demo_data.py`, `measure`):

{table}
"""


# ---------------------------------------------------------------------- full-size models


def build_full_size(family: str, folder: Path) -> Path:
    """A pipeline folder with the real architecture (txt2img/model/configs/FAMILY) and random
    fp16 weights, built once."""
    if (folder / "model_index.json").is_file():
        return folder
    import diffusers
    import torch
    import transformers

    from txt2img.model.source import readable_config

    source = ROOT / "txt2img" / "model" / "configs" / family
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    with readable_config(source) as readable:  # the shared CLIP vocabulary linked in
        shutil.copytree(readable, partial)  # (links copied as the files they name)
    torch.manual_seed(0)
    index = json.loads((source / "model_index.json").read_text())
    for name, entry in index.items():
        if not isinstance(entry, list) or None in entry:
            continue  # "_class_name", flags, and parts left out (safety checker)
        library, class_name = entry
        if name.startswith("tokenizer") or name == "scheduler":
            continue
        log(f"building a random {family} {name} ({class_name})")
        if library == "diffusers":
            cls = getattr(diffusers, class_name)
            model = cls.from_config(cls.load_config(source / name))
        else:
            cls = getattr(transformers, class_name)
            model = cls(cls.config_class.from_pretrained(source / name))
        model.to(torch.float16).save_pretrained(partial / name, safe_serialization=True)
        del model
    partial.rename(folder)
    return folder


def full_size(args: argparse.Namespace, family: str) -> Path:
    names = {"sd1": "sd15-random-fp16", "sdxl": "sdxl-random-fp16"}
    return build_full_size(family, args.cache / names[family])


def weights_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*.safetensors"))


# ------------------------------------------------------------------------------ worker


def worker(args: argparse.Namespace) -> None:
    """In a child process: load one way, run `--steps` steps, print the timings as JSON."""
    import resource

    import torch

    rss_imports = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    device = torch.device(args.device)
    parts = tuple(p for p in args.parts.split(",") if p)
    started = time.perf_counter()
    if args.via == "diffusers":
        from diffusers import DiffusionPipeline

        dtype = torch.float16 if device.type == "cuda" else torch.float32
        pipe = DiffusionPipeline.from_pretrained(args.model, torch_dtype=dtype)
        pipe.to(device)
    else:
        pipe = load_with_txt2img(args.model, device, parts, args.dtype)
    sync(device)
    load_seconds = time.perf_counter() - started
    result = {"load_s": load_seconds, "rss_after_imports": rss_imports}
    if args.steps:
        result.update(timed_call(pipe, device, args))
    result["peak_rss_self"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if device.type == "cuda":
        result["peak_vram"] = torch.cuda.max_memory_allocated(device)
    print(json.dumps(result))


def load_with_txt2img(model: str, device, parts: tuple[str, ...], dtype_name: str):
    """txt2img's own loading path, with exactly the speed-ups in `parts`."""

    from txt2img.model.load import open_model
    from txt2img.model.source import plan_model
    from txt2img.settings import Device, Dtype, LoadOptions

    options = LoadOptions(device=Device(device.type), dtype=Dtype(dtype_name), safety_checker=False)
    return open_model(plan_model(model), options, speedups=parts).pipe


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_call(pipe, device, args: argparse.Namespace) -> dict:
    """One pipeline call; the time of every step (from the step-end callbacks), and of
    the VAE decode after the last step (none with --no-decode)."""
    import torch

    pipe.set_progress_bar_config(disable=True)
    marks: list[float] = []

    def on_step_end(pipeline, step, timestep, tensors):
        sync(device)
        marks.append(time.perf_counter())
        return tensors

    started = time.perf_counter()
    pipe(
        prompt="a photo of a red fox in the snow, golden hour",
        num_inference_steps=args.steps,
        guidance_scale=STANDARD.guidance,
        width=args.size,
        height=args.size,
        generator=torch.Generator("cpu").manual_seed(0),
        output_type="latent" if args.no_decode else "pil",
        callback_on_step_end=on_step_end,
    )
    sync(device)
    ended = time.perf_counter()
    return {
        "first_step_s": marks[0] - started,  # also encodes the prompt (and compiles)
        "step_s": [b - a for a, b in itertools.pairwise(marks)],
        "decode_s": None if args.no_decode else ended - marks[-1],
        "call_s": ended - started,
    }


def worker_argv(model: Path, via: str, parts: tuple[str, ...], **options) -> list[str]:
    argv = [
        sys.executable,
        __file__,
        "worker",
        "--model",
        str(model),
        "--via",
        via,
        "--parts",
        ",".join(parts),
    ]
    for key, value in options.items():
        if value is True:
            argv.append("--" + key.replace("_", "-"))
        elif value is not None and value is not False:  # 0 steps is a value
            argv += ["--" + key.replace("_", "-"), str(value)]
    return argv


def worker_results(contender: Contender) -> list[dict]:
    return [json.loads(s.output) for s in contender.samples]


# ------------------------------------------------------------------- steps and memory


LADDER = (
    ("diffusers defaults (fp32, SDPA)", "diffusers", ()),
    ("+ bf16", "txt2img", ("bf16",)),
    ("+ channels_last", "txt2img", ("bf16", "channels_last")),
    ("+ fused QKV projections", "txt2img", ("bf16", "channels_last", "fused_qkv")),
    (
        "+ torch.compile (U-Net, VAE decoder)",
        "txt2img",
        ("bf16", "channels_last", "fused_qkv", "compile"),
    ),
)


def step_contenders(model: Path, rungs, size: int, steps: int) -> list[Contender]:
    contenders = []
    for name, via, parts in rungs:
        argv = worker_argv(model, via, parts, device="cpu", size=size, steps=steps, no_decode=True)
        contenders.append(Contender(name, lambda _, argv=argv: [argv]))
    return contenders


def step_rows(contenders: list[Contender]) -> list[list[str]]:
    base = None
    rows, previous = [], None
    for c in contenders:
        results = worker_results(c)
        steps = [s for r in results for s in r["step_s"]]
        step = median(steps)
        base = base or step
        firsts = [r["first_step_s"] for r in results]
        rows.append(
            [
                c.name,
                f"{step:.2f} s ({min(steps):.2f}-{max(steps):.2f})",
                f"{base / step:.2f}x",
                f"{previous / step:.2f}x" if c.name.startswith("+") else "",
                f"{median(firsts):.1f} s",
                f"{median([r['load_s'] for r in results]):.1f} s",
                mib(max(s.peak_rss for s in c.samples)),
            ]
        )
        previous = step
    return rows


STEP_HEADER = [
    "settings",
    "step time, median (min-max)",
    "speed-up",
    "this part bought",
    "first step (prompt encoding, compile)",
    "load",
    "peak RSS",
]


def steps_section(args: argparse.Namespace, env: dict[str, str]) -> str:
    from txt2img.model.fast import FAST_PATH

    sd15 = full_size(args, "sd1")
    sdxl = full_size(args, "sdxl")
    compile_cache = args.work / "inductor-cache"
    shutil.rmtree(compile_cache, ignore_errors=True)
    env = {**env, "TORCHINDUCTOR_CACHE_DIR": str(compile_cache)}
    fast = tuple(FAST_PATH["cpu"])
    log("steps: SD 1.5 512x512, each speed-up added in turn")
    rungs = [*LADDER, (f"txt2img --fast ({', '.join(fast)})", "txt2img", fast)]
    ladder = step_contenders(sd15, rungs, 512, args.sd15_steps)
    # A first compiled run fills the empty cache: its first step is the cold compile.
    try:
        cold_run = run_timed(ladder[-2].commands(args.work), env)
        cold_first = f"{json.loads(cold_run.output)['first_step_s']:.0f} s"
    except RuntimeError as exc:
        log(f"torch.compile failed here, left out: {exc}")
        cold_first = f"failed, so compile is left out here ({str(exc).splitlines()[-1][:200]})"
        del ladder[-2]
    compare(ladder, args.slow_runs, env, warmup=0)
    log("steps: SDXL 1024x1024, diffusers defaults against --fast")
    xl = step_contenders(
        sdxl,
        [LADDER[0], (f"txt2img --fast ({', '.join(fast)})", "txt2img", fast)],
        1024,
        args.sdxl_steps,
    )
    compare(xl, args.sdxl_runs, env, warmup=0)
    return STEPS.format(
        sd15_table=table(STEP_HEADER, step_rows(ladder)),
        sdxl_table=table(STEP_HEADER, step_rows(xl)),
        cold=cold_first,
        sd15_steps=args.sd15_steps,
        sdxl_steps=args.sdxl_steps,
        fast=", ".join(fast),
    )


STEPS = """\
## 4. Full-size step time on the CPU

Random-weight models with the published architectures (SD 1.5: U-Net 860M parameters; SDXL:
U-Net 2.6B), fp16 safetensors on disk, one process per run, batch 1 with classifier-free
guidance (the U-Net sees 2 latents per step). A run makes {sd15_steps} (SD 1.5) or
{sdxl_steps} (SDXL) steps; the step time is the median over every step after the first in
every run (the first also encodes the prompt and, compiled, waits for the compiler). No VAE
decode here. "diffusers defaults" is `DiffusionPipeline.from_pretrained(folder)` on the CPU
(fp32, SDPA attention); the other rows load through txt2img's own code with the named
speed-ups, cumulatively.

SD 1.5, 512x512:

{sd15_table}

The compile row's first step with an empty compile cache (the compiler's own cost, paid once
per machine and shape): {cold}. Its runs above found the cache warm.

SDXL, 1024x1024, `--fast` on this machine's CPU ({fast}):

{sdxl_table}
"""


def memory_section(args: argparse.Namespace, env: dict[str, str]) -> str:
    sd15 = full_size(args, "sd1")
    on_disk = weights_bytes(sd15)
    contenders = [
        Contender(
            f"txt2img load, {dtype}",
            lambda _, d=dtype: [worker_argv(sd15, "txt2img", (), device="cpu", dtype=d, steps=0)],
        )
        for dtype in ("fp16", "fp32")
    ] + [
        Contender(
            "diffusers from_pretrained (fp32)",
            lambda _: [worker_argv(sd15, "diffusers", (), device="cpu", steps=0)],
        ),
    ]
    log("memory: loading the SD 1.5-size folder")
    compare(contenders, args.slow_runs, env, warmup=1)
    rows = []
    for c, in_memory in zip(contenders, (on_disk, 2 * on_disk, 2 * on_disk), strict=True):
        results = worker_results(c)
        peak = max(s.peak_rss for s in c.samples)
        imports = median([r["rss_after_imports"] for r in results])
        rows.append(
            [
                c.name,
                seconds_cell([r["load_s"] for r in results]),
                mib(imports),
                mib(peak),
                mib(in_memory),
                f"{(peak - imports) / in_memory:.2f}x",
            ]
        )
    return MEMORY.format(
        size=mib(on_disk),
        table=table(
            [
                "load",
                "load time, median (min-max)",
                "RSS after imports",
                "peak RSS",
                "weights in memory",
                "(peak - imports) / weights",
            ],
            rows,
        ),
    )


MEMORY = """\
## 5. Load time and peak memory

The SD 1.5-size folder ({size} of fp16 safetensors), loaded on the CPU with a warm page cache,
in a fresh process per run. "Weights in memory" is the size of the parameters once loaded
(the file size in fp16, twice that in fp32). The last column is the memory the load added,
over the weights it holds: 1.00x means no copy beyond the weights themselves (goal: within
1.3x).

{table}
"""


def gpu_section(args: argparse.Namespace, env: dict[str, str]) -> str:
    import torch

    if not torch.cuda.is_available():
        return GPU_NONE
    from txt2img.model.fast import FAST_PATH

    fast = tuple(FAST_PATH["cuda"])
    rows = []
    for family, size, steps in (("sd1", 512, 50), ("sdxl", 1024, 30)):
        model = full_size(args, family)
        contenders = [
            Contender(
                "diffusers defaults (fp16, SDPA)",
                lambda _, m=model, s=size, n=steps: [
                    worker_argv(m, "diffusers", (), device="cuda", size=s, steps=n)
                ],
            ),
            Contender(
                f"txt2img --fast ({', '.join(fast)})",
                lambda _, m=model, s=size, n=steps: [
                    worker_argv(m, "txt2img", fast, device="cuda", size=s, steps=n)
                ],
            ),
            Contender(
                "txt2img --fast --compile (warm cache)",
                lambda _, m=model, s=size, n=steps: [
                    worker_argv(m, "txt2img", (*fast, "compile"), device="cuda", size=s, steps=n)
                ],
            ),
        ]
        compare(contenders, args.slow_runs, env, warmup=1)
        for c in contenders:
            results = worker_results(c)
            calls = [r["call_s"] for r in results]
            rows.append(
                [
                    f"{family} {size}x{size}, {steps} steps",
                    c.name,
                    seconds_cell(calls),
                    f"{steps / median(calls):.1f} it/s",
                    f"{median([r['first_step_s'] for r in results]):.2f} s",
                    mib(max(r["peak_vram"] for r in results)),
                ]
            )
    name = torch.cuda.get_device_name(0)
    return GPU.format(
        gpu=name,
        table=table(
            [
                "model",
                "settings",
                "end to end, median (min-max)",
                "rate",
                "first step (prompt encoding, compile)",
                "peak VRAM",
            ],
            rows,
        ),
    )


GPU_NONE = """\
## 6. GPU

Not measured: the machine that wrote this report has no CUDA device. Run the same command on
one to fill this section (SD 1.5 512x512 50 steps and SDXL 1024x1024 30 steps, default
against `--fast`, with peak VRAM).
"""

GPU = """\
## 6. GPU ({gpu})

End to end (prompt encoding, every step, VAE decode), one call after loading, batch 1 with
classifier-free guidance, fp16. The untimed warm-up round fills the compile cache, so the
compiled rows show a warm cache's per-process cost in their first step:

{table}
"""


# ------------------------------------------------------------------------------ report


def start_server(env: dict[str, str], *options: str) -> tuple[subprocess.Popen, str]:
    """A `txt2img serve` of the demo model on a free port, and its URL once it listens."""
    process = subprocess.Popen(
        txt2img_argv("serve", "-m", "demo", "--port", "0", *options),
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env, cwd=ROOT,
    )  # fmt: skip
    for line in process.stderr:
        if "txt2img serve: serving" in line:
            url = line.split(" on ", 1)[1].split()[0]
            threading.Thread(target=lambda: process.stderr.read(), daemon=True).start()
            return process, url
    raise RuntimeError(f"txt2img serve did not start (exit code {process.wait()})")


def stop_server(process: subprocess.Popen) -> None:
    process.terminate()
    if process.wait(timeout=120) != 0:
        raise RuntimeError(f"txt2img serve exited with {process.returncode}")


def concurrent_requests(url: str, count: int, steps: int) -> float:
    """Seconds for `count` one-image A1111 requests sent at once (different seeds)."""
    import urllib.request

    def request(seed: int) -> None:
        body = {"prompt": DEMO_PROMPT, "seed": seed, "steps": steps, "width": 64, "height": 64}
        call = urllib.request.Request(f"{url}/sdapi/v1/txt2img", json.dumps(body).encode(),
                                      {"Content-Type": "application/json"})  # fmt: skip
        with urllib.request.urlopen(call, timeout=600) as answer:
            if len(json.load(answer)["images"]) != 1:
                raise RuntimeError("a request came back without its image")

    threads = [threading.Thread(target=request, args=(seed,)) for seed in range(count)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started


def server_section(args: argparse.Namespace, env: dict[str, str]) -> str:
    calls = args.calls
    log(f"server: {calls} one-image calls, cold and with --server")
    process, url = start_server(env)

    def each_call(out: Path, *extra: str) -> list[list[str]]:
        return [txt2img_argv(DEMO_PROMPT, "-m", "demo", "--seed", str(i), "--steps",
                             str(args.demo_steps), "-q", "-o", str(out), *extra)
                for i in range(calls)]  # fmt: skip

    contenders = [
        Contender(f"{calls} x txt2img", each_call, expect_pngs(calls)),
        Contender(
            f"{calls} x txt2img --server",
            lambda out: each_call(out, "--server", url),
            expect_pngs(calls),
        ),
    ]
    try:
        compare(contenders, args.runs, env, args.warmup)
    finally:
        stop_server(process)
    cold, served = (median([s.seconds for s in c.samples]) for c in contenders)
    rows = []
    for max_batch in (1, 8):
        log(f"server: 8 concurrent requests, --max-batch {max_batch}")
        process, url = start_server(env, "--max-batch", str(max_batch), "--queue-size", "16")
        try:
            concurrent_requests(url, 8, args.demo_steps)  # warm-up
            times = [concurrent_requests(url, 8, args.demo_steps) for _ in range(args.runs)]
        finally:
            stop_server(process)
        rows.append([f"--max-batch {max_batch}", seconds_cell(times),
                     f"{8 / median(times):.2f}"])  # fmt: skip
    return SERVER.format(
        calls=calls,
        table=comparison_table(contenders, f"{calls} x txt2img"),
        speedup=f"{cold / served:.1f}x",
        verdict="met" if cold / served >= 5 else "NOT met",
        throughput=table(["server", "8 requests, median (min-max)", "images/s"], rows),
        steps=args.demo_steps,
        prompt=DEMO_PROMPT,
    )


SERVER = """\
## 7. Server

{calls} one-image calls with the demo model (`"{prompt}"`, {steps} steps, fp32 on the CPU,
seeds 0, 1, ...), one after another as a shell loop makes them: each a new `txt2img`
process that imports torch and loads the model, against the same calls with `--server` to
a `txt2img serve -m demo` started once before them (its start-up, paid once, is not in the
times). A `--server` call imports no torch; it sends its jobs and writes the PNGs itself.

{table}

`--server` against cold calls: **{speedup}** faster (goal: at least 5x: {verdict}).

8 A1111 API requests sent at once (64x64, {steps} steps, different seeds): each drawn alone
(`--max-batch 1`, the default) against queued requests with the same settings drawn
together, up to 8 in one pipeline call (`--max-batch 8`).

{throughput}
"""


def machine() -> str:
    import diffusers
    import torch
    import transformers

    import txt2img

    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    memory = next(
        (
            int(line.split()[1]) * 1024
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal")
        ),
        0,
    )
    commit = subprocess.run(
        ["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    return (
        f"- machine: {cpu}, {os.cpu_count()} CPU cores, {memory / 2**30:.0f} GiB RAM, "
        f"{platform.platform()}\n"
        f"- Python {platform.python_version()}, torch {torch.__version__}, diffusers "
        f"{diffusers.__version__}, transformers {transformers.__version__}, txt2img "
        f"{txt2img.__version__} ({commit or 'no git'})"
    )


def report(sections: list[str], command: str, started: float) -> str:
    return (
        "# Benchmarks\n\n"
        "Written by `scripts/bench.py`; every figure below was measured in the run that wrote "
        f"this file, on {time.strftime('%Y-%m-%d')}, which took "
        f"{(time.time() - started) / 60:.0f} min.\n\n"
        f"{machine()}\n- command: `{command}`\n\n" + "\n".join(sections)
    )


RUNNERS = {
    "startup": startup_section,
    "batch": batch_section,
    "fidelity": fidelity_section,
    "steps": steps_section,
    "memory": memory_section,
    "gpu": gpu_section,
    "server": server_section,
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["worker"]:
        parser = argparse.ArgumentParser(prog="bench.py worker")
        parser.add_argument("--model", required=True)
        parser.add_argument("--via", choices=("diffusers", "txt2img"), required=True)
        parser.add_argument("--parts", default="")
        parser.add_argument("--device", default="cpu")
        parser.add_argument("--dtype", default="auto")
        parser.add_argument("--size", type=int, default=512)
        parser.add_argument("--steps", type=int, default=3)
        parser.add_argument("--no-decode", action="store_true")
        worker(parser.parse_args(argv[1:]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="the markdown report")
    parser.add_argument("--sections", default=",".join(SECTIONS))
    parser.add_argument("--runs", type=int, default=3, help="timed runs of quick comparisons")
    parser.add_argument("--slow-runs", type=int, default=3, help="timed runs of SD 1.5-size ones")
    parser.add_argument("--sdxl-runs", type=int, default=2, help="timed runs of SDXL-size ones")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument("--prompts", type=int, default=20, help="prompts in the batch")
    parser.add_argument("--calls", type=int, default=20, help="one-image calls (server)")
    parser.add_argument(
        "--demo-steps", type=int, default=STANDARD.steps,
        help="steps of the demo-model sections (startup, batch, server)",
    )  # fmt: skip
    parser.add_argument("--sd15-steps", type=int, default=3)
    parser.add_argument("--sdxl-steps", type=int, default=3)
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path.home() / ".cache" / "txt2img-bench",
        help="where the full-size random-weight models are built once",
    )
    args = parser.parse_args(argv)
    chosen = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = set(chosen) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
    if min(args.sd15_steps, args.sdxl_steps) < 2:
        parser.error("step counts must be at least 2: the first step also encodes the prompt")
    started = time.time()
    args.cache.mkdir(parents=True, exist_ok=True)
    env = base_env()
    with tempfile.TemporaryDirectory(prefix="txt2img-bench-") as work:
        args.work = Path(work)
        sections = [RUNNERS[name](args, env) for name in SECTIONS if name in chosen]
    command = shlex.join(["python", "scripts/bench.py", *argv])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report(sections, command, started), encoding="utf-8")
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
