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
EQUIVALENT: dict[str, str] = {}


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
    subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    found = {name: status for name, status in outcomes().items() if decides(name)}
    counts = Counter(found.values())
    killed = counts["killed"] + counts["timeout"]
    survivors = sorted(name for name, status in found.items() if status == "survived")
    unexplained = [name for name in survivors if name not in EQUIVALENT]
    print(f"\nmutants: {len(found)} in {len(DECISIONS)} groups of decision functions; "
          + ", ".join(f"{status} {count}" for status, count in counts.most_common()))
    by_function = Counter(name.rsplit("__mutmut_", 1)[0] for name in survivors)
    for function, count in by_function.most_common():
        print(f"  survivors in {function}: {count}")
    for name in survivors:
        if name in EQUIVALENT:
            print(f"{name}: equivalent: {EQUIVALENT[name]}")
        else:
            diff = subprocess.run([MUTMUT, "show", name], cwd=REPO, capture_output=True, text=True).stdout
            changed = [line for line in diff.splitlines() if line[:1] in "+-" and line[:3] not in ("+++", "---")]
            print(f"{name}: survived: " + " | ".join(changed))
    machine.finish()
    print(f"unexplained_survivors={len(unexplained)}")
    print(f"mutation_score={killed}/{len(found)}" + (f" ({killed / len(found):.3f})" if found else ""))


if __name__ == "__main__":
    main()
