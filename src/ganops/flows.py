"""Prefect flows over the DVC pipeline. DVC stays the source of truth for what is cached:
each task reproduces one stage through `dvc repro`, so unchanged stages are skipped and dvc.lock
stays true. No training logic lives here.

    python -m pipelines.gan_pipeline                 # run the whole pipeline once (pipelines/ is the
                                                     # Prefect entry point beside prefect.yaml)
    ganops flow run | ganops flow serve --cron "0 2 * * *" | ganops flow sweep sweeps/<file>.yaml
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ganops.telemetry import disable_telemetry

if __name__ == "__main__":  # `python -m ganops.flows`: off before Prefect, whose analytics start on import
    disable_telemetry()

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from ganops.config import FlowParams, load_params
from ganops.metrics.report import EvaluationReport
from ganops.paths import ProjectPaths
from ganops.tools import run_tool, tool
from ganops.tracking.registry import RegistryDecision
from ganops.training.report import TrainSummary

# ganops exits with 2 for errors that need a fix (bad params, bad data, missing inputs): retrying
# can't help. Anything else (a service down: 75, a crash) is retried with backoff.
NOT_RETRYABLE = {2}


class StageFailed(RuntimeError):
    def __init__(self, stage: str, exit_code: int | None, message: str) -> None:
        super().__init__(f"stage '{stage}' failed: {message}")
        self.stage, self.exit_code = stage, exit_code


@dataclass
class StageResult:
    stage: str
    ran: bool
    seconds: float


def _dvc(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return run_tool([tool("dvc"), *args], repo)


def stage_names(repo: Path) -> list[str]:
    """The stages of dvc.yaml, dependencies first (DVC's own graph), ties in declared order."""
    import networkx as nx
    from dvc.repo import Repo

    with Repo(str(repo)) as dvc_repo:
        graph = dvc_repo.index.graph  # edges point from a stage to the stages it depends on
        declared = [stage.name for stage in dvc_repo.index.stages]
        names = {stage: stage.name for stage in graph.nodes}
        order = nx.lexicographical_topological_sort(graph.reverse(), key=lambda stage: declared.index(names[stage]))
        return [names[stage] for stage in order]


def _retry_unless_input_error(task, task_run, state) -> bool:
    try:
        state.result()
    except StageFailed as failure:
        return failure.exit_code not in NOT_RETRYABLE
    except Exception:
        return True
    return False


@task(task_run_name="dvc repro {stage}", retry_condition_fn=_retry_unless_input_error)
def reproduce_stage(repo: str, stage: str) -> StageResult:
    """`dvc repro --single-item <stage>`: DVC runs the stage only if its deps, params or outs changed."""
    logger = get_run_logger()
    started = time.perf_counter()
    result = _dvc(Path(repo), "repro", "--single-item", stage)
    output = result.stdout + result.stderr
    if result.returncode != 0:
        match = re.search(r"exited with (\d+)", output)
        errors = [line.removeprefix("error: ") for line in output.splitlines() if line.startswith("error: ")]
        message = errors[-1] if errors else output.strip().splitlines()[-1] if output.strip() else "no output"
        raise StageFailed(stage, int(match.group(1)) if match else None, message)
    ran = f"Running stage '{stage}'" in output
    logger.info("stage %s: %s", stage, "ran" if ran else "unchanged, skipped (DVC cache)")
    return StageResult(stage, ran, round(time.perf_counter() - started, 2))


def _summary(repo: Path, results: list[StageResult]) -> str:
    lines = ["# ganops pipeline run", "", "| stage | result | seconds |", "|---|---|---|"]
    lines += [f"| {r.stage} | {'ran' if r.ran else 'skipped (cached)'} | {r.seconds} |" for r in results]
    paths = ProjectPaths(repo)
    facts = []
    if paths.eval_report.exists():
        report = EvaluationReport.load(paths.eval_report)
        low, high = (float("nan") if bound is None else bound for bound in report.ci95)
        facts.append(f"- {report.primary_metric}: {report.value:.4f} (95% interval {low:.4f} .. {high:.4f})")
    if paths.train_report.exists():
        train = TrainSummary.load(paths.train_report)
        facts.append(f"- training: {train.steps} steps, {train.images_per_s} images/s")
    if paths.mlflow_run.exists():
        facts.append(f"- MLflow run: {json.loads(paths.mlflow_run.read_text()).get('run_id')}")
    if paths.register_report.exists():
        decision = RegistryDecision.load(paths.register_report)
        facts.append(f"- registry: {decision.model_name} v{decision.version}, "
                     f"{'promoted to champion' if decision.promoted else 'not promoted'}: {decision.reason}")
    return "\n".join(lines + ([""] + facts if facts else [])) + "\n"


@flow(name="gan-pipeline", log_prints=True)
def gan_pipeline(repo: str = ".", retries: int | None = None, retry_delay_s: float | None = None) -> list[dict]:
    """Reproduce every DVC stage in dependency order, each as a retried Prefect task."""
    disable_telemetry()  # for this process and the dvc/ganops processes it starts
    root = Path(repo).resolve()
    cfg = load_params(root / "params.yaml").flow
    retries = cfg.retries if retries is None else retries
    delay = cfg.retry_delay_s if retry_delay_s is None else retry_delay_s
    stage_task = reproduce_stage.with_options(retries=retries, retry_delay_seconds=[delay * 2**i for i in range(retries)] or 0)
    results: list[StageResult] = []
    for stage in stage_names(root):
        results.append(stage_task(str(root), stage))
    create_markdown_artifact(_summary(root, results), key="gan-pipeline-summary",
                             description="stages run or skipped, key metrics, MLflow run")
    return [asdict(r) for r in results]


@flow(name="gan-sweep", log_prints=True)
def gan_sweep(spec: str, repo: str = ".", workers: int | None = None, storage: str | None = None,
              register_best: bool | None = None) -> dict:
    """One sweep worker (``ganops sweep``) as a flow run: started from a deployment on several hosts'
    work pool with one storage, the runs share one Optuna study. The ranked table is the run's artifact."""
    disable_telemetry()
    logger = get_run_logger()
    from ganops.sweeps.study import run_sweep

    result = run_sweep(Path(spec), Path(repo), workers, storage, register_best, echo=logger.info)
    table = ProjectPaths(Path(repo)).sweep_table
    if table.exists():
        create_markdown_artifact(f"# sweep {result['study']}\n\n" + table.read_text(), key="gan-sweep-ranking",
                                 description="the sweep's trials, ranked with the registry's noise test")
    return result


def serve_deployment(repo: str = ".", cron: str | None = None, name: str | None = None, cfg: FlowParams | None = None) -> None:
    """Serve the pipeline on a cron schedule (Prefect's `serve`): runs on this machine, no worker needed."""
    disable_telemetry()
    cfg = cfg or load_params(Path(repo) / "params.yaml").flow
    from prefect.client.schemas.schedules import CronSchedule

    gan_pipeline.serve(name=name or cfg.deployment, schedules=[CronSchedule(cron=cron or cfg.cron, timezone=cfg.timezone)],
                       parameters={"repo": str(Path(repo).resolve())}, tags=["ganops"])


def main() -> None:
    disable_telemetry()
    gan_pipeline()


if __name__ == "__main__":
    main()
