"""The `txt2img` command line: parse, validate, hand one Settings object to the core.

No torch, diffusers or transformers here: `--help` and argument errors stay instant.
"""

from __future__ import annotations

import inspect
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperCommand

from . import __version__
from .errors import ExitCode, UsageError, fail, handle_errors
from .options import (
    BY_KEY,
    OPTIONS,
    SERVE_OPTIONS,
    SERVE_SHARED,
    SERVER_SIDE,
    Option,
    check_prompt,
)
from .prompt.files import PromptLine, read_prompt_lines
from .records.read import print_image_settings
from .records.redraw import values_from_image
from .settings import build_settings


class OneLineErrors(TyperCommand):
    """Report Typer's own argument errors as one line on stderr, like our errors."""

    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)
        except typer.Abort:
            code = ExitCode.INTERRUPTED
        except BrokenPipeError:  # txt2img --help | head -1
            code = ExitCode.STDOUT_CLOSED
        except OSError as exc:  # --help or --version into /dev/full
            fail(f"cannot write to standard output: {exc.strerror or exc}")
            code = ExitCode.OUTPUT
        except Exception as exc:  # Typer's vendored click.ClickException
            if not hasattr(exc, "format_message"):
                raise
            fail(f"{exc.format_message()} (see txt2img --help)")
            code = getattr(exc, "exit_code", ExitCode.USAGE)
        sys.exit(code if isinstance(code, int) else 0)


class DrawCommand(OneLineErrors):
    """The drawing command, which is also the way to the subcommands: `txt2img info ...`
    runs `info`; a prompt that is a subcommand's name is drawn after `--`."""

    def main(self, args: Any = None, *rest: Any, **kwargs: Any) -> Any:
        argv = list(sys.argv[1:] if args is None else args)
        if argv[:1] == ["--"] and len(argv) > 1:  # txt2img -- info -m demo: "info" is the prompt
            argv = [*argv[2:], "--", argv[1]]
        if argv[:1] in (["info"], ["serve"]):
            name = argv[0]
            command = typer.main.get_command(SUBCOMMANDS[name])
            return command.main(argv[1:], *rest, **{**kwargs, "prog_name": f"txt2img {name}"})
        return super().main(argv, *rest, **kwargs)


def _typer_app() -> typer.Typer:
    return typer.Typer(
        add_completion=False,
        rich_markup_mode=None,  # click's plain help: no flag is ever cut short at 80 columns
        context_settings={"help_option_names": ["-h", "--help"]},
    )


app = _typer_app()
info_app = _typer_app()
serve_app = _typer_app()
SUBCOMMANDS = {"info": info_app, "serve": serve_app}


def _show_version(value: bool) -> None:
    if value:
        if sys.stdout is None:  # >&-
            fail("standard output is closed; nowhere to print the version")
            raise typer.Exit(ExitCode.OUTPUT)
        print(f"txt2img {__version__}")
        raise typer.Exit()


def _parameter(option: Option) -> inspect.Parameter:
    """The Typer parameter of one option of `options.OPTIONS`."""
    kind: Any = option.kind
    envvar = option.envvar
    if option.choices is not None:
        kind = Enum(option.key, {choice: choice for choice in option.choices}, type=str)
    if option.repeat and kind is Path:
        # Folders as text (a Path would make "" into "."); their variable is split like
        # PATH by `settings.folders`, not by the command line.
        kind, envvar = str, None
    if option.repeat:
        kind = list[kind]
    if option.default is None:
        kind = kind | None
    flags = (
        (f"{option.flag}/{option.off_flag}", *option.flags[1:]) if option.off_flag else option.flags
    )
    info = typer.Option(
        *flags,
        help=option.help,
        envvar=envvar,
        show_default=option.default not in (None, False, ""),
    )
    return inspect.Parameter(
        option.key, inspect.Parameter.KEYWORD_ONLY, default=option.default,
        annotation=Annotated[kind, info],
    )  # fmt: skip


def txt2img(ctx: typer.Context, prompt: str | None = None, **values: Any) -> None:
    """Draw images from a text prompt, or from a file of prompts, with a Stable Diffusion model.

    Prints the path of each PNG on stdout as it is written; everything else goes to stderr.

    Every PNG carries its settings: A1111 "parameters" text and a "txt2img" JSON chunk.

    \b
    Examples:
      txt2img "a red fox at dawn" --steps 30 --seed 7
      txt2img "a lighthouse" -m stabilityai/sdxl-turbo -N 4 -o out
      generate-prompts | txt2img -f - --seed 1 --json --resume -o batch
      txt2img --from found.png --models-dir ~/models --seed 8

    \b
    Subcommands:
      txt2img info IMAGE...   print the settings images were drawn with
      txt2img serve           keep a model loaded; serve the A1111 HTTP API
    A prompt that is a subcommand's name is drawn after --: txt2img -- info
    """
    values.pop("version", None)
    with handle_errors():
        values = {key: value.value if isinstance(value, Enum) else value
                  for key, value in values.items()}  # fmt: skip
        found = None
        given = {key for key in values if _given(ctx, key)}
        values["server"] = values["server"] or None  # --server '': draw here
        if values["server"] is not None:
            check_server_side(given)
            # Their variables (TXT2IMG_LORA_DIR...) are the local runs' business.
            values.update({key: BY_KEY[key].default for key in SERVER_SIDE})
            if "model" not in given and not _given(ctx, "model", "ENVIRONMENT"):
                values["model"] = None  # the server's current model
        if values["from_image"] is not None:
            prompt, values, found = values_from_image(
                values["from_image"], prompt, values, given, remote=values["server"] is not None
            )
        prompts = read_prompts(prompt, values["prompts_file"])
        settings = build_settings(prompts, values, found)
        from .run import run

        run(settings)


def _given(ctx: typer.Context, key: str, where: str = "COMMANDLINE") -> bool:
    """Whether the user set an option on the command line (or `where`)."""
    source = ctx.get_parameter_source(key)
    return source is not None and source.name == where


def check_server_side(given: set[str]) -> None:
    """With --server, how a model is loaded is the server's: an option that says it is
    refused, not dropped. (Their environment variables are the local runs'.)"""
    for key in SERVER_SIDE:
        if key in given:
            raise UsageError(
                f"{BY_KEY[key].flag} acts where the model is loaded: with --server that is "
                "the server",
                "give it to txt2img serve, or draw here with --server ''",
            )


_CONTEXT = inspect.Parameter(
    "ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context
)
_PROMPT = inspect.Parameter(
    "prompt", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None,
    annotation=Annotated[
        str | None, typer.Argument(help="What to draw.", metavar="PROMPT", show_default=False)
    ],
)  # fmt: skip
_VERSION = inspect.Parameter(
    "version", inspect.Parameter.KEYWORD_ONLY, default=False,
    annotation=Annotated[bool, typer.Option("--version", callback=_show_version, is_eager=True,
                                            help="Show the version.")],
)  # fmt: skip
txt2img.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
    [_CONTEXT, _PROMPT, *(_parameter(option) for option in OPTIONS), _VERSION]
)
txt2img.__annotations__ = {p.name: p.annotation for p in txt2img.__signature__.parameters.values()}
app.command(cls=DrawCommand)(txt2img)


@info_app.command(cls=OneLineErrors)
def info(
    images: Annotated[
        list[Path],
        typer.Argument(help="PNG, JPEG or WebP files.", metavar="IMAGE", show_default=False),
    ],
    json_lines: Annotated[bool, typer.Option("--json", help="One JSON object per image.")] = False,
) -> None:
    """Print the settings each image was drawn with: txt2img's own record, else the
    AUTOMATIC1111 infotext (as A1111, Forge, stable-diffusion.cpp and txt2img write it).

    An image without settings is reported on stderr, and the others are still printed;
    the exit code is then 2.
    """
    with handle_errors():
        failed = print_image_settings(images, json_lines)
    if failed:
        raise typer.Exit(ExitCode.USAGE)


def serve(**values: Any) -> None:
    """Keep models loaded and draw for HTTP clients: AUTOMATIC1111's API (/sdapi/v1/...)
    for its clients, and `txt2img --server URL` for the command line.

    Draws one request at a time, in order of arrival (with --max-batch, queued A1111
    requests with the same settings share a pipeline call). Ctrl-C or SIGTERM stops it.

    \b
    Examples:
      txt2img serve -m stabilityai/sdxl-turbo
      txt2img serve --host 0.0.0.0 --api-auth alice:s3cret --models-dir ~/models
    """
    with handle_errors():
        values = {key: value.value if isinstance(value, Enum) else value
                  for key, value in values.items()}  # fmt: skip
        from .server.config import build_serve_config

        config = build_serve_config(values)
        from .run import quiet_libraries

        quiet_libraries(config.load.offline, config.verbose)
        from .server.app import serve as run_server  # torch, diffusers, fastapi from here on

        run_server(config)


serve.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
    [_parameter(option) for option in (*SERVE_OPTIONS, *(BY_KEY[key] for key in SERVE_SHARED))]
)
serve.__annotations__ = {p.name: p.annotation for p in serve.__signature__.parameters.values()}
serve_app.command(cls=OneLineErrors)(serve)


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
    check_prompt(prompt)
    return (PromptLine(line=0, prompt=prompt, overrides={}),)


def main() -> None:
    app(prog_name="txt2img")
