import pytest
import torch

from ganops.models import DiscriminatorSpec, GeneratorSpec, SpecError, build_discriminator, build_generator


@pytest.mark.parametrize("resolution", [8, 16, 32, 64, 128])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("num_classes", [0, 10])
def test_output_shapes(resolution, channels, num_classes):
    g = build_generator(GeneratorSpec(latent_dim=16, g_channels=8, max_channels=64, resolution=resolution,
                                      channels=channels, num_classes=num_classes))
    d = build_discriminator(DiscriminatorSpec(d_channels=8, max_channels=64, resolution=resolution,
                                              channels=channels, num_classes=num_classes))
    labels = torch.randint(0, 10, (3,)) if num_classes else None
    images = g(torch.randn(3, 16), labels)
    assert images.shape == (3, channels, resolution, resolution)
    assert images.min() >= -1 and images.max() <= 1
    assert d(images, labels).shape == (3,)


def test_conditioning_changes_output():
    torch.manual_seed(0)
    g = build_generator(GeneratorSpec(latent_dim=8, g_channels=8, resolution=16, channels=1, num_classes=10)).eval()
    d = build_discriminator(DiscriminatorSpec(d_channels=8, resolution=16, channels=1, num_classes=10))
    with torch.no_grad():  # scramble the per-class parameters away from their identity init
        for module in list(g.modules()) + list(d.modules()):
            if isinstance(module, torch.nn.Embedding):
                module.weight.normal_()
    z = torch.randn(2, 8)
    assert not torch.allclose(g(z, torch.tensor([0, 0])), g(z, torch.tensor([3, 3])))
    x = torch.randn(2, 1, 16, 16)
    assert not torch.allclose(d(x, torch.tensor([0, 0])), d(x, torch.tensor([3, 3])))
    with pytest.raises(ValueError, match="conditional"):
        g(z)


def test_spectral_norm_bounds_layer_gain():
    d = build_discriminator(DiscriminatorSpec(d_channels=8, resolution=16, channels=1, spectral_norm=True))
    conv = d.downs[1]
    for _ in range(30):  # power iteration converges in training mode
        d(torch.randn(4, 1, 16, 16))
    sigma = torch.linalg.matrix_norm(conv.weight.detach().flatten(1), ord=2).item()
    assert sigma == pytest.approx(1.0, abs=0.05)
    plain = build_discriminator(DiscriminatorSpec(d_channels=8, resolution=16, channels=1, spectral_norm=False))
    assert not hasattr(plain.downs[1], "parametrizations")


def test_spec_rejects_unsupported_and_roundtrips(tmp_path):
    with pytest.raises(ValueError):
        GeneratorSpec(latent_dim=8, g_channels=8, resolution=28, channels=1)
    spec = GeneratorSpec(latent_dim=8, g_channels=8, resolution=32, channels=3, num_classes=2, class_names=["a", "b"])
    spec.save(tmp_path / "generator.json")
    assert GeneratorSpec.load(tmp_path / "generator.json") == spec
    (tmp_path / "bad.json").write_text('{"latent_dim": "x"}')
    with pytest.raises(SpecError, match="not a valid generator spec"):
        GeneratorSpec.load(tmp_path / "bad.json")
    with pytest.raises(SpecError, match="missing"):
        GeneratorSpec.load(tmp_path / "none.json")
