"""The ganops command line: one command per pipeline stage, each a thin shell over its function."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Callable

import typer

from ganops import GanopsError
from ganops.config import DEFAULT_PARAMS, Params, load_params

app = typer.Typer(
    help="ganops: a production pipeline for image GANs. Each command is one DVC stage (see dvc.yaml).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ParamsOption = typer.Option(DEFAULT_PARAMS, "--params", "-p", help="parameters file", dir_okay=False)


def _run_stage(params_path: Path, stage: Callable[[Params], object]) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        stage(load_params(params_path))
    except GanopsError as error:
        # A user's mistake gets its message, not a traceback.
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(code=1) from None


@app.command()
def prepare(params: Path = ParamsOption) -> None:
    """Validate and normalise the input images into data/prepared/ (train/test arrays + manifest)."""
    from ganops.data import prepare as run

    _run_stage(params, run)


@app.command()
def train(params: Path = ParamsOption) -> None:
    """Train the GAN on data/prepared/; writes models/generator.* and reports/train*."""
    from ganops.training import train as run

    _run_stage(params, run)


@app.command("train-evaluator")
def train_evaluator(params: Path = ParamsOption) -> None:
    """Train the domain classifier (the offline evaluation backbone) on data/prepared/."""
    from ganops.metrics import train_evaluator as run

    _run_stage(params, run)


@app.command()
def evaluate(params: Path = ParamsOption) -> None:
    """Score the trained generator against the real images; writes reports/eval.json."""
    from ganops.metrics import evaluate as run

    _run_stage(params, run)


if __name__ == "__main__":
    app()
