import json
import typing

import pytest
import torch
from torch.nn import functional as F

from ganops.models import DiscriminatorSpec, GeneratorSpec, SpecError, build_discriminator, build_generator

ARCHS = ["dcgan", "resnet"]


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("resolution", [8, 16, 32, 64, 128])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("num_classes", [0, 10])
def test_output_shapes(resolution, channels, num_classes, arch):
    g = build_generator(GeneratorSpec(latent_dim=16, g_channels=8, max_channels=64, resolution=resolution,
                                      channels=channels, num_classes=num_classes, arch=arch))
    d = build_discriminator(DiscriminatorSpec(d_channels=8, max_channels=64, resolution=resolution,
                                              channels=channels, num_classes=num_classes, arch=arch))
    labels = torch.randint(0, 10, (3,)) if num_classes else None
    images = g(torch.randn(3, 16), labels)
    assert images.shape == (3, channels, resolution, resolution)
    assert images.min() >= -1 and images.max() <= 1
    assert d(images, labels).shape == (3,)


@pytest.mark.parametrize("arch", ARCHS)
def test_conditioning_changes_output(arch):
    torch.manual_seed(0)
    g = build_generator(GeneratorSpec(latent_dim=8, g_channels=8, resolution=16, channels=1, num_classes=10,
                                      arch=arch)).eval()
    d = build_discriminator(DiscriminatorSpec(d_channels=8, resolution=16, channels=1, num_classes=10, arch=arch))
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


def test_arch_names_agree():
    """model.arch (config), the specs' arch and the two registries of networks name the same archs."""
    from ganops.config import ModelParams
    from ganops.models import DISCRIMINATORS, GENERATORS, Arch

    names = set(typing.get_args(ModelParams.model_fields["arch"].annotation))
    assert names == set(typing.get_args(Arch)) == set(GENERATORS) == set(DISCRIMINATORS) == set(ARCHS)
    assert ModelParams().arch == "dcgan"


def test_dcgan_is_built_as_before_the_choice():
    """The default path draws the same random numbers as the DCGAN classes called directly (the same
    weights for the same seed, the same generator state after), and its specs' records are unchanged:
    a DCGAN discriminator spec has no arch key (so the training fingerprint is the same), and a
    generator.json written before there was a choice still loads, as a DCGAN."""
    from ganops.models import Discriminator, Generator

    g_spec = GeneratorSpec(latent_dim=8, g_channels=8, resolution=16, channels=1, num_classes=10)
    d_spec = DiscriminatorSpec(d_channels=8, resolution=16, channels=1, num_classes=10)

    def built(make_g, make_d):
        torch.manual_seed(0)
        g, d = make_g(g_spec), make_d(d_spec)
        return g.state_dict(), d.state_dict(), torch.rand(4)

    by_arch, direct = built(build_generator, build_discriminator), built(Generator, Discriminator)
    for ours, theirs in zip(by_arch[:2], direct[:2]):
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert torch.equal(by_arch[2], direct[2])
    assert "arch" not in d_spec.model_dump() and "arch" not in json.loads(d_spec.model_dump_json())
    resnet_d = d_spec.model_copy(update={"arch": "resnet"})
    assert resnet_d.model_dump()["arch"] == "resnet"
    assert DiscriminatorSpec.model_validate(resnet_d.model_dump()) == resnet_d
    old = ('{"resolution": 32, "channels": 1, "num_classes": 10, "max_channels": 512, "arch": "dcgan", "latent_dim": 64, '
           '"g_channels": 32, "class_names": ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"], "output_range": '
           '[-1.0, 1.0], "output_layout": "NCHW", "data_checksum": "ab"}')
    spec = GeneratorSpec.model_validate(json.loads(old))
    assert spec.arch == "dcgan" and json.dumps(spec.model_dump(mode="json")) == old
    assert type(build_generator(spec)) is Generator


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("num_classes", [0, 10])
def test_spectral_norm_on_every_discriminator_layer(arch, num_classes):
    """Every layer of D with weights (convs, shortcuts, head, class embedding) is spectrally normalised
    when spectral_norm is on, none when it is off; the resnet's convs reach gain 1."""
    layers = (torch.nn.Conv2d, torch.nn.Linear, torch.nn.Embedding)
    spec = DiscriminatorSpec(d_channels=8, resolution=16, channels=1, num_classes=num_classes, arch=arch)
    d = build_discriminator(spec)
    weighted = [m for m in d.modules() if isinstance(m, layers)]
    # dcgan: 2 strided convs + head; resnet: 3 blocks (2 convs each, shortcuts where the size or width
    # changes: 2) + head; + the class embedding when conditional
    assert len(weighted) == (3 if arch == "dcgan" else 9) + (num_classes > 0)
    assert all(hasattr(m, "parametrizations") for m in weighted)
    for _ in range(30):  # power iteration converges in training mode
        d(torch.randn(4, 1, 16, 16), torch.randint(0, 10, (4,)) if num_classes else None)
    for conv in (m for m in weighted if isinstance(m, torch.nn.Conv2d)):
        sigma = torch.linalg.matrix_norm(conv.weight.detach().flatten(1), ord=2).item()
        assert sigma == pytest.approx(1.0, abs=0.05)
    plain = build_discriminator(spec.model_copy(update={"spectral_norm": False}))
    assert not any(hasattr(m, "parametrizations") for m in plain.modules())


def test_resnet_blocks_are_residual():
    """Zero the last conv of each residual branch and the networks are their shortcuts alone: in G the
    upsampled input (through the 1x1 conv where the width changes), in D the average-pooled input."""
    from ganops.models.resnet import DownBlock, UpBlock

    g = build_generator(GeneratorSpec(latent_dim=8, g_channels=4, max_channels=8, resolution=16, channels=1,
                                      arch="resnet"))
    widths = [(b.conv1.in_channels, b.conv1.out_channels) for b in g.blocks]
    assert widths == [(8, 4), (4, 4)]  # 4x4 -> 8x8 halves the width, 8x8 -> 16x16 keeps it
    assert g.blocks[0].shortcut is not None and g.blocks[1].shortcut is None
    x = torch.randn(2, 4, 8, 8)
    same = UpBlock(4, 4, num_classes=0)
    torch.nn.init.zeros_(same.conv2.weight)
    torch.nn.init.zeros_(same.conv2.bias)
    assert torch.allclose(same(x, None), F.interpolate(x, scale_factor=2.0, mode="nearest"))
    wider = UpBlock(4, 6, num_classes=3)
    torch.nn.init.zeros_(wider.conv2.weight)
    torch.nn.init.zeros_(wider.conv2.bias)
    up = F.interpolate(x, scale_factor=2.0, mode="nearest")
    assert torch.allclose(wider(x, torch.tensor([0, 2])), wider.shortcut(up), atol=1e-6)
    down = DownBlock(4, 4, down=True, first=False, wrap=lambda m: m)
    torch.nn.init.zeros_(down.conv2.weight)
    torch.nn.init.zeros_(down.conv2.bias)
    assert torch.allclose(down(x), down.shortcut(F.avg_pool2d(x, 2)) if down.shortcut else F.avg_pool2d(x, 2),
                          atol=1e-6)
    keep = DownBlock(4, 4, down=False, first=False, wrap=lambda m: m)
    torch.nn.init.zeros_(keep.conv2.weight)
    torch.nn.init.zeros_(keep.conv2.bias)
    assert keep.shortcut is None and torch.equal(keep(x), x)


def test_resnet_generator_norms_are_class_conditional():
    """Conditional batch norm in every block of the resnet G: each class has its own gain and bias."""
    from ganops.models.dcgan import ConditionalBatchNorm2d

    g = build_generator(GeneratorSpec(latent_dim=8, g_channels=4, max_channels=8, resolution=16, channels=1,
                                      num_classes=3, arch="resnet"))
    conditional = [m for m in g.modules() if isinstance(m, ConditionalBatchNorm2d)]
    assert len(conditional) == 2 * len(g.blocks)
    plain = build_generator(GeneratorSpec(latent_dim=8, g_channels=4, max_channels=8, resolution=16, channels=1,
                                          arch="resnet"))
    assert not any(isinstance(m, ConditionalBatchNorm2d) for m in plain.modules())


@pytest.mark.parametrize("spectral_norm", [True, False])
def test_resnet_discriminator_projects_the_class_embedding(spectral_norm):
    """Projection D: changing the label changes the logit by exactly <e_a - e_b, phi(x)>, phi being D's
    pooled features (ReLU, sum over positions) and e the class embedding."""
    torch.manual_seed(0)
    d = build_discriminator(DiscriminatorSpec(d_channels=4, max_channels=8, resolution=16, channels=1, num_classes=5,
                                              arch="resnet", spectral_norm=spectral_norm)).eval()
    x = torch.randn(3, 1, 16, 16)
    with torch.no_grad():
        h = x
        for block in d.blocks:
            h = block(h)
        phi = F.relu(h).sum(dim=(2, 3))
        a, b = torch.tensor([0, 1, 4]), torch.tensor([3, 3, 2])
        e = d.embed.weight
        expected = ((e[a] - e[b]) * phi).sum(dim=1)
        assert torch.allclose(d(x, a) - d(x, b), expected, atol=1e-5)
        assert torch.allclose(d(x, a), d.head(phi).squeeze(1) + (e[a] * phi).sum(dim=1), atol=1e-5)
        assert expected.abs().min() > 0


@pytest.mark.parametrize("arch", ARCHS)
def test_load_generator_rebuilds_the_arch_its_spec_names(tmp_path, arch):
    """A saved generator comes back from its spec file as the same network (strict load: every tensor)."""
    from safetensors.torch import save_file

    from ganops.models import GENERATORS, load_generator

    spec = GeneratorSpec(latent_dim=8, g_channels=4, max_channels=8, resolution=16, channels=1, num_classes=3,
                         class_names=["a", "b", "c"], arch=arch)
    torch.manual_seed(0)
    generator = build_generator(spec)
    with torch.no_grad():
        generator(torch.randn(8, 8), torch.arange(8) % 3)  # running statistics away from their initial values
    save_file(generator.state_dict(), tmp_path / "generator.safetensors")
    spec.save(tmp_path / "generator.json")
    loaded = load_generator(tmp_path / "generator.safetensors", tmp_path / "generator.json")
    assert type(loaded) is GENERATORS[arch] and loaded.spec == spec
    z, labels = torch.randn(4, 8), torch.tensor([0, 1, 2, 0])
    with torch.no_grad():
        assert torch.equal(loaded(z, labels), generator.eval()(z, labels))
