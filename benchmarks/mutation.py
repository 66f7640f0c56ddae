"""Mutation testing of the decisions: how many one-token changes to the functions that decide does the
suite catch? mutmut (pyproject.toml's [tool.mutmut]: the modules, and the unit and stage tests that
cover them) mutates the functions named below, runs for each mutant only the tests that cover its
function, and counts it killed when one of them fails (or times out).

    python benchmarks/mutation.py [--max-children N]

Run from the repository root. mutmut keeps its working copy in mutants/ (ignored by git); a rerun
checks only mutants whose function changed. Printed: mutants, killed, survivors by function, each
survivor's diff (or its one-line reason, where EQUIVALENT names it); the last line
``mutation_score=<killed/total>``.
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

from _common import print_environment

REPO = Path(__file__).resolve().parents[1]
MUTMUT = str(Path(sys.executable).with_name("mutmut"))

# The functions that decide, as mutmut names them (module.x_function, module.xǁClassǁmethod).
DECISIONS = (
    "ganops.noise.*",  # half-sample std, beyond noise, Bonferroni z, seed interval
    "ganops.training.watch.*",  # the kept snapshots, the stopping rules, the shipped snapshot's choice
    "ganops.tracking.registry.x_evaluation_signature__*",  # what makes two evaluations comparable
    "ganops.tracking.registry.x__decide__*",  # the champion gate
    "ganops.tracking.registry.x__per_class_gate__*",
    "ganops.tracking.registry.x_per_class_tag__*",
    "ganops.tracking.registry.xǁFileRegistryLockǁ*",  # the registry lock, its expiry and its fence
    "ganops.tracking.registry.xǁRegistryLockǁ*",
    "ganops.tracking.registry.x__history__*",  # the champion history read against the alias; rollback
    "ganops.tracking.registry.x__exists__*",
    "ganops.tracking.registry.x_rollback__*",
    "ganops.sweeps.ranking.x_rank__*",  # the sweep's ranking within noise
    "ganops.sweeps.ranking.x__noise__*",
    "ganops.sweeps.study.x_plan_slots__*",  # workers against cores and GPUs
    "ganops.sweeps.study.x_finish__*",  # what a sweep registers, and when
    "ganops.sweeps.study.x__register_best__*",
    "ganops.serving.app.xǁGenerationLimiterǁ*",  # admission, queue, time-outs, cancellation
    "ganops.serving.app.xǁModelSourceǁ*",  # reload and its backoff
    "ganops.metrics.scores.x_fd__*",  # the FID's spread (half-sampling)
    "ganops.metrics.scores.x_per_class__*",  # the per-class spread that drives the per-class gate
    "ganops.metrics.scores.x_memorisation__*",  # memorisation_suspected
    "ganops.metrics.scores.x_truncation_curve__*",  # the same latents at every psi
)

# Survivors that no test can kill because they change nothing observable: mutant name -> why.
EQUIVALENT: dict[str, str] = {
    "ganops.tracking.registry.xǁFileRegistryLockǁ__init____mutmut_10":
        "the inode placeholder before __enter__ (-1 -> +1) never matters: until __enter__ writes the token, "
        "check_held raises the same LockLost",
    "ganops.tracking.registry.xǁFileRegistryLockǁ__init____mutmut_11":
        "the inode placeholder before __enter__ (-1 -> -2) never matters: until __enter__ the token check "
        "alone raises the same LockLost",
    "ganops.tracking.registry.xǁRegistryLockǁ_take_over_if_expired__mutmut_5":
        "no 'expires' tag: float(None) raises inside the try that swallows it, so the lock is not taken over,"
        " as with inf",
    "ganops.tracking.registry.xǁRegistryLockǁ_take_over_if_expired__mutmut_7":
        "no 'expires' tag: .get with no default gives None, float(None) raises and is swallowed: not taken "
        "over, as with inf",
    "ganops.tracking.registry.xǁRegistryLockǁ_take_over_if_expired__mutmut_10":
        "no 'expires' tag: float('XXinfXX') raises ValueError and is swallowed: not taken over, as with inf",
    "ganops.tracking.registry.xǁRegistryLockǁ_take_over_if_expired__mutmut_11":
        "float('INF') == float('inf'): the same default",
    "ganops.tracking.registry.xǁRegistryLockǁcheck_held__mutmut_27":
        "float('-INF') == float('-inf'): the same default",
    "ganops.metrics.scores.x_per_class__mutmut_33":
        "spread_rounds >= 0: at 0 rounds both half-sample lists are empty, half_sample_std gives None and no "
        "std is written, as when skipped",
    "ganops.metrics.scores.x_per_class__mutmut_34":
        "spread_rounds > 1: EvalParams forbids 1 round, and at 1 round half_sample_std of one value is None "
        "anyway: no std either way",
    "ganops.metrics.scores.x_per_class__mutmut_52":
        "rng.choice(replace=None): numpy treats replace as a truth value, None is False: the same draws "
        "without replacement",
    "ganops.metrics.scores.x_memorisation__mutmut_19":
        "argsort kind='STABLE': numpy reads the sort kind case-insensitively, the same stable sort",
    "ganops.metrics.scores.x_fd__mutmut_42":
        "rng.choice(replace=None): None is False to numpy, the same draws without replacement",
    "ganops.metrics.scores.x_fd__mutmut_26":
        "spread_rounds > 1: EvalParams rejects 1 round (0 or >= 2), so the only value that differs never "
        "reaches fd",
    "ganops.serving.app.xǁGenerationLimiterǁ__init____mutmut_4":
        "Condition(None) gives the slot condition its own lock: admission and the slot then share only "
        "`rejected`, whose `+= 1` no GIL switch splits in CPython 3.11 (tried: 2 threads x 20000 refusals at "
        "switch interval 1 µs lose none); nothing else changes",
    "ganops.serving.app.xǁModelSourceǁ__init____mutmut_7":
        "pointed_at '' instead of None before the first refresh: a tuple stamp differs from both, and stale "
        "reads it only once a load has set it to that stamp",
    "ganops.serving.app.xǁModelSourceǁ__init____mutmut_8":
        "last_error '' instead of None before the first refresh: every path of the constructor's refresh "
        "overwrites it",
    "ganops.serving.app.xǁModelSourceǁrefresh__mutmut_3": "backoff=None instead of False: _failed only tests its truth",
    "ganops.serving.app.xǁModelSourceǁrefresh__mutmut_10":
        "pointed_at '' instead of None when the file is gone: a stamp differs from both, stale is already "
        "True from the last_error set beside it, and last_error is cleared only after pointed_at is set to a "
        "new stamp",
    "ganops.sweeps.study.x_finish__mutmut_4":
        "get_trials(deepcopy=None): None is falsy, the same as False; the trials are only read",
    "ganops.sweeps.study.x_finish__mutmut_6":
        "get_trials(deepcopy=True): finish only reads the trials, so copies give the same rows",
    "ganops.sweeps.study.x_plan_slots__mutmut_17":
        "gpus = None instead of 0 on a CPU-trained sweep: it is only read as a truth value (gpus and ..., "
        "not gpus, i if gpus else None), where None and 0 are both false",
    "ganops.training.watch.x_choose_snapshot__mutmut_22":
        "last_eval computed even when the last weights are non-finite: it is only read after `not last_ok "
        "or`, which is then already true",
}

# Survivors on a CPU-only machine that a test kills on CUDA only (it skips without a GPU): mutant name -> test.
NEEDS_CUDA: dict[str, str] = {
    "ganops.training.watch.x_cpu_weights__mutmut_1":
        "tests/test_watch_decisions.py::test_cpu_weights_of_a_gpu_module_are_on_the_cpu",
    "ganops.training.watch.x_cpu_weights__mutmut_3":
        "tests/test_watch_decisions.py::test_cpu_weights_of_a_gpu_module_are_on_the_cpu",
}


def outcomes() -> dict[str, str]:
    """Every mutant mutmut knows, with its status (killed, survived, timeout, not checked, ...)."""
    listing = subprocess.run([MUTMUT, "results", "--all", "true"], cwd=REPO, capture_output=True, text=True, check=True)
    found = {}
    for line in listing.stdout.splitlines():
        name, sep, status = line.strip().rpartition(": ")
        if sep:
            found[name] = status
    return found


def decides(name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in DECISIONS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-children", type=int, default=None, help="mutants run at once (default: mutmut's)")
    args = parser.parse_args()
    machine = print_environment(["mutmut", "pytest"])
    command = [MUTMUT, "run", *DECISIONS] + ([f"--max-children={args.max_children}"] if args.max_children else [])
    # One torch thread per mutant's tests: mutmut's time-outs are CPU-time limits, which threads spinning
    # beside other mutants' threads on a loaded machine would spend, turning a killed mutant into a time-out.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL, env=env)
    found = {name: status for name, status in outcomes().items() if decides(name)}
    counts = Counter(found.values())
    killed = counts["killed"] + counts["timeout"]
    survivors = sorted(name for name, status in found.items() if status in ("survived", "no tests"))
    unexplained = [name for name in survivors if name not in EQUIVALENT and name not in NEEDS_CUDA]
    print(f"\nmutants: {len(found)} in {len(DECISIONS)} groups of decision functions; "
          + ", ".join(f"{status} {count}" for status, count in counts.most_common()))
    by_function = Counter(name.rsplit("__mutmut_", 1)[0] for name in survivors)
    for function, count in by_function.most_common():
        print(f"  survivors in {function}: {count}")
    for name in survivors:
        if name in EQUIVALENT:
            print(f"{name}: equivalent: {EQUIVALENT[name]}")
        elif name in NEEDS_CUDA:
            print(f"{name}: survived on this CPU; killed on CUDA by {NEEDS_CUDA[name]}")
        else:
            diff = subprocess.run([MUTMUT, "show", name], cwd=REPO, capture_output=True, text=True).stdout
            changed = [line for line in diff.splitlines() if line[:1] in "+-" and line[:3] not in ("+++", "---")]
            print(f"{name}: survived: " + " | ".join(changed))
    machine.finish()
    print(f"unexplained_survivors={len(unexplained)}")
    print(f"mutation_score={killed}/{len(found)}" + (f" ({killed / len(found):.3f})" if found else ""))


if __name__ == "__main__":
    main()
