"""The sweep's result: every trial in one table, the completed ones ranked by their metric, with ties
where two differ by less than the noise, judged as the champion gate judges (``ganops.noise.beyond_noise``
with register.noise_z and register.min_improvement: lower by more than min_improvement and more than
noise_z standard deviations of the difference). A trial's rank is one plus the number of trials better
than it beyond noise, so trials that no other beats share rank 1."""

from __future__ import annotations

import math

from ganops.config import RegisterParams
from ganops.noise import beyond_noise

STATE_ORDER = {"complete": 0, "pruned": 1, "failed": 2, "running": 3, "waiting": 4}


def trial_row(trial) -> dict:
    """One Optuna trial as a row of the table (its user attributes were set by the sweep's objective)."""
    attrs = trial.user_attrs
    state = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running",
             "WAITING": "waiting"}[trial.state.name]
    row = {"trial": trial.number, "state": state, "params": dict(trial.params),
           "experiments": attrs.get("experiments", []), "mlflow_run_id": attrs.get("mlflow_run_id"),
           "worker": attrs.get("worker")}
    if state == "complete":
        row.update(metric=attrs.get("metric"), value=trial.value, std=attrs.get("std"), ci95=attrs.get("ci95"),
                   interval=attrs.get("interval"), seeds=attrs.get("seeds", []), best_experiment=attrs.get("best_experiment"))
    elif state == "pruned":
        steps = sorted(trial.intermediate_values)
        row.update(pruned_at_step=attrs.get("pruned_at_step", steps[-1] if steps else None),
                   pruned_because=attrs.get("pruned_because"),
                   last_in_training=trial.intermediate_values[steps[-1]] if steps else None)
    elif state == "failed":
        row.update(error=attrs.get("error", "failed"), interrupted=bool(attrs.get("interrupted")))
    row["steps_trained"] = attrs.get("steps_trained")
    return row


def rank(rows: list[dict], cfg: RegisterParams) -> list[dict]:
    """Rows sorted: completed by value (each with its rank and the trials it is tied with), then
    pruned (the latest pruned first), failed, and the ones still running or waiting."""
    complete = sorted((r for r in rows if r["state"] == "complete"), key=lambda r: (r["value"], r["trial"]))
    for row in complete:
        beaten_by = [o for o in complete if o is not row and beyond_noise(
            o["value"], _noise(o), row["value"], _noise(row), cfg.noise_z, cfg.min_improvement)]
        row["rank"] = 1 + len(beaten_by)
    for row in complete:
        row["tied_with"] = [o["trial"] for o in complete if o is not row and o["rank"] == row["rank"]]
    rest = sorted((r for r in rows if r["state"] != "complete"),
                  key=lambda r: (STATE_ORDER[r["state"]], -(r.get("pruned_at_step") or 0), r["trial"]))
    return complete + rest


def _noise(row: dict) -> float:
    """A trial's std; unknown (no interval: eval.spread_rounds 0) is NaN, never 0, so that no trial is
    judged beyond noise against it: it ties with every trial within reach."""
    return math.nan if row.get("std") is None else row["std"]


def table_markdown(rows: list[dict], metric: str | None, noise: str) -> str:
    """The ranked table as Markdown (printed, and attached to the sweep's MLflow parent run)."""
    keys = sorted({k for r in rows for k in r["params"]})
    head = ["rank", "trial", "state", f"{metric or 'metric'} (std)", "95% interval", *keys, "experiment"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if r["state"] == "complete":
            tie = "=" if r["tied_with"] else ""
            low, high = r["ci95"] or (None, None)
            cells = [f"{tie}{r['rank']}", str(r["trial"]), "complete", f"{r['value']:.3f} ({_cell(r['std'])})",
                     f"[{low:.3f}, {high:.3f}]" if low is not None and math.isfinite(low) else "-"]
        elif r["state"] == "pruned":
            last = r.get("last_in_training")
            cells = ["-", str(r["trial"]), f"pruned at step {r['pruned_at_step']}",
                     f"in training {last:.3f}" if last is not None else "-", "-"]
        else:
            cells = ["-", str(r["trial"]), r["state"] + (" (interrupted)" if r.get("interrupted") else ""), "-", "-"]
        cells += [_cell(r["params"].get(k)) for k in keys]
        cells.append(r.get("best_experiment") or ", ".join(r["experiments"]) or "-")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"Ties (=): no trial of the rank is better than another beyond noise ({noise}).")
    return "\n".join(lines) + "\n"


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)
