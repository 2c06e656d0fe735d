"""The floor for `txt2img --help`: a Typer app with one command and a few options, nothing
imported beyond Typer."""

from typing import Annotated

import typer

app = typer.Typer(add_completion=False)


@app.command()
def main(
    prompt: Annotated[str, typer.Argument(help="What to draw.")],
    steps: Annotated[int, typer.Option("--steps", "-s", help="Denoising steps.")] = 30,
    seed: Annotated[int, typer.Option("--seed", help="Seed.")] = 0,
) -> None:
    """Draw an image."""
    print(prompt, steps, seed)


if __name__ == "__main__":
    app()
