"""dvc.yaml against the code: every stage's deps, outs and params are exactly what its module reads
and writes, so DVC reruns a stage when and only when something it uses changed."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from conftest import REPO, tiny
from ganops.config import Params
from ganops.paths import ProjectPaths
from ganops.stages import STAGES

SRC = REPO / "src"
DVC = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def _entries(items) -> list[str]:
    return [item if isinstance(item, str) else next(iter(item)) for item in items or []]


def _module_file(name: str) -> Path | None:
    base = SRC.joinpath(*name.split("."))
    if (base / "__init__.py").exists():
        return base / "__init__.py"
    return base.with_suffix(".py") if base.with_suffix(".py").exists() else None


def _imports(path: Path, module: str) -> set[str]:
    """ganops modules a source file imports, at the top or inside functions."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):  # `if TYPE_CHECKING:` imports are for annotations only: they never run
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            node.body = []
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("ganops")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            if base.startswith("ganops"):
                found.add(base)
                found |= {f"{base}.{alias.name}" for alias in node.names if _module_file(f"{base}.{alias.name}")}
    return found


def code_of(stage: str) -> set[str]:
    """Every source file that importing the stage's module runs (packages' __init__ included)."""
    seen: set[str] = set()
    todo = [f"ganops.stages.{stage}"]
    while todo:
        parts = todo.pop().split(".")
        for depth in range(1, len(parts) + 1):
            name = ".".join(parts[:depth])
            path = _module_file(name)
            if name in seen or path is None:
                continue
            seen.add(name)
            todo.extend(_imports(path, name))
    return {_module_file(name).relative_to(REPO).as_posix() for name in seen}


def test_every_stage_has_its_module_and_cli_command():
    assert list(DVC) == list(STAGES)
    for stage in STAGES:
        module = __import__(f"ganops.stages.{stage}", fromlist=[stage])
        assert callable(getattr(module, stage)), stage
        assert DVC[stage]["cmd"] == f"ganops {stage.replace('_', '-')}"


@pytest.mark.parametrize("stage", STAGES)
def test_code_deps_are_exactly_what_the_stage_imports(stage):
    used = code_of(stage)
    declared = [dep for dep in _entries(DVC[stage]["deps"]) if dep.startswith("src/")]
    covered = set()
    for dep in declared:
        path = REPO / dep
        files = {p.relative_to(REPO).as_posix() for p in path.glob("*.py")} if path.is_dir() else {dep}
        assert files, f"{stage}: dep {dep} names no source file"
        unused = files - used
        assert not unused, f"{stage}: dep {dep} covers {sorted(unused)}, which the stage never imports"
        covered |= files
    assert used - covered == set(), f"{stage} imports {sorted(used - covered)} but dvc.yaml does not list them"


def test_data_deps_and_outs_are_the_project_paths():
    named = {path.relative_to(ProjectPaths(Path(".")).root).as_posix() for path in ProjectPaths().stage_files().values()}
    written, read = set(), set()
    for stage in STAGES:
        spec = DVC[stage]
        for key in ("outs", "metrics", "plots"):
            written |= set(_entries(spec.get(key)))
        read |= {dep for dep in _entries(spec["deps"]) if not dep.startswith("src/")}
    assert read <= written, f"deps no stage writes: {sorted(read - written)}"
    assert written == named, (f"in dvc.yaml, not in ProjectPaths: {sorted(written - named)}; "
                              f"in ProjectPaths, not in dvc.yaml: {sorted(named - written)}")


# --- params: which keys each stage's code reads, recorded while it runs ----------------------------


class _Recorder:
    """Wraps a params (sub)tree and records every key read through it, except the tracking package's
    reads of the whole tree (every param is logged to MLflow) and of ``mlflow`` (where results are
    tracked is not an input of what is computed)."""

    def __init__(self, model: BaseModel, prefix: str, reads: set[str]) -> None:
        object.__setattr__(self, "_model", model)
        object.__setattr__(self, "_prefix", prefix)
        object.__setattr__(self, "_reads", reads)

    def __getattr__(self, name: str):
        model, prefix, reads = self._model, self._prefix, self._reads
        value = getattr(model, name)
        caller = sys._getframe(1).f_globals.get("__name__", "")
        if caller.startswith("ganops.tracking") and (not prefix or prefix == "mlflow"):
            return value
        if name not in type(model).model_fields:  # model_dump and friends: the whole (sub)tree
            reads.add(prefix or "*")
            return value
        key = f"{prefix}.{name}" if prefix else name
        if isinstance(value, BaseModel):
            return _Recorder(value, key, reads)
        reads.add(key)
        return value


def _leaves(key: str, model: BaseModel = Params()) -> set[str]:
    """A params key and everything under it, as leaf keys."""
    if key == "*":
        return set().union(*(_leaves(name) for name in type(model).model_fields))
    node = model
    for part in key.split("."):
        node = getattr(node, part)
    if isinstance(node, BaseModel):
        return set().union(*(_leaves(f"{key}.{name}") for name in type(node).model_fields))
    return {key}


# Keys read only on a path the tiny project does not take; listed with the reason.
CONDITIONAL_READS = {
    "data.skip_invalid": "read only when a source meets a file it rejects",
    "data.workers": "read only when an image folder holds enough files to start worker processes",
    "data.max_file_bytes": "read only by the sources read from files (imagefolder, mnist-idx, cifar10)",
    "data.max_image_pixels": "read only when image files are decoded (imagefolder)",
    "export.fp16_unverified": "read only when the fp16 model's parity can't be measured",
    "register.min_improvement": "read only when there is a champion to beat",
    "register.noise_z": "read only when there is a champion to beat",
    "register.per_class_gate": "read only when there is a champion to beat and the new version beats it overall",
}


@pytest.fixture(scope="module")
def params_read(tmp_path_factory) -> dict[str, set[str]]:
    root = tmp_path_factory.mktemp("contract")
    # fp16 on: the export stage's fp16 keys are read only then; in-training evaluations on, twice
    params = tiny({"mlflow": {"enabled": True}, "export": {"fp16": True}, "train": {"eval_every": 10}})
    reads: dict[str, set[str]] = {}
    for stage in STAGES:
        module = __import__(f"ganops.stages.{stage}", fromlist=[stage])
        reads[stage] = set()
        getattr(module, stage)(_Recorder(params, "", reads[stage]), root)
    return reads


@pytest.mark.stage
@pytest.mark.parametrize("stage", STAGES)
def test_params_are_exactly_what_the_stage_reads(params_read, stage):
    read = set().union(*(_leaves(key) for key in params_read[stage]))
    declared_entries = _entries(DVC[stage].get("params"))
    declared = set().union(*(_leaves(key) for key in declared_entries))
    tracking = _leaves("mlflow") if stage == "register" else set()  # register's input is the store itself
    tracking |= set(CONDITIONAL_READS)
    assert read - declared == set(), f"{stage} reads {sorted(read - declared)}, not listed in dvc.yaml"
    assert declared - read - tracking == set(), f"dvc.yaml lists {sorted(declared - read - tracking)} for {stage}, never read"


def test_the_architecture_map_matches_the_code():
    """docs/ARCHITECTURE.md's stage table names each stage's module and library parts; the code must
    agree (every part named is imported by that stage)."""
    import re

    rows = [line.split("|")[1:-1] for line in (REPO / "docs" / "ARCHITECTURE.md").read_text().splitlines()
            if line.startswith("| ") and "`ganops.stages." in line]
    assert [row[0].strip() for row in rows] == list(STAGES)
    for stage, module, parts, _ in ((c.strip() for c in row) for row in rows):
        assert module == f"`ganops.stages.{stage}`"
        used = code_of(stage)
        for part in re.findall(r"`(ganops\.[\w.]+)`", parts):
            path = part.replace(".", "/")
            assert any(f.startswith(f"src/{path}/") or f == f"src/{path}.py" for f in used), f"{stage} does not use {part}"


# --- floors: imports point down (docs/ARCHITECTURE.md) ---------------------------------------------


def _architecture_floors() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The floors table (module or package -> floor) and the "never imports" pairs of the map."""
    import re

    text = (REPO / "docs" / "ARCHITECTURE.md").read_text()
    section = text.split("## Floors", 1)[1].split("\n## ", 1)[0]
    floors = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.split("|")[1:-1]]
        if len(cells) == 2 and cells[0].isdigit():
            floors |= {name: int(cells[0]) for name in re.findall(r"`(ganops[\w.]*)`", cells[1])}
    never = [tuple(re.findall(r"`(ganops[\w.]*)`", line)[:2]) for line in section.splitlines()
             if line.startswith("- ") and " never imports " in line]
    return floors, never


def _floor_of(module: str, floors: dict[str, int]) -> str | None:
    """The floors-table entry a module belongs to: the longest name that is it or a package above it."""
    owners = [name for name in floors if module == name or module.startswith(name + ".")]
    return max(owners, key=len, default=None)


def library_imports() -> dict[str, set[str]]:
    """Every module of src/ganops and the ganops modules it imports when it runs."""
    graph = {}
    for path in sorted((SRC / "ganops").rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        graph[module] = {name for name in _imports(path, module) if _module_file(name)}
    return graph


def test_imports_point_down_the_floors():
    floors, never = _architecture_floors()
    assert floors and never, "docs/ARCHITECTURE.md lost its floors table or its never-imports list"
    graph = library_imports()
    unplaced = sorted(module for module in graph if _floor_of(module, floors) is None)
    assert not unplaced, f"modules on no floor of docs/ARCHITECTURE.md: {unplaced}"
    upward, sideways = [], []
    for module, imported in graph.items():
        home = _floor_of(module, floors)
        for name in imported:
            target = _floor_of(name, floors)
            if floors[target] > floors[home]:
                upward.append(f"{module} -> {name}")
            elif floors[target] == floors[home] and target != home and floors[home] > 0:
                sideways.append(f"{module} -> {name}")
    assert not upward, f"imports that point up the floors: {sorted(upward)}"
    assert not sideways, f"imports between the packages of one floor: {sorted(sideways)}"
    broken = [f"{module} -> {name}" for module, imported in graph.items() for name in imported
              for low, high in never if _floor_of(module, floors) == low and _floor_of(name, floors) == high]
    assert not broken, f"imports docs/ARCHITECTURE.md says never happen: {sorted(broken)}"


def test_no_stage_before_export_depends_on_serving_code():
    """Editing a serving module reruns export and register only: the FID reference statistics, the
    training and the evaluation stay cached."""
    for stage in ("prepare", "train", "train_evaluator", "reference_stats", "evaluate"):
        serving = sorted(path for path in code_of(stage) if path.startswith("src/ganops/serving/"))
        assert not serving, f"{stage} imports serving code: {serving}"
