"""Training on tiny params: outputs, every loss and option, CPU determinism, resume after SIGKILL."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from conftest import merge, tiny, write_params
from ganops import GanopsError
from ganops.config import Params
from ganops.models import GeneratorSpec, build_generator
from ganops.stages.train import train
from ganops.training.checkpoint import list_checkpoints


def setup_folders(root: Path) -> list[Path]:
    """The per-setup checkpoint folders under models/checkpoints/."""
    folder = root / "models" / "checkpoints"
    return sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []


def all_checkpoints(root: Path) -> list[tuple[int, Path]]:
    return sorted((c for f in setup_folders(root) for c in list_checkpoints(f)), reverse=True)


@pytest.fixture(scope="module")
def prepared_digits(tiny_prepared) -> Path:
    """The digits prepared with TINY (conftest's shared project, read only: each test copies it)."""
    return tiny_prepared / "data" / "prepared"


def project_with_data(tmp_path: Path, prepared: Path, evaluator: Path | None = None) -> Path:
    """A project holding the prepared data and, given ``evaluator``'s project, its trained domain
    classifier (what in-training evaluations score with when no Inception weights are used)."""
    shutil.copytree(prepared, tmp_path / "data" / "prepared")
    if evaluator is not None:
        (tmp_path / "models").mkdir(parents=True, exist_ok=True)
        for name in ("evaluator.safetensors", "evaluator.json"):
            shutil.copy(evaluator / "models" / name, tmp_path / "models" / name)
    return tmp_path


@pytest.fixture(scope="module")
def evaluator(tiny_built) -> Path:
    """A project whose models/ holds the domain classifier trained on the prepared digits with TINY
    (conftest's shared project)."""
    return tiny_built


@pytest.mark.stage
def test_outputs_and_reports(tmp_path, prepared_digits):
    root = project_with_data(tmp_path, prepared_digits)
    summary = train(tiny(), root)
    spec = GeneratorSpec.load(root / "models" / "generator.json")
    assert (spec.resolution, spec.channels, spec.num_classes, spec.latent_dim) == (8, 1, 10, 8)
    assert spec.class_names == [str(d) for d in range(10)]
    generator = build_generator(spec)
    generator.load_state_dict(load_file(root / "models" / "generator.safetensors"))  # strict: every tensor
    report = json.loads((root / "reports" / "train.json").read_text())
    assert report == summary and report["steps"] == 20 and report["images_per_s"] > 0
    rows = list(csv.DictReader((root / "reports" / "train_log.csv").open()))
    assert list(rows[0]) == ["step", "loss_d", "loss_g", "d_real", "d_fake", "penalty", "real_sign", "augment_p",
                             "images_per_s", "wall_time_s"]
    assert [int(r["step"]) for r in rows] == [5, 10, 15, 20]
    assert all(float(r["loss_d"]) > 0 for r in rows)
    grid = Image.open(root / "reports" / "samples.png")
    assert grid.height > grid.width  # one row per class: 10 rows of 8
    assert [step for step, _ in all_checkpoints(root)] == [20, 10] and len(setup_folders(root)) == 1


@pytest.mark.stage
@pytest.mark.parametrize(
    "overrides",
    [
        {"train": {"loss": "minimax", "r1_gamma": 1.0, "d_steps": 2}},
        {"train": {"loss": "hinge"}, "model": {"conditional": False}},
        {"train": {"loss": "wgan-gp", "gp_weight": 10.0}, "model": {"spectral_norm": False}},
    ],
)
def test_each_loss_and_option_trains(tmp_path, prepared_digits, overrides):
    root = project_with_data(tmp_path, prepared_digits)
    summary = train(tiny(overrides), root)
    assert all(torch.isfinite(torch.tensor(summary[k])) for k in ("loss_d", "loss_g"))
    weights = load_file(root / "models" / "generator.safetensors")
    assert all(torch.isfinite(t).all() for t in weights.values() if t.is_floating_point())
    rows = list(csv.DictReader((root / "reports" / "train_log.csv").open()))
    if overrides["train"].get("r1_gamma") or overrides["train"]["loss"] == "wgan-gp":
        assert float(rows[-1]["penalty"]) > 0
    # each network learns: its trainable parameters (not batch-norm statistics or spectral-norm vectors,
    # which move without any optimizer step) change from step 10 to 20
    from ganops.data import load_manifest
    from ganops.models import build_discriminator
    from ganops.stages.train import discriminator_spec, generator_spec

    params, manifest = tiny(overrides), load_manifest(root / "data" / "prepared")
    trainable = {"generator": build_generator(generator_spec(params.model, manifest)),
                 "discriminator": build_discriminator(discriminator_spec(params.model, manifest))}
    at = {step: torch.load(path, weights_only=True) for step, path in all_checkpoints(root)}
    for network, module in trainable.items():
        names = [name for name, _ in module.named_parameters()]
        assert names and set(names) <= set(at[20][network])
        moved = [float((at[20][network][k] - at[10][network][k]).abs().max()) for k in names]
        # nearly every parameter tensor, not just a sum (the WGAN critic's output bias has no gradient)
        assert sum(m > 0 for m in moved) >= 0.8 * len(names), (network, dict(zip(names, moved)))


@pytest.mark.stage
def test_training_fits_a_tiny_fixed_dataset(tmp_path, prepared_digits):
    """A known-easy case: 200 steps on the 8x8 digits bring the generator's images towards the data
    (per-pixel mean and spread), far from where the same generator starts."""
    from ganops.data import load_split
    from ganops.models import load_generator
    from ganops.paths import ProjectPaths

    real, _ = load_split(prepared_digits, "train")
    real = torch.from_numpy(real).float() / 127.5 - 1

    def distance(root: Path) -> float:
        generator = load_generator(ProjectPaths(root).generator_weights, ProjectPaths(root).generator_spec)
        with torch.no_grad():
            fake = generator(torch.randn(512, generator.spec.latent_dim, generator=torch.Generator().manual_seed(0)),
                             torch.arange(512) % generator.spec.num_classes)
        return float((fake.mean(0) - real.mean(0)).pow(2).mean() + (fake.std(0) - real.std(0)).pow(2).mean())

    barely = project_with_data(tmp_path / "barely", prepared_digits)
    train(tiny({"train": {"steps": 1, "ema_decay": 0.0}}), barely)
    trained = project_with_data(tmp_path / "trained", prepared_digits)
    train(tiny({"train": {"steps": 200, "lr_g": 1e-3, "lr_d": 1e-3, "checkpoint_every": 200, "log_every": 50}}), trained)
    assert distance(trained) < distance(barely) / 3


SHIPPED_OPTIMISER = {key: getattr(Params().train, key) for key in ("lr_g", "lr_d", "beta1", "beta2")}


@pytest.mark.stage
def test_the_shipped_optimiser_fits_a_tiny_fixed_dataset(tmp_path, prepared_digits):
    """The optimiser params.yaml ships (not the tiny params' own) trains: 200 steps bring the images
    towards the data, as the test above asks of the tiny params' optimiser."""
    from ganops.data import load_split
    from ganops.models import load_generator
    from ganops.paths import ProjectPaths

    real, _ = load_split(prepared_digits, "train")
    real = torch.from_numpy(real).float() / 127.5 - 1

    def distance(root: Path) -> float:
        generator = load_generator(ProjectPaths(root).generator_weights, ProjectPaths(root).generator_spec)
        with torch.no_grad():
            fake = generator(torch.randn(512, generator.spec.latent_dim, generator=torch.Generator().manual_seed(0)),
                             torch.arange(512) % generator.spec.num_classes)
        return float((fake.mean(0) - real.mean(0)).pow(2).mean() + (fake.std(0) - real.std(0)).pow(2).mean())

    barely = project_with_data(tmp_path / "barely", prepared_digits)
    train(tiny({"train": {**SHIPPED_OPTIMISER, "steps": 1, "ema_decay": 0.0}}), barely)
    trained = project_with_data(tmp_path / "trained", prepared_digits)
    train(tiny({"train": {**SHIPPED_OPTIMISER, "steps": 200, "checkpoint_every": 200, "log_every": 50}}), trained)
    assert distance(trained) < distance(barely) / 3


@pytest.mark.stage
def test_each_network_is_optimised_with_its_own_learning_rate_and_the_shipped_betas(tmp_path, prepared_digits):
    """The optimisers as the checkpoint keeps them: G at lr_g, D at lr_d, both with (beta1, beta2)."""
    from ganops.training.checkpoint import read_checkpoint

    root = project_with_data(tmp_path, prepared_digits)
    train(tiny({"train": {**SHIPPED_OPTIMISER, "steps": 10, "checkpoint_every": 10}}), root)
    state = read_checkpoint(all_checkpoints(root)[0][1])
    groups = {name: state[name]["param_groups"] for name in ("opt_g", "opt_d")}
    betas = (SHIPPED_OPTIMISER["beta1"], SHIPPED_OPTIMISER["beta2"])
    assert [(g["lr"], tuple(g["betas"])) for g in groups["opt_g"]] == [(SHIPPED_OPTIMISER["lr_g"], betas)]
    assert [(g["lr"], tuple(g["betas"])) for g in groups["opt_d"]] == [(SHIPPED_OPTIMISER["lr_d"], betas)]
    assert SHIPPED_OPTIMISER["lr_g"] != SHIPPED_OPTIMISER["lr_d"]  # else a swap could not show


@pytest.mark.stage
def test_two_cpu_runs_give_identical_weights(tmp_path, prepared_digits):
    a = project_with_data(tmp_path / "a", prepared_digits)
    b = project_with_data(tmp_path / "b", prepared_digits)
    c = project_with_data(tmp_path / "c", prepared_digits)
    train(tiny(), a)
    train(tiny(), b)
    train(tiny({"train": {"seed": 1}}), c)
    weights = lambda root: (root / "models" / "generator.safetensors").read_bytes()  # noqa: E731
    assert weights(a) == weights(b)
    assert weights(a) != weights(c)


SPIN_COUNT_AT_TORCH_IMPORT = """
import os, sys
seen = []
class Spy:  # records GOMP_SPINCOUNT when torch is first looked up, i.e. before libgomp loads
    def find_spec(self, name, path=None, target=None):
        if name == "torch" and not seen:
            seen.append(os.environ.get("GOMP_SPINCOUNT"))
sys.meta_path.insert(0, Spy())
import ganops.stages.train  # what `ganops train` imports (the CLI itself imports torch lazily)
print(seen[0], "|", ganops.CPU_WAIT)
"""


@pytest.mark.system
@pytest.mark.parametrize("competitors", [0, 1])
@pytest.mark.parametrize("environment", [{}, {"GOMP_SPINCOUNT": "77"}, {"OMP_WAIT_POLICY": "PASSIVE"}])
def test_libgomps_spin_count_is_chosen_before_torch_loads_from_the_load_unless_the_user_set_one(environment,
                                                                                               competitors):
    """Beside a CPU-bound process ganops sets the short spin count, on an idle machine none, and a
    user's GOMP_SPINCOUNT or OMP_WAIT_POLICY is left alone; whatever it is, torch loads with it."""
    import ganops

    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")} | environment
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(competitors)]
    try:
        done = subprocess.run([sys.executable, "-c", SPIN_COUNT_AT_TORCH_IMPORT], env=env, capture_output=True,
                              text=True, check=True)
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()
    seen, choice = (part.strip() for part in done.stdout.split("|"))
    if environment:
        assert seen == environment.get("GOMP_SPINCOUNT", "None") and "set by the user" in choice
    elif competitors:
        assert seen == ganops.BUSY_SPIN_COUNT and "other runnable" in choice
    else:  # idle, unless something else runs beside the test; either way torch loads with what ganops says
        assert (seen, "no other runnable" in choice) in (("None", True), (ganops.BUSY_SPIN_COUNT, False)), (seen, choice)


def test_the_spin_count_is_short_only_beside_another_runnable_process_and_never_over_the_users():
    from ganops import BUSY_SPIN_COUNT, choose_spin_count

    idle, busy = {}, {}
    assert "no other runnable" in choose_spin_count(idle, lambda: 0) and idle == {}
    assert "1 other runnable" in choose_spin_count(busy, lambda: 1) and busy == {"GOMP_SPINCOUNT": BUSY_SPIN_COUNT}
    for users in ({"GOMP_SPINCOUNT": "77"}, {"OMP_WAIT_POLICY": "PASSIVE"}):
        environ = dict(users)
        assert "set by the user" in choose_spin_count(environ, lambda: 1) and environ == users


@pytest.mark.system
@pytest.mark.parametrize("other", [{"GOMP_SPINCOUNT": "300000"}])
def test_the_spin_count_changes_waiting_not_the_weights(tmp_path, prepared_digits, other):
    """`ganops train` with ganops' short spin count and with libgomp's default: the same bytes."""
    from ganops import BUSY_SPIN_COUNT

    weights = []
    for index, setting in enumerate(({"GOMP_SPINCOUNT": BUSY_SPIN_COUNT}, other)):
        root = project_with_data(tmp_path / str(index), prepared_digits)
        write_params(root / "params.yaml", {"mlflow": {"enabled": False}})
        env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")} | setting
        subprocess.run([sys.executable, "-m", "ganops.cli", "train"], cwd=root, env=env, check=True, capture_output=True)
        weights.append((root / "models" / "generator.safetensors").read_bytes())
    assert weights[0] == weights[1]


def test_runnable_others_reads_proc_stat():
    from ganops import runnable_others

    assert runnable_others("cpu  1 2 3\nprocs_running 3\nprocs_blocked 0\n") == 2
    assert runnable_others("procs_running 1\n") == 0
    assert runnable_others("no such line\n") == 0


@pytest.mark.stage
def test_ema_generator_is_the_one_saved(tmp_path, prepared_digits):
    root = project_with_data(tmp_path, prepared_digits)
    train(tiny({"train": {"ema_decay": 0.9}}), root)
    saved = load_file(root / "models" / "generator.safetensors")
    state = torch.load(setup_folders(root)[0] / "step-00000020.pt", weights_only=True)
    name = "stem.weight"
    assert torch.equal(saved[name], state["generator_ema"][name])
    assert not torch.equal(saved[name], state["generator"][name])


@pytest.mark.stage
def test_checkpoints_of_other_params_are_not_resumed(tmp_path, prepared_digits):
    root = project_with_data(tmp_path, prepared_digits)
    train(tiny({"train": {"lr_g": 1e-3}}), root)
    summary = train(tiny(), root)
    assert summary["resumed_from_step"] == 0
    # a longer run with the same setup continues from the last checkpoint
    longer = train(tiny({"train": {"steps": 30}}), root)
    assert longer["resumed_from_step"] == 20


def test_fingerprint_follows_what_is_computed_not_how_the_run_goes():
    """Every recipe key but steps, both specs (the data checksum with them), the resolved augmentation
    and the world size change the checkpoint fingerprint, and so does the in-training metric; the run
    knobs and steps do not."""
    from typing import get_args

    from ganops.config import TRAIN_RECIPE, TRAIN_RUN_KNOBS, TrainParams
    from ganops.models import DiscriminatorSpec
    from ganops.training.loop import _fingerprint

    g = GeneratorSpec(latent_dim=8, g_channels=8, resolution=8, channels=1, num_classes=3, data_checksum="a")
    d = DiscriminatorSpec(d_channels=8, resolution=8, channels=1, num_classes=3)
    cfg = TrainParams()
    base = _fingerprint(g, d, cfg, "none", 1, "fd8_domain_train")

    def with_other(name: str) -> str:
        value = getattr(cfg, name)
        if isinstance(value, bool):
            other = not value
        elif isinstance(value, (int, float)):
            other = value + 1
        else:
            other = next(v for v in get_args(TrainParams.model_fields[name].annotation) if v != value)
        return _fingerprint(g, d, cfg.model_copy(update={name: other}), "none", 1, "fd8_domain_train")

    assert {name for name in TrainParams.model_fields if with_other(name) == base} == {*TRAIN_RUN_KNOBS, "steps"}
    assert {name for name in TRAIN_RECIPE if with_other(name) != base} == set(TRAIN_RECIPE) - {"steps"}
    assert _fingerprint(g.model_copy(update={"data_checksum": "b"}), d, cfg, "none", 1, "fd8_domain_train") != base
    assert _fingerprint(g.model_copy(update={"latent_dim": 9}), d, cfg, "none", 1, "fd8_domain_train") != base
    assert _fingerprint(g, d.model_copy(update={"spectral_norm": False}), cfg, "none", 1, "fd8_domain_train") != base
    assert _fingerprint(g, d, cfg, "diffaugment", 1, "fd8_domain_train") != base
    assert _fingerprint(g, d, cfg, "none", 2, "fd8_domain_train") != base
    assert _fingerprint(g, d, cfg, "none", 1, "fid8_tf_train") != base and _fingerprint(g, d, cfg, "none", 1, None) != base


@pytest.mark.stage
def test_experiments_keep_each_others_checkpoints(tmp_path, prepared_digits):
    """A sweep of two settings in one workspace: neither wipes the other's resumable state."""
    root = project_with_data(tmp_path, prepared_digits)
    train(tiny({"train": {"lr_g": 1e-3}}), root)
    train(tiny(), root)
    assert len(setup_folders(root)) == 2 and len(all_checkpoints(root)) == 4
    assert train(tiny({"train": {"lr_g": 1e-3, "steps": 30}}), root)["resumed_from_step"] == 20
    assert train(tiny({"train": {"steps": 30}}), root)["resumed_from_step"] == 20
    # a shorter run of a setup can't use its later checkpoints, and doesn't delete them either
    shorter = train(tiny({"train": {"steps": 10}}), root)
    assert shorter["resumed_from_step"] == 0
    steps = [step for step, _ in all_checkpoints(root)]
    assert 30 in steps
    assert 10 in steps  # ... and keeps its own: a kill now could resume from it
    assert train(tiny({"train": {"steps": 10}}), root)["resumed_from_step"] == 10


@pytest.mark.stage
def test_a_killed_write_leaves_no_lasting_temporary_file(tmp_path, prepared_digits):
    root = project_with_data(tmp_path, prepared_digits)
    train(tiny(), root)
    (folder,) = setup_folders(root)
    partial = folder / ".step-00000030.pt.abc123.tmp"  # what atomic_path leaves when killed mid-write
    partial.write_bytes(b"half a checkpoint")
    fresh = folder / ".step-00000040.pt.def456.tmp"  # another process writing right now
    fresh.write_bytes(b"being written")
    hour_ago = time.time() - 3600
    os.utime(partial, (hour_ago, hour_ago))
    train(tiny({"train": {"steps": 30}}), root)
    assert not partial.exists() and fresh.exists()


@pytest.mark.stage
def test_stale_setups_are_pruned_by_the_retention_rule(tmp_path, prepared_digits):
    root = project_with_data(tmp_path, prepared_digits)
    train(tiny({"train": {"lr_g": 1e-3}}), root)
    (stale,) = setup_folders(root)
    old = time.time() - 20 * 86400
    for path in [stale, *stale.iterdir()]:
        os.utime(path, (old, old))
    train(tiny({"train": {"checkpoint_retention_days": 0}}), root)  # 0: keep everything
    assert stale.exists()
    train(tiny({"train": {"lr_g": 2e-3}}), root)  # default 14 days: the 20-day-old folder goes
    assert not stale.exists() and len(setup_folders(root)) == 2


@pytest.mark.stage
def test_batch_larger_than_data_is_a_clear_error(tmp_path, prepared_digits):
    root = project_with_data(tmp_path, prepared_digits)
    with pytest.raises(GanopsError, match="batch_size=4096 is larger than the"):
        train(tiny({"train": {"batch_size": 4096}}), root)


@pytest.mark.stage
def test_missing_prepared_data_is_a_clear_error(tmp_path):
    with pytest.raises(GanopsError, match="run `ganops prepare`"):
        train(tiny(), tmp_path)


def _weights(root: Path) -> dict[str, torch.Tensor]:
    return load_file(root / "models" / "generator.safetensors")


@pytest.mark.system
def test_resume_after_sigkill_matches_uninterrupted_run(tmp_path, prepared_digits, evaluator):
    """Kill a real training process with SIGKILL after a checkpoint, re-run, compare with a clean run.
    The killed run reads its batches from the shards (train.in_memory_max_mb: 0), the clean run holds
    the split in memory: the same weights prove the streamed path resumes mid-epoch exactly. Both are
    watched (an evaluation every 100 steps, two snapshots kept): the resumed run has the same
    evaluations, candidates and chosen snapshot."""
    overrides = {"train": {"steps": 600, "checkpoint_every": 50, "log_every": 20, "eval_every": 100, "keep_best": 2}}
    killed = project_with_data(tmp_path / "killed", prepared_digits, evaluator)
    clean = project_with_data(tmp_path / "clean", prepared_digits, evaluator)
    write_params(killed / "params.yaml", merge(overrides, {"train": {"in_memory_max_mb": 0}}))
    write_params(clean / "params.yaml", overrides)
    env = {**os.environ, "TQDM_DISABLE": "1"}
    command = [sys.executable, "-m", "ganops.cli", "train"]

    process = subprocess.Popen(command, cwd=killed, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not all_checkpoints(killed) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "training ended before it could be killed"
    step_at_kill = all_checkpoints(killed)[0][0]
    assert 0 < step_at_kill < 600
    assert not (killed / "models" / "generator.safetensors").exists()

    resumed = subprocess.run(command, cwd=killed, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from checkpoint" in resumed.stderr
    report = json.loads((killed / "reports" / "train.json").read_text())
    assert report["resumed_from_step"] >= step_at_kill and report["images_from"] == "shards"

    subprocess.run(command, cwd=clean, env=env, check=True, capture_output=True, timeout=300)
    a, b = _weights(killed), _weights(clean)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the log of the resumed run is the log of the clean run, wall times aside
    strip = lambda root: [{k: v for k, v in r.items() if k not in ("wall_time_s", "images_per_s")}  # noqa: E731
                          for r in csv.DictReader((root / "reports" / "train_log.csv").open())]
    assert strip(killed) == strip(clean)
    assert (killed / "reports" / "train_watch.csv").read_text() == (clean / "reports" / "train_watch.csv").read_text()
    assert len((clean / "reports" / "train_watch.csv").read_text().splitlines()) == 1 + 6
    straight = json.loads((clean / "reports" / "train.json").read_text())
    for key in ("chosen_step", "chosen_because", "candidates", "generator_sha256", "weights_sha256"):
        assert report[key] == straight[key], key


@pytest.mark.stage
def test_checkpoints_of_other_code_are_not_resumed(tmp_path, prepared_digits, monkeypatch):
    from ganops.training import loop

    root = project_with_data(tmp_path, prepared_digits)
    train(tiny(), root)
    monkeypatch.setattr(loop, "_code_digest", lambda: "edited training code")
    assert train(tiny({"train": {"steps": 30}}), root)["resumed_from_step"] == 0


def test_training_code_is_hashed_by_checkpoints_and_tracked_by_dvc(monkeypatch):
    """TRAINING_CODE: the files the checkpoint's code digest reads are exactly its .py files, and the
    train stage's deps in dvc.yaml (and the tracking fallback without dvc.yaml) name every part."""
    import yaml

    from ganops.paths import TRAINING_CODE
    from ganops.tracking.runs import _TRAIN_DEPS
    from ganops.training import loop

    package = Path(loop.__file__).resolve().parents[1]
    expected = {source for part in TRAINING_CODE
                for source in ((package / part).glob("*.py") if (package / part).is_dir() else [package / part])}
    read = set()
    original = Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda self: read.add(self) or original(self))
    loop._code_digest()
    assert read == expected and package / "pixels.py" in read and package / "training" / "loop.py" in read
    deps = yaml.safe_load((Path(__file__).resolve().parents[1] / "dvc.yaml").read_text())["stages"]["train"]["deps"]
    parts = {f"src/ganops/{part}" for part in TRAINING_CODE}
    assert parts <= set(deps) and parts <= set(_TRAIN_DEPS)


def _run(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "TQDM_DISABLE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.mark.system
def test_ddp_on_two_cpu_processes_keeps_ranks_identical_and_resumes(tmp_path, prepared_digits, evaluator):
    """`ganops train` with train.nproc: 2 relaunches itself under torchrun (gloo); both ranks end with
    the same weights, and a DDP run extended from its checkpoint equals one trained straight through.
    With ADA on, so that its p (steered by E[sign(D(real))] over both ranks) is resumed too. The
    straight run and the extension read each rank's share from the shards (train.in_memory_max_mb: 0);
    the first 40 steps of the resumed run hold the split in memory: all end with the same weights."""
    ddp = {"train": {"batch_size": 32, "checkpoint_every": 20, "log_every": 10, "nproc": 2, "augment": "ada",
                     "ada_kimg": 0.2, "eval_every": 20}}
    streamed = {"in_memory_max_mb": 0}
    straight = project_with_data(tmp_path / "straight", prepared_digits, evaluator)
    write_params(straight / "params.yaml", merge(ddp, {"train": {"steps": 60, **streamed}}))
    result = _run([str(Path(sys.executable).parent / "ganops"), "train"], straight)
    digests = re.findall(r"weights ([0-9a-f]{16}) on every rank", result.stderr)
    report = json.loads((straight / "reports" / "train.json").read_text())
    assert report["world_size"] == 2 and digests == [report["weights_sha256"]]
    # the ranks are compared at every checkpoint, not only at the end
    checked = [int(step) for step in re.findall(r"step (\d+): all 2 ranks hold identical weights", result.stderr)]
    assert checked == [20, 40, 60]
    assert report["augment"] == "ada" and report["augment_p"] > 0

    resumed = project_with_data(tmp_path / "resumed", prepared_digits, evaluator)
    write_params(resumed / "params.yaml", merge(ddp, {"train": {"steps": 40}}))
    _run([str(Path(sys.executable).parent / "ganops"), "train"], resumed)
    write_params(resumed / "params.yaml", merge(ddp, {"train": {"steps": 60, **streamed}}))
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "ganops.cli", "train"]
    _run(torchrun, resumed)  # the documented command, straight through torchrun
    extended = json.loads((resumed / "reports" / "train.json").read_text())
    assert extended["resumed_from_step"] == 40 and extended["world_size"] == 2
    assert extended["weights_sha256"] == report["weights_sha256"] and extended["augment_p"] == report["augment_p"]
    weights = Path("models") / "generator.safetensors"
    assert (resumed / weights).read_bytes() == (straight / weights).read_bytes()
    # rank 0 scored at 20, 40 and 60, and both ranks went on together after each evaluation
    assert [row["step"] for row in csv.DictReader((straight / "reports" / "train_watch.csv").open())] == ["20", "40", "60"]
    assert extended["chosen_step"] == report["chosen_step"] and extended["generator_sha256"] == report["generator_sha256"]


@pytest.mark.system
def test_batch_must_split_evenly_over_processes(tmp_path, prepared_digits):
    root = project_with_data(tmp_path, prepared_digits)
    write_params(root / "params.yaml", {"train": {"batch_size": 15, "nproc": 2}})
    result = subprocess.run([str(Path(sys.executable).parent / "ganops"), "train"], cwd=root, capture_output=True,
                            text=True, timeout=300, env={**os.environ, "TQDM_DISABLE": "1"})
    assert result.returncode != 0 and "must divide evenly over 2 processes" in result.stderr


def test_training_state_comes_back_whole_from_a_weights_only_checkpoint(tmp_path):
    """TrainingState.capture -> a checkpoint file -> torch.load(weights_only=True) -> restore into other
    objects: every field (networks, optimisers, batch order, sums, ADA, counters, log) and the RNGs
    come back as they were."""
    from dataclasses import fields

    from ganops.models import DiscriminatorSpec, build_discriminator
    from ganops.training.augment import AdaController
    from ganops.training.checkpoint import TrainingState, save_checkpoint
    from ganops.training.loop import BatchStream
    from ganops.training.watch import Watch, cpu_weights

    def fresh(seed: int) -> TrainingState:
        torch.manual_seed(seed)
        g_spec = GeneratorSpec(latent_dim=8, g_channels=8, resolution=8, channels=1, num_classes=3)
        G, G_ema = build_generator(g_spec), build_generator(g_spec)
        D = build_discriminator(DiscriminatorSpec(d_channels=8, resolution=8, channels=1, num_classes=3))
        return TrainingState(generator=G, discriminator=D, generator_ema=G_ema, opt_g=torch.optim.Adam(G.parameters()),
                             opt_d=torch.optim.Adam(D.parameters()), stream=BatchStream(40, 8, seed=0),
                             window=torch.zeros(6), ada=AdaController(0.6, 1.0, 4, 8, torch.device("cpu")),
                             noise=torch.Generator().manual_seed(seed), watch=Watch("fd8_domain_train", 1, 2, 3.0, 1.96))

    a = fresh(0)
    labels = torch.arange(4) % 3
    (a.generator(torch.randn(4, 8), labels).mean() + a.discriminator(torch.randn(4, 1, 8, 8), labels).mean()).backward()
    a.opt_g.step(), a.opt_d.step()
    for _ in range(7):  # into the second epoch
        a.stream.next()
    a.window += torch.arange(6.0)
    for done in range(1, 7):
        a.ada.observe(torch.tensor(0.9), done)
    torch.rand(3, generator=a.noise)
    a.step, a.elapsed_s, a.log, a.window_steps = 7, 1.5, [{"step": 5, "loss_d": 0.5}], 2
    a.stopped, a.watch_s = "step 7: a reason", 0.25
    a.watch.observe(5, 2.0, 0.1, lambda: cpu_weights(a.generator_ema), torch.zeros(2, 1, 8, 8, dtype=torch.uint8))
    path = save_checkpoint(tmp_path, 7, a.capture("setup", [a.noise.get_state()]), keep=1)
    after_capture = (torch.rand(3), torch.rand(3, generator=a.noise))

    b = fresh(1)
    checkpoint = torch.load(path, weights_only=True)
    assert {f.name for f in fields(TrainingState)} - {"noise"} <= set(checkpoint)
    b.restore(checkpoint, rank=0)
    assert torch.equal(torch.rand(3), after_capture[0]) and torch.equal(torch.rand(3, generator=b.noise), after_capture[1])
    for name in ("generator", "discriminator", "generator_ema"):
        mine, theirs = getattr(a, name).state_dict(), getattr(b, name).state_dict()
        assert all(torch.equal(mine[k], theirs[k]) for k in mine), name
    for name in ("opt_g", "opt_d"):
        mine, theirs = getattr(a, name).state_dict()["state"], getattr(b, name).state_dict()["state"]
        assert mine.keys() == theirs.keys() and all(
            torch.equal(mine[i][k], theirs[i][k]) for i in mine for k in mine[i]), name
    assert torch.equal(a.stream.next(), b.stream.next()) and a.stream.state_dict() == b.stream.state_dict()
    assert torch.equal(b.window, torch.arange(6.0)) and b.ada.p > 0 and torch.equal(b.ada.p, a.ada.p)
    assert torch.equal(b.ada.signs, a.ada.signs)
    assert (b.step, b.elapsed_s, b.log, b.window_steps) == (7, 1.5, [{"step": 5, "loss_d": 0.5}], 2)
    assert (b.stopped, b.watch_s, b.watch.best_step, b.watch.rows()) == (a.stopped, 0.25, 5, a.watch.rows())
    assert b.watch.kept.keys() == {5} and all(torch.equal(b.watch.kept[5][k], v) for k, v in a.watch.kept[5].items())


def test_step_reads_its_inputs_from_fixed_buffers():
    """What CUDA-graph replay relies on: every step's inputs land in the same tensors, refilled in
    place, and the step reads nothing else that changes (checked here on CPU, where it runs eagerly)."""
    from ganops.models import DiscriminatorSpec, build_discriminator
    from ganops.training.loop import BatchStream, HeldImages
    from ganops.training.report import STEP_STATS
    from ganops.training.step import Networks, TrainStep

    cfg = tiny({"train": {"loss": "wgan-gp", "d_steps": 2}}).train
    torch.manual_seed(0)
    g_spec = GeneratorSpec(latent_dim=8, g_channels=8, resolution=8, channels=1, num_classes=3)
    G = build_generator(g_spec)
    D = build_discriminator(DiscriminatorSpec(d_channels=8, resolution=8, channels=1, num_classes=3))
    images = torch.randint(0, 256, (40, 1, 8, 8), dtype=torch.uint8)
    labels = torch.arange(40) % 3
    networks = Networks(G, D, D, D, torch.optim.Adam(G.parameters()), torch.optim.Adam(D.parameters()))
    step = TrainStep(cfg, networks, HeldImages(images.numpy(), torch.device("cpu")), labels, batch_size=8, latent_dim=8,
                     device=torch.device("cpu"), cuda_graph=True)
    assert not step.cuda_graph  # no graphs without CUDA
    buffers = [*step.real_u8, *step.y, *step.z, *step.alpha]
    addresses = [b.data_ptr() for b in buffers]
    stream, noise = BatchStream(40, 8, seed=0), torch.Generator().manual_seed(1)
    step.fill(stream.next, noise)
    first = [b.clone() for b in buffers]
    stats = step.run()
    step.fill(stream.next, noise)
    assert [b.data_ptr() for b in buffers] == addresses
    assert all(not torch.equal(a, b) for a, b in zip(first, buffers))  # new batches, labels, noise
    named = dict(zip(STEP_STATS, stats.tolist()))
    assert stats.shape == (6,) and torch.isfinite(stats).all() and named["penalty"] > 0  # the gradient penalty ran
    assert -1 <= named["real_sign"] <= 1
    # the filled batch is exactly the images the stream picked, in its order
    replay = BatchStream(40, 8, seed=0)
    replay.next(), replay.next()
    third = replay.next()
    assert torch.equal(step.real_u8[0], images[third]) and torch.equal(step.y[0], labels[third])


def _check_on_rank(rank: int, init_file: str, seeds: tuple[int, int], results) -> None:
    """One of two real gloo processes: its network from ``seeds[rank]``, then the loop's agreement check."""
    import torch.distributed as dist

    from ganops.training.distributed import Dist
    from ganops.training.loop import _check_ranks_agree

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        torch.manual_seed(seeds[rank])
        network = torch.nn.Linear(4, 4)
        try:
            results.put((rank, "agree", _check_ranks_agree(Dist(rank, 2), 7, network)))
        except GanopsError as error:
            results.put((rank, "error", str(error)))
    finally:
        dist.destroy_process_group()


@pytest.mark.system
@pytest.mark.parametrize(("seeds", "outcome"), [((0, 0), "agree"), ((0, 1), "error")])
def test_the_rank_agreement_check_fires_when_ranks_diverge(tmp_path, seeds, outcome):
    """Two real processes in a gloo group: identical weights pass, different ones stop the run on every rank."""
    import torch.multiprocessing as mp

    results = mp.get_context("spawn").SimpleQueue()
    mp.start_processes(_check_on_rank, args=(str(tmp_path / "rendezvous"), seeds, results), nprocs=2,
                       start_method="spawn")
    answers = sorted(results.get() for _ in range(2))
    assert [kind for _, kind, _ in answers] == [outcome, outcome]
    if outcome == "error":
        assert all("ranks diverged by step 7: weight digests" in text for _, _, text in answers)
    else:
        assert answers[0][2] == answers[1][2]
