"""Each loss on logits small enough to check by hand."""

import math

import pytest
import torch

from ganops.training.ema import update_ema
from ganops.training.losses import (
    LOSSES,
    discriminator_loss,
    generator_loss,
    gradient_penalty,
    r1_penalty,
    r2_penalty,
)

REAL = torch.tensor([0.0, 2.0])
FAKE = torch.tensor([0.0, -1.0])


def test_minimax_is_the_log_likelihood_objective():
    # D: -[log s(0) + log s(2)]/2 - [log(1 - s(0)) + log(1 - s(-1))]/2, with s the sigmoid
    s = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    expected_d = -(math.log(s(0)) + math.log(s(2))) / 2 - (math.log(1 - s(0)) + math.log(1 - s(-1))) / 2
    assert discriminator_loss("minimax", REAL, FAKE).item() == pytest.approx(expected_d, rel=1e-6)
    # G, non-saturating: -[log s(0) + log s(-1)]/2
    expected_g = -(math.log(s(0)) + math.log(s(-1))) / 2
    assert generator_loss("minimax", FAKE).item() == pytest.approx(expected_g, rel=1e-6)


def test_minimax_is_stable_for_large_logits():
    loss = discriminator_loss("minimax", torch.tensor([100.0]), torch.tensor([-100.0]))
    assert torch.isfinite(loss) and loss.item() == pytest.approx(0.0, abs=1e-6)
    assert generator_loss("minimax", torch.tensor([-100.0])).item() == pytest.approx(100.0)


def test_hinge():
    # D: mean(relu(1 - [0, 2])) + mean(relu(1 + [0, -1])) = (1 + 0)/2 + (1 + 0)/2 = 1
    assert discriminator_loss("hinge", REAL, FAKE).item() == pytest.approx(1.0)
    assert generator_loss("hinge", FAKE).item() == pytest.approx(0.5)


def test_wasserstein():
    # D: mean(fake) - mean(real) = -0.5 - 1 = -1.5
    assert discriminator_loss("wgan-gp", REAL, FAKE).item() == pytest.approx(-1.5)
    assert generator_loss("wgan-gp", FAKE).item() == pytest.approx(0.5)


def test_rpgan_pairs_each_real_with_one_fake():
    # D: mean softplus(D(fake_i) - D(real_i)) = [softplus(0 - 0) + softplus(-1 - 2)] / 2
    sp = lambda v: math.log1p(math.exp(v))  # noqa: E731
    assert discriminator_loss("rpgan", REAL, FAKE).item() == pytest.approx((sp(0) + sp(-3)) / 2, rel=1e-6)
    # G: the reversed differences, mean softplus(D(real_i) - D(fake_i)) = [softplus(0) + softplus(3)] / 2
    assert generator_loss("rpgan", FAKE, REAL).item() == pytest.approx((sp(0) + sp(3)) / 2, rel=1e-6)
    # paired, not pooled: the same logits in another pairing give another loss
    assert discriminator_loss("rpgan", REAL, FAKE.flip(0)).item() == pytest.approx((sp(-1) + sp(-2)) / 2, rel=1e-6)
    # stable in logits, like the others
    assert discriminator_loss("rpgan", torch.tensor([100.0]), torch.tensor([-100.0])).item() == pytest.approx(0.0, abs=1e-6)
    assert generator_loss("rpgan", torch.tensor([-100.0]), torch.tensor([100.0])).item() == pytest.approx(200.0)


def test_rpgan_generator_needs_the_paired_real_logits_and_passes_them_no_gradient():
    entry = LOSSES["rpgan"]
    assert entry.generator_reads_real and entry.penalty_on_fakes and not entry.penalty_on_interpolates
    assert not any(LOSSES[name].generator_reads_real or LOSSES[name].penalty_on_fakes
                   for name in ("minimax", "hinge", "wgan-gp"))
    with pytest.raises(ValueError, match="pass d_real"):
        generator_loss("rpgan", FAKE)
    with pytest.raises(ValueError, match="pairs each real image"):
        discriminator_loss("rpgan", REAL, FAKE[:1])
    with pytest.raises(ValueError, match="pairs each real image"):
        generator_loss("rpgan", FAKE, REAL[:1])
    d_real, d_fake = REAL.clone().requires_grad_(True), FAKE.clone().requires_grad_(True)
    generator_loss("rpgan", d_fake, d_real).backward()
    assert d_real.grad is None  # D(real) is a constant of the generator's step
    # d/d fake_i of mean softplus(real_i - fake_i) = -sigmoid(real_i - fake_i) / N
    expected = -torch.sigmoid(REAL - FAKE) / 2
    assert torch.allclose(d_fake.grad, expected)
    # the other losses ignore d_real
    assert generator_loss("minimax", FAKE, REAL).item() == generator_loss("minimax", FAKE).item()


def test_r1_and_r2_are_zero_centred_gradient_penalties_on_a_linear_critic():
    """D(x) = <w, x> + b has gradient w everywhere: R1 and R2 are ||w||^2 at any point (zero-centred,
    so zero for a flat critic), where WGAN-GP's one-centred penalty is (||w|| - 1)^2."""
    for w, expected in ((torch.tensor([3.0, 4.0]), 25.0), (torch.zeros(2), 0.0)):
        critic = lambda x, w=w: (x * w.view(1, 2, 1, 1)).flatten(1).sum(1) + 0.5  # noqa: E731
        real = torch.randn(5, 2, 1, 1, requires_grad=True)
        fake = torch.randn(5, 2, 1, 1).requires_grad_(True)
        assert r1_penalty(critic(real), real).item() == pytest.approx(expected)
        assert r2_penalty(critic(fake), fake).item() == pytest.approx(expected)
        one_centred = gradient_penalty(critic, real.detach(), fake.detach(), torch.rand(5, 1, 1, 1)).item()
        assert one_centred == pytest.approx((w.norm().item() - 1.0) ** 2)


def test_r2_is_taken_at_the_generated_images_and_trains_the_critic():
    # D(x) = a * sum(x^2): gradient 2ax at x, so R2 = mean 4a^2 ||fake||^2 -- at the fakes, not elsewhere
    a = torch.tensor(1.5, requires_grad=True)
    fake = torch.tensor([[1.0, 2.0], [0.0, 1.0]], requires_grad=True)
    penalty = r2_penalty(a * (fake**2).sum(1), fake)
    assert penalty.item() == pytest.approx(4 * 1.5**2 * (5 + 1) / 2)
    penalty.backward()  # differentiable in D's parameters (create_graph): d/da = 8a * (5 + 1) / 2
    assert a.grad.item() == pytest.approx(8 * 1.5 * 3)


def test_gradient_penalty_of_linear_critic():
    # critic(x) = sum(w * x): gradient w everywhere, so the penalty is (||w|| - 1)^2 exactly.
    w = torch.tensor([3.0, 4.0]).view(1, 2, 1, 1)
    critic = lambda x: (x * w).flatten(1).sum(1)  # noqa: E731
    real, fake = torch.randn(5, 2, 1, 1), torch.randn(5, 2, 1, 1)
    alpha = torch.rand(5, 1, 1, 1)
    assert gradient_penalty(critic, real, fake, alpha).item() == pytest.approx((5.0 - 1.0) ** 2)


def test_r1_of_quadratic_discriminator():
    # D(x) = sum(x^2): gradient 2x, so R1 = mean ||2x||^2 = mean 4 * sum(x^2)
    x = torch.tensor([[1.0, 2.0], [0.0, 1.0]], requires_grad=True)
    d_real = (x**2).sum(1)
    assert r1_penalty(d_real, x).item() == pytest.approx((4 * 5 + 4 * 1) / 2)


def test_unknown_loss():
    with pytest.raises(ValueError):
        discriminator_loss("lsgan", REAL, FAKE)


def test_ema_update():
    model, ema = torch.nn.BatchNorm1d(2), torch.nn.BatchNorm1d(2)
    with torch.no_grad():
        model.weight.fill_(1.0)
        ema.weight.fill_(0.0)
        model.running_mean.fill_(7.0)
    update_ema(model, ema, decay=0.9)
    assert torch.allclose(ema.weight, torch.full((2,), 0.1))
    assert torch.equal(ema.running_mean, model.running_mean)  # buffers copied, not averaged
    update_ema(model, ema, decay=0.0)
    assert torch.equal(ema.weight, model.weight)


def test_ema_decay_ramps_up_to_its_target():
    from ganops.training.ema import ema_decay

    assert ema_decay(0.999, -1) == 0.0  # before ema_start: a copy
    assert ema_decay(0.999, 0) == pytest.approx(0.1)
    assert ema_decay(0.999, 90) == pytest.approx(91 / 100)
    assert ema_decay(0.999, 100_000) == 0.999
    assert ema_decay(0.0, 50) == 0.0


def test_every_registered_loss_is_a_valid_setting_and_trains_a_step():
    """A new loss is one LOSSES entry plus its name in TrainParams.loss: both lists must agree."""
    import typing

    from ganops.config import TrainParams

    assert set(typing.get_args(TrainParams.model_fields["loss"].annotation)) == set(LOSSES)
    d_real, d_fake = torch.randn(8, requires_grad=True), torch.randn(8, requires_grad=True)
    for name in LOSSES:
        (discriminator_loss(name, d_real, d_fake) + generator_loss(name, d_fake, d_real)).backward()
        assert torch.isfinite(d_real.grad).all() and torch.isfinite(d_fake.grad).all(), name
        d_real.grad = d_fake.grad = None
