"""The benchmarks' shared method (benchmarks/_common.py): the side order is a Latin square, a figure
above the measured peak and outputs that differ fail the run, and the machine card says what it ran on."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import _common  # noqa: E402


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6])
def test_every_side_takes_every_slot(n):
    sides = [f"side{i}" for i in range(n)]
    rows = [_common.round_order(sides, r) for r in range(n)]
    for row in rows:
        assert sorted(row) == sorted(sides)
    for slot in zip(*rows):
        assert sorted(slot) == sorted(sides), "a side never takes some slot"


@pytest.mark.parametrize("n", [2, 4, 6])
def test_even_orders_balance_what_comes_before(n):
    """Williams' design: over n rounds each side follows each other side exactly once."""
    sides = list(range(n))
    pairs = [(row[i], row[i + 1]) for r in range(n) for row in [_common.round_order(sides, r)] for i in range(n - 1)]
    assert len(set(pairs)) == len(pairs) == n * (n - 1)


def test_a_rate_above_the_measured_peak_fails():
    assert _common.check_below_peak("side", 50.0, 100.0) == pytest.approx(0.5)
    with pytest.raises(SystemExit, match="above the peak"):
        _common.check_below_peak("side", 100.5, 100.0)
    with pytest.raises(SystemExit):
        _common.check_below_peak("side", math.nan, 100.0)


def test_outputs_that_differ_fail():
    _common.check_equal("features", 1e-6, 1e-4)
    with pytest.raises(SystemExit, match="over the tolerance"):
        _common.check_equal("features", 2e-4, 1e-4)
    with pytest.raises(SystemExit):
        _common.check_equal("features", math.nan, 1e-4)


def test_the_recipe_line_names_the_params_file_and_the_knobs_that_decide():
    """Issue 40: a script that reads params says which recipe it measured -- the file, and the knobs."""
    from ganops.config import validate_params

    params = validate_params({"train": {"loss": "hinge", "lr_d": 4e-4, "beta2": 0.9, "ema_decay": 0.0},
                              "eval": {"num_samples": 1000}})
    line = _common.describe_recipe(params, Path("recipes/other.yaml"))
    assert "recipes/other.yaml" in line and len(line.splitlines()) <= 2
    for knob in ("loss hinge", "lr_g 0.0015", "lr_d 0.0004", "betas (0, 0.9)", "ema_decay 0", "1000 samples",
                 "mnist5k", "32x32x1", "dcgan", "conditional", "backbone auto", "fid_protocol tf"):
        assert knob in line, (knob, line)
    assert "r1_gamma" not in line and "gp_weight" not in line  # neither applies to this loss
    rpgan = validate_params({"train": {"loss": "rpgan", "r1_gamma": 0.05}})
    assert "r1_gamma 0.05 (R1 and R2)" in _common.describe_recipe(rpgan, "params.yaml")


def test_the_machine_card_names_cpu_flags_and_load(capsys):
    machine = _common.print_environment()
    machine.finish()
    out = capsys.readouterr().out
    assert "family" in out and "physical" in out and "logical cores" in out
    assert ("avx2" in out) or ("no avx2" in out)
    assert "measured peak: CPU" in out and "load average" in out and "steal" in out
    assert math.isfinite(machine.cpu_peak_gflops) and machine.cpu_peak_gflops > 0


def test_the_reload_blip_is_read_from_the_requests_around_the_swap():
    """serving_latency.reload_blip: when the new version first answered, p99 just before and after."""
    import serving_latency

    swap = 10.0
    records = []
    for i in range(200):
        scheduled = i * 0.1
        version = "new" if scheduled >= swap + 0.4 else "old"  # the server noticed 0.4 s after the swap
        latency = 0.5 if swap <= scheduled < swap + 0.4 else 0.01  # the requests that waited for the load
        records.append((scheduled, latency, "503" if i == 150 else "200", version))
    blip = serving_latency.reload_blip(records, swap)
    assert blip["versions"] == ["new", "old"] and blip["errors"] == 1
    assert blip["new_version_after_s"] == pytest.approx(0.4 + 0.01, abs=1e-9)
    assert blip["p99_before_ms"] == pytest.approx(10.0) and blip["p99_after_ms"] == pytest.approx(500.0)
    assert blip["max_ms"] == pytest.approx(500.0)


@pytest.mark.system
def test_cuda_graphs_cpu_control_runs_and_catches_a_skipped_update(tmp_path):
    """The CUDA-graph check's CPU half (the eager-vs-broken control) runs on the current train stage:
    a change to the stage's defaults (as the in-training evaluation once was) must not break it unseen."""
    import json
    import os
    import subprocess

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "cuda_graphs.py"
    done = subprocess.run([sys.executable, str(script), "--device", "cpu", "--steps", "4"], capture_output=True,
                          text=True, timeout=600, env={**os.environ, "OUT": str(tmp_path), "TQDM_DISABLE": "1"})
    assert done.returncode == 0 and done.stdout.strip().endswith("cuda_graph_parity=ok"), done.stdout + done.stderr
    from cuda_graphs import FLOOR_FACTOR

    results = json.loads((tmp_path / "cuda_graphs.json").read_text())
    assert set(results) == {"minimax", "hinge_sn_cond_d2", "r1", "wgan_gp"}
    for name, result in results.items():
        assert result["broken_vs_eager"] > result["bound"] >= FLOOR_FACTOR * result["eager_vs_eager"], (name, result)
