"""The residual networks (model.arch: resnet) and the rpgan loss train under the training loop, as the
DCGAN and the other losses do (tests/test_training.py's test_each_loss_and_option_trains, through fit)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from conftest import tiny
from ganops.data import load_manifest, open_split
from ganops.models import DiscriminatorSpec, GeneratorSpec, build_discriminator, build_generator
from ganops.stages.train import discriminator_spec, generator_spec
from ganops.training.checkpoint import list_checkpoints
from ganops.training.loop import TrainingJob, fit


@pytest.fixture(scope="module")
def prepared(tiny_prepared16) -> Path:
    """The 8x8 digits prepared at 16 x 16 (conftest's shared project, read only)."""
    return tiny_prepared16 / "data" / "prepared"


def _fit(prepared: Path, checkpoints: Path, arch: str, model: dict, train: dict):
    params = tiny({"data": {"resolution": 16}, "model": model, "train": train})
    manifest = load_manifest(prepared)
    g_spec = GeneratorSpec.model_validate({**generator_spec(params.model, manifest).model_dump(), "arch": arch})
    d_spec = DiscriminatorSpec.model_validate({**discriminator_spec(params.model, manifest).model_dump(), "arch": arch})
    images = open_split(prepared, "train")
    result = fit(TrainingJob(g_spec, d_spec, params.train, "none", images, images.labels, checkpoints))
    return result, g_spec, d_spec


@pytest.mark.stage
@pytest.mark.parametrize(
    ("model", "train"),
    [
        ({"conditional": True}, {"loss": "minimax", "r1_gamma": 1.0}),
        ({"conditional": False}, {"loss": "hinge", "d_steps": 2}),
        ({"conditional": True, "spectral_norm": False}, {"loss": "wgan-gp"}),
    ],
)
def test_resnet_trains_under_the_loop(prepared, tmp_path, model, train):
    result, g_spec, d_spec = _fit(prepared, tmp_path / "checkpoints", "resnet", model, train)
    assert result.spec.arch == "resnet" and type(result.G_ema).__name__ == "ResNetGenerator"
    rows = result.log_rows
    assert [row["step"] for row in rows] == [5, 10, 15, 20]
    assert all(torch.isfinite(torch.tensor([row["loss_d"], row["loss_g"], row["penalty"]])).all() for row in rows)
    if train.get("r1_gamma") or train["loss"] == "wgan-gp":
        assert rows[-1]["penalty"] > 0
    assert all(torch.isfinite(t).all() for t in result.G_ema.state_dict().values() if t.is_floating_point())
    # each network learns: nearly every trainable tensor moves from step 10 to step 20
    (folder,) = [p for p in (tmp_path / "checkpoints").iterdir() if p.is_dir()]
    at = {step: torch.load(path, weights_only=True) for step, path in list_checkpoints(folder)}
    for network, module in (("generator", build_generator(g_spec)), ("discriminator", build_discriminator(d_spec))):
        names = [name for name, _ in module.named_parameters()]
        assert names and set(names) <= set(at[20][network])
        moved = [float((at[20][network][k] - at[10][network][k]).abs().max()) for k in names]
        assert sum(m > 0 for m in moved) >= 0.8 * len(names), (network, dict(zip(names, moved)))


@pytest.mark.stage
def test_the_stage_builds_the_networks_model_arch_names(prepared):
    from ganops.config import ModelParams

    manifest = load_manifest(prepared)
    for arch in ("dcgan", "resnet"):
        model = ModelParams(arch=arch)
        assert generator_spec(model, manifest).arch == arch and discriminator_spec(model, manifest).arch == arch


@pytest.mark.stage
@pytest.mark.parametrize("arch", ["dcgan", "resnet"])
def test_rpgan_with_r1_and_r2_trains_under_the_loop(prepared, tmp_path, arch):
    result, _, _ = _fit(prepared, tmp_path / "checkpoints", arch, {"conditional": True},
                        {"loss": "rpgan", "r1_gamma": 1.0})
    rows = result.log_rows
    assert all(torch.isfinite(torch.tensor([row["loss_d"], row["loss_g"], row["penalty"]])).all() for row in rows)
    assert rows[-1]["penalty"] > 0 and all(row["loss_d"] > 0 and row["loss_g"] > 0 for row in rows)


@pytest.mark.parametrize("conditional", [True, False])
def test_the_step_adds_r2_at_the_fakes_and_the_rpgan_generator_reads_the_paired_real_logits(conditional):
    """One rpgan step, recomputed by hand: the penalty is r1_gamma/2 * (R1 at the real images + R2 at the
    generated ones) under D before its update, D's loss the paired softplus, and G's loss the reversed
    pairs under D after its update (no spectral norm, whose power iteration would move D per call)."""
    from torch.nn import functional as F

    from ganops.pixels import from_uint8
    from ganops.training.loop import BatchStream, HeldImages
    from ganops.training.report import STEP_STATS
    from ganops.training.step import Networks, TrainStep

    cfg = tiny({"train": {"loss": "rpgan", "r1_gamma": 2.0}}).train
    classes = 3 if conditional else 0
    torch.manual_seed(0)
    G = build_generator(GeneratorSpec(latent_dim=8, g_channels=4, max_channels=8, resolution=8, channels=1,
                                      num_classes=classes, arch="resnet"))
    D = build_discriminator(DiscriminatorSpec(d_channels=4, max_channels=8, resolution=8, channels=1,
                                              num_classes=classes, spectral_norm=False, arch="resnet"))
    images, labels = torch.randint(0, 256, (40, 1, 8, 8), dtype=torch.uint8), torch.arange(40) % 3
    networks = Networks(G, D, D, D, torch.optim.Adam(G.parameters()), torch.optim.Adam(D.parameters()))
    step = TrainStep(cfg, networks, HeldImages(images.numpy(), torch.device("cpu")), labels if conditional else None,
                     batch_size=8, latent_dim=8, device=torch.device("cpu"), cuda_graph=False)
    step.fill(BatchStream(40, 8, seed=0).next, torch.Generator().manual_seed(1))
    G_before, D_before = copy.deepcopy(G), copy.deepcopy(D)
    real, y = from_uint8(step.real_u8[0]), step.y[0] if conditional else None
    with torch.no_grad():
        fake = G_before(step.z[0], y)  # training mode, as in the step: the same batch statistics
    stats = dict(zip(STEP_STATS, step.run().tolist()))

    def squared_gradient(x: torch.Tensor) -> float:
        x = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(D_before(x, y).sum(), x)
        return grad.flatten(1).pow(2).sum(dim=1).mean().item()

    assert stats["penalty"] == pytest.approx(0.5 * 2.0 * (squared_gradient(real) + squared_gradient(fake)), rel=1e-4)
    with torch.no_grad():
        assert stats["loss_d"] == pytest.approx(F.softplus(D_before(fake, y) - D_before(real, y)).mean().item(), rel=1e-4)
        assert stats["loss_g"] == pytest.approx(F.softplus(D(real, y) - D(fake, y)).mean().item(), rel=1e-4)
