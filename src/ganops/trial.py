"""A sweep's trial, seen from inside the pipeline it runs: what the sweep (ganops.sweeps) hands the
train stage through the environment, and the reporter that gives the Optuna study each in-training
evaluation and asks its pruner whether to go on.

The sweep starts each trial's `dvc repro` with ``TRIAL_ENV`` set to a ``TrialContext`` as JSON; the
train stage finds it with ``TrialReporter.from_environment()``. Outside a sweep the variable is
unset and nothing here runs. The pruner and the storage are built here, for the sweep's driver and
the trial alike, so both judge with the same pruner.
"""

from __future__ import annotations

import logging
import os
import socket
import statistics
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ganops import GanopsError

log = logging.getLogger(__name__)
TRIAL_ENV = "GANOPS_SWEEP_TRIAL"


class PrunerSpec(BaseModel):
    """Which Optuna pruner stops hopeless trials, on the in-training metric at each evaluation (the
    step is the training step). Defaults are Optuna's own."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Literal["successive-halving", "median", "none"] = "successive-halving"
    # successive-halving (ASHA, Li et al.): at rungs of min_resource * reduction_factor**k steps, a trial
    # goes on only if it is among the best 1/reduction_factor of the trials that reached the rung;
    # "auto": min_resource from the first completed trial's last step (Optuna's heuristic)
    min_resource: int | Literal["auto"] = "auto"
    reduction_factor: int = Field(4, ge=2)
    # median: stopped when worse than the median of the completed trials at the same step, once
    # n_startup_trials have completed, from step n_warmup_steps on
    n_startup_trials: int = Field(5, ge=0)
    n_warmup_steps: int = Field(0, ge=0)


def make_pruner(spec: PrunerSpec):
    import optuna

    if spec.name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=spec.n_startup_trials, n_warmup_steps=spec.n_warmup_steps)
    if spec.name == "successive-halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=spec.min_resource, reduction_factor=spec.reduction_factor)
    return optuna.pruners.NopPruner()


def open_storage(url: str, heartbeat_interval: int | None = None, grace_period: int | None = None,
                 stale_callback=None):
    """Optuna's RDB storage at ``url`` (sqlite on one machine, PostgreSQL across hosts). SQLite waits up
    to a minute for a write lock: the sweep's driver and its trials write to the same file."""
    import warnings

    import optuna

    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        kwargs = {"connect_args": {"timeout": 60}}
    elif url.startswith("postgresql"):  # an unreachable host fails in seconds, not at the OS's TCP timeout
        kwargs["connect_args"] = {"connect_timeout": 10}
    try:
        with warnings.catch_warnings():  # the heartbeat is "experimental" in Optuna since 2.8; it is what fails dead trials
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = optuna.storages.RDBStorage(url, engine_kwargs=kwargs, heartbeat_interval=heartbeat_interval,
                                                 grace_period=grace_period, heartbeat_stale_trial_callback=stale_callback)
    except Exception as error:  # a bad URL, a server down, a missing driver (psycopg for PostgreSQL)
        hint = " (for PostgreSQL: pip install 'ganops[postgres]')" if isinstance(error, ImportError) else ""
        raise GanopsError(f"the sweep storage {redacted(url)} can't be opened: "
                          f"{type(error).__name__}: {str(error)[:300]}{hint}") from None
    if url.startswith("sqlite"):
        _write_locked_transactions(storage.engine)
    return storage


def _write_locked_transactions(engine) -> None:
    """Every transaction on the SQLite file takes its write lock when it begins (BEGIN IMMEDIATE).

    Python's sqlite3 begins a transaction only at the first write, so Optuna's check-then-set of a
    queued trial (read WAITING, write RUNNING) is not atomic there: two workers both read WAITING and
    both run the trial (optuna/optuna#4002). PostgreSQL locks the row (SELECT ... FOR UPDATE) instead.
    This is SQLAlchemy's documented recipe for SQLite transactions (the pysqlite dialect's notes)."""
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _no_implicit_transactions(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None  # sqlite3 then leaves BEGIN to the "begin" event below

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections opened before the events (Optuna's schema check) are not reused


def requeue(max_retry: int | None = None):
    """Optuna's callback that queues a failed trial again with the same params (at most max_retry times)."""
    import warnings

    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)


def redacted(url: str) -> str:
    """A storage URL fit to print and record: its password, if any, hidden."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy reads: say only its scheme
        return url.split(":", 1)[0] + ":..."


class TrialContext(BaseModel):
    """What a trial's pipeline needs to know of its sweep (the value of ``TRIAL_ENV``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    storage: str  # the study's storage URL
    study: str
    trial_number: int
    pruner: PrunerSpec
    report: bool = True  # false for a trial's later seeds: pruning reads the first seed's curve
    run_id: str | None = None  # the MLflow run this trial's pipeline logs into (made by the sweep)


class TrialReporter:
    """Called by the training loop after each in-training evaluation: reports the value to the study
    at its training step and returns why the trial must stop now ("" to go on). The decision and its
    step are kept (``pruned``) for reports/train.json and set on the Optuna trial."""

    def __init__(self, context: TrialContext) -> None:
        import optuna

        self.context = context
        storage = open_storage(context.storage)
        study = optuna.load_study(study_name=context.study, storage=storage, pruner=make_pruner(context.pruner))
        trial_id = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(context.study),
                                                                   context.trial_number)
        self.study, self.trial = study, optuna.trial.Trial(study, trial_id)
        self.pruned: dict | None = None

    @classmethod
    def from_environment(cls, environ: dict[str, str] | None = None) -> TrialReporter | None:
        text = (os.environ if environ is None else environ).get(TRIAL_ENV)
        if not text:
            return None
        try:
            context = TrialContext.model_validate_json(text)
        except ValueError as error:
            raise GanopsError(f"${TRIAL_ENV} is not a sweep trial's context: {str(error)[:300]}") from None
        return cls(context)

    @property
    def run_id(self) -> str | None:
        return self.context.run_id

    def __call__(self, step: int, value: float, std: float) -> str:
        if not self.context.report:
            return ""
        self.trial.report(value, step)
        if not self.trial.should_prune():
            return ""
        # what the pruner compared against: the median pruner the completed trials, successive halving
        # every trial that reached this step
        median = self.context.pruner.name == "median"
        states = ("COMPLETE",) if median else ("COMPLETE", "PRUNED", "RUNNING")
        compared = [t.intermediate_values[step] for t in self.study.get_trials(deepcopy=False)
                    if t.number != self.trial.number and step in t.intermediate_values and t.state.name in states]
        if median:
            others = (f", the median of {len(compared)} other completed trials at this step "
                      f"{statistics.median(compared):.4g}" if compared else "")
        else:
            others = (f", not in the best 1/{self.context.pruner.reduction_factor} of the {len(compared) + 1} trials "
                      f"that reached this step (the others: best {min(compared):.4g}, median "
                      f"{statistics.median(compared):.4g})" if compared else "")
        reason = (f"step {step}: pruned by the sweep's {self.context.pruner.name} pruner (study {self.context.study}, "
                  f"trial {self.context.trial_number}): the in-training value {value:.4g}{others}")
        self.pruned = {"step": step, "value": value, "pruner": self.context.pruner.name, "reason": reason}
        self.trial.set_user_attr("pruned_at_step", step)
        self.trial.set_user_attr("pruned_because", reason)
        self.trial.set_user_attr("pruned_on", socket.gethostname())
        log.warning("%s", reason)
        return reason
