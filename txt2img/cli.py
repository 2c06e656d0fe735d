"""The `txt2img` command line: parse, validate, hand one Settings object to the core.

No torch, diffusers or transformers here: `--help` and argument errors stay instant.
"""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperCommand

from . import __version__
from .errors import ExitCode, UsageError, fail, handle_errors
from .prompts import PromptLine, read_prompt_lines
from .schedulers import SCHEDULERS
from .settings import (
    DEFAULT_MODEL,
    DEFAULT_OUTPUT_DIR,
    Device,
    Dtype,
    Existing,
    MemorySavers,
    Settings,
    parse_lora,
    random_seed,
    split_suffix,
    validate,
)

SchedulerName = Enum("SchedulerName", {name: name for name in SCHEDULERS}, type=str)


class OneLineErrors(TyperCommand):
    """Report Typer's own argument errors as one line on stderr, like our errors."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except typer.Abort:
            code = ExitCode.INTERRUPTED
        except Exception as exc:  # Typer's vendored click.ClickException
            if not hasattr(exc, "format_message"):
                raise
            fail(f"{exc.format_message()} (see txt2img --help)")
            code = getattr(exc, "exit_code", ExitCode.USAGE)
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _show_version(value: bool) -> None:
    if value:
        print(f"txt2img {__version__}")
        raise typer.Exit()


@app.command(cls=OneLineErrors)
def txt2img(
    prompt: Annotated[str | None, typer.Argument(help="What to draw.", show_default=False)] = None,
    prompts_file: Annotated[
        str | None,
        typer.Option(
            "--prompts-file",
            "-f",
            help="One prompt per line, with optional per-line options; .jsonl for JSON "
            "objects; - reads standard input.",
        ),
    ] = None,
    model: Annotated[
        str,
        typer.Option(
            "--model",
            "-m",
            envvar="TXT2IMG_MODEL",
            help="Hugging Face Hub id, local diffusers folder, or single-file checkpoint "
            "(.safetensors).",
        ),
    ] = DEFAULT_MODEL,
    negative_prompt: Annotated[
        str, typer.Option("--negative-prompt", "-n", help="What to keep out of the image.")
    ] = "",
    steps: Annotated[
        int | None,
        typer.Option("--steps", "-s", help="Denoising steps (default: 30; Turbo models: 1)."),
    ] = None,
    guidance: Annotated[
        float | None,
        typer.Option(
            "--guidance", "-g", help="Classifier-free guidance scale (default: 7.5; Turbo: 0)."
        ),
    ] = None,
    width: Annotated[
        int | None,
        typer.Option(
            "--width", "-W", help="Image width, a multiple of 8 (default: model's native size)."
        ),
    ] = None,
    height: Annotated[
        int | None,
        typer.Option(
            "--height",
            "-H",
            help="Image height, a multiple of 8 (default: model's native size).",
        ),
    ] = None,
    seed: Annotated[
        int | None,
        typer.Option(
            "--seed", help="Base seed; image i uses seed + i (default: random, printed on stderr)."
        ),
    ] = None,
    num_images: Annotated[
        int, typer.Option("--num-images", "-N", help="Images to make from the prompt.")
    ] = 1,
    scheduler: Annotated[
        SchedulerName | None,
        typer.Option(
            "--scheduler",
            help="Sampler, built from the model's own scheduler config "
            "(default: the model's saved scheduler).",
        ),
    ] = None,
    output_dir: Annotated[
        Path, typer.Option("--output-dir", "-o", help="Folder for the PNGs.")
    ] = DEFAULT_OUTPUT_DIR,
    device: Annotated[
        Device, typer.Option("--device", help="Where to run; auto picks cuda, then mps, then cpu.")
    ] = Device.auto,
    dtype: Annotated[
        Dtype,
        typer.Option("--dtype", help="Weights precision; auto is fp16 on CUDA, else fp32."),
    ] = Dtype.auto,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Print only the image paths.")
    ] = False,
    batch_size: Annotated[
        int,
        typer.Option(
            "--batch-size", "-b", help="Images with the same settings drawn per pipeline call."
        ),
    ] = 1,
    json_lines: Annotated[
        bool, typer.Option("--json", help="One JSON object per image on stdout, not paths.")
    ] = False,
    resume: Annotated[
        bool,
        typer.Option("--resume", help="Skip images already on disk; draw only the missing."),
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace images already on disk.")
    ] = False,
    config: Annotated[
        str | None,
        typer.Option(
            "--config",
            help="For a single-file checkpoint: sd1, sd2, sd2-v, sdxl, or a diffusers config "
            "folder (default: told from the weights).",
        ),
    ] = None,
    offline: Annotated[
        bool,
        typer.Option("--offline", help="Never use the network; Hub models must be cached."),
    ] = False,
    allow_pickle: Annotated[
        bool,
        typer.Option(
            "--allow-pickle",
            help="Allow pickle-based weights (.ckpt/.pt/.bin), read with torch's weights-only "
            "loader. Only for files you trust.",
        ),
    ] = False,
    vae: Annotated[
        str | None,
        typer.Option("--vae", help="Replacement VAE: diffusers folder, .safetensors or Hub id."),
    ] = None,
    lora: Annotated[
        list[str] | None,
        typer.Option(
            "--lora",
            help="LoRA file or Hub id, with an optional :SCALE (default 1). Repeatable.",
        ),
    ] = None,
    embedding: Annotated[
        list[str] | None,
        typer.Option(
            "--embedding",
            help="Textual-inversion embedding, with an optional :TOKEN (default: its file "
            "name). Repeatable.",
        ),
    ] = None,
    save_steps: Annotated[
        int | None,
        typer.Option(
            "--save-steps",
            help="Also write NAME-steps.png: the model's estimate of the clean image every "
            "N steps, from noise to the final picture.",
        ),
    ] = None,
    low_vram: Annotated[
        bool,
        typer.Option(
            "--low-vram",
            help="Fit small GPUs: CPU offload, VAE tiling and slicing, attention slicing.",
        ),
    ] = False,
    cpu_offload: Annotated[
        bool, typer.Option("--cpu-offload", help="Keep each model on the GPU only while it runs.")
    ] = False,
    vae_tiling: Annotated[
        bool, typer.Option("--vae-tiling", help="Decode large images tile by tile.")
    ] = False,
    vae_slicing: Annotated[
        bool, typer.Option("--vae-slicing", help="Decode a batch one image at a time.")
    ] = False,
    attention_slicing: Annotated[
        bool, typer.Option("--attention-slicing", help="Compute attention in slices.")
    ] = False,
    compile_unet: Annotated[
        bool,
        typer.Option(
            "--compile",
            help="torch.compile the U-Net and VAE decoder (slow first run, cached on disk).",
        ),
    ] = False,
    fast: Annotated[
        bool,
        typer.Option(
            "--fast",
            help="The speed-ups measured to win on this device (README: Speed); the "
            "pictures stay visually the same, not bit-identical.",
        ),
    ] = False,
    safety_checker: Annotated[
        bool,
        typer.Option(
            "--safety-checker/--no-safety-checker",
            help="Keep the safety checker of models that ship one.",
        ),
    ] = True,
    keep_going: Annotated[
        bool,
        typer.Option("--keep-going", help="Report a failed image and go on (exit code 8)."),
    ] = False,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_show_version, is_eager=True, help="Show the version."),
    ] = False,
) -> None:
    """Draw images from a text prompt, or from a file of prompts, with a Stable Diffusion model.

    Prints the path of each PNG on stdout as it is written; everything else goes to stderr.

    Every PNG carries its settings: A1111 "parameters" text and a "txt2img" JSON chunk.

    Examples:

        txt2img "a red fox at dawn" --steps 30 --seed 7

        txt2img "a lighthouse" -m stabilityai/sdxl-turbo -N 4 -o out | xargs -n1 echo made

        generate-prompts | txt2img -f - --seed 1 --json --resume -o batch | jq .path
    """
    with handle_errors():
        settings = validate(
            Settings(
                prompts=read_prompts(prompt, prompts_file),
                model=model,
                negative_prompt=negative_prompt,
                steps=steps,
                guidance=guidance,
                width=width,
                height=height,
                seed=random_seed() if seed is None else seed,
                seed_is_random=seed is None,
                num_images=num_images,
                scheduler=scheduler.value if scheduler is not None else None,
                output_dir=output_dir,
                device=device,
                dtype=dtype,
                quiet=quiet,
                batch_size=batch_size,
                json_lines=json_lines,
                existing=existing_policy(resume, overwrite),
                keep_going=keep_going,
                config=config,
                offline=offline,
                allow_pickle=allow_pickle,
                memory=MemorySavers.all()
                if low_vram
                else MemorySavers(cpu_offload, vae_tiling, vae_slicing, attention_slicing),
                compile_unet=compile_unet,
                fast=fast,
                safety_checker=safety_checker,
                vae=vae,
                loras=tuple(parse_lora(value) for value in lora or ()),
                embeddings=tuple(split_suffix(value, "--embedding") for value in embedding or ()),
                save_steps=save_steps,
            )
        )
        from .runner import run

        run(settings)


def read_prompts(prompt: str | None, prompts_file: str | None) -> tuple[PromptLine, ...]:
    if (prompt is None) == (prompts_file is None):
        raise UsageError(
            "give either a PROMPT or --prompts-file, not both"
            if prompt is not None
            else "no prompt given",
            "txt2img 'a red fox', or txt2img -f prompts.txt",
        )
    if prompts_file is not None:
        return tuple(read_prompt_lines(prompts_file))
    return (PromptLine(line=0, prompt=prompt, overrides={}),)


def existing_policy(resume: bool, overwrite: bool) -> Existing:
    if resume and overwrite:
        raise UsageError("--resume and --overwrite contradict each other", "choose one")
    return Existing.skip if resume else Existing.replace if overwrite else Existing.refuse


def main() -> None:
    app(prog_name="txt2img")
