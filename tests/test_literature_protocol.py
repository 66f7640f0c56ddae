"""The literature's FID protocol (Lucic et al. 2018, google/compare_gan): 10,000 generated images against
the test split's 10,000, both at the data's native 28x28, through the TF Inception graph's protocol
(ganops' ``tf``). Here: its name, the crop that undoes prepare's padding, and its number against
torch-fidelity's on real MNIST images written as 28x28 PNGs. Runs on the FID Inception weights and
the MNIST pickle that ./setup.sh installs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from conftest import REPO
from ganops import GanopsError
from ganops.config import load_params
from ganops.data.images import fit_array
from ganops.data.sources import MNIST, MNIST_PICKLE, read_mnist_pickle
from ganops.metrics.frechet import frechet_distance_of_features
from ganops.metrics.inception import InceptionFeatureExtractor, crop_to
from ganops.metrics.names import Measurement
from test_fid import installed, reference_pth  # noqa: F401 -- fixtures: the weights ./setup.sh installed, as torch-fidelity's .pth

N_IMAGES = 100  # per side: MNIST training images against MNIST test images


def test_the_protocols_name_says_10k_tf_test_and_28x28():
    literature = Measurement("inception", "tf", 10_000, "test", native_size=28)
    assert literature.primary == "fid10k_tf_test_28x28"
    assert literature.name("kid", "mean") == "kid10k_tf_test_28x28_mean"
    assert literature.class_name("fd", 3, "std") == "fid10k_tf_test_28x28_class3_std"
    assert literature.floor_name() == "fid_real_halves_tf_test_28x28"
    assert literature.name("fd_inf") == "fid_inf10k_tf_test_28x28"
    # choosing recipes: the same protocol against the validation split
    assert Measurement("inception", "tf", 10_000, "validation", 28).primary == "fid10k_tf_validation_28x28"
    # scored as generated (no eval.native_size): every existing name is unchanged
    assert Measurement("inception", "tf", 2000, "train").primary == "fid2k_tf_train"
    assert Measurement("domain", "domain", 200, "test").floor_name() == "fd_real_halves_domain_test"


@pytest.mark.parametrize(("native", "resolution"), [(28, 32), (7, 8), (30, 32), (14, 16)])
def test_crop_to_undoes_prepares_padding(native, resolution):
    images = np.random.default_rng(native).integers(1, 256, (3, 1, native, native), dtype=np.uint8)
    padded = fit_array(images, resolution, 1)  # as prepare stores a smaller square: centred on zeros
    assert padded.shape[-1] == resolution and padded.min() == 0
    cropped = crop_to(torch.from_numpy(padded), native)
    assert cropped.shape == (3, 1, native, native)
    assert torch.equal(cropped, torch.from_numpy(images))
    assert crop_to(torch.from_numpy(padded), None) is not None and crop_to(torch.from_numpy(padded), None).shape[-1] == resolution
    with pytest.raises(GanopsError, match="eval.native_size=33 can't be cut from 32x32"):
        crop_to(torch.zeros(1, 1, 32, 32, dtype=torch.uint8), 33)


@pytest.fixture(scope="module")
def mnist_train_and_test() -> tuple[np.ndarray, np.ndarray]:
    """N_IMAGES of MNIST's training images and of its test images, uint8 (N, 1, 28, 28), from the pickle
    ./setup.sh installed (read as the ``mnist`` source reads it)."""
    path = MNIST.cached() / MNIST_PICKLE
    assert path.is_file(), f"the MNIST pickle ({path}) is installed by ./setup.sh"
    arrays = read_mnist_pickle(path, 256 * 2**20)
    return (arrays["train-images-idx3-ubyte"][:N_IMAGES, None].copy(),
            arrays["t10k-images-idx3-ubyte"][:N_IMAGES, None].copy())


@pytest.mark.system
def test_the_literature_protocol_equals_torch_fidelity_on_28x28_pngs(installed, reference_pth, mnist_train_and_test,  # noqa: F811
                                                                    tmp_path):
    """ganops' side: the images as prepare stores them (28x28 centred in 32x32), cropped back to 28x28
    by eval.native_size, then the tf protocol (tiled to 3 channels, 0-255, TF1 bilinear resize to 299)
    and ganops' Fréchet distance. torch-fidelity's side: its calculate_metrics on the same images written
    as 28x28 grayscale PNGs (read as RGB), with the same Inception tensors."""
    import torch_fidelity

    train, test = mnist_train_and_test
    folders = []
    for name, images in (("train", train), ("test", test)):
        folder = tmp_path / name
        folder.mkdir()
        for i, image in enumerate(images):
            Image.fromarray(image[0]).save(folder / f"{i:04d}.png")
        folders.append(str(folder))
    theirs = torch_fidelity.calculate_metrics(
        input1=folders[0], input2=folders[1], fid=True, cuda=False, verbose=False, batch_size=50,
        feature_extractor_weights_path=str(reference_pth))["frechet_inception_distance"]

    extractor = InceptionFeatureExtractor(installed["weights"], "tf", native_size=28)
    padded = [torch.from_numpy(fit_array(images, 32, 1)) for images in (train, test)]
    mine = frechet_distance_of_features(*(extractor(images).double().numpy() for images in padded))
    print(f"fid of {N_IMAGES} MNIST train vs {N_IMAGES} test images at 28x28: ganops {mine!r}, torch-fidelity {theirs!r}")
    assert theirs > 1.0
    # 3.2e-5 apart here (2.8e-5 with 200 images, where the uncropped 32x32 images were 0.74 apart)
    assert abs(mine - theirs) < 1e-4, (mine, theirs)


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_the_comparisons_recipes_follow_the_study(name):
    """recipes/<data set>.yaml: every key written out (cp it to params.yaml and dvc repro), unconditional,
    z of 64, at most the study's 1.0M training images, scored by its protocol against validation."""
    path = REPO / "recipes" / f"{name}.yaml"
    params, raw = load_params(path), yaml.safe_load(path.read_text())
    for section in type(params).model_fields:
        assert set(raw[section]) == set(type(getattr(params, section)).model_fields), section
    assert params.data.source == name and params.data.resolution == 32 and params.data.channels == 1
    assert not params.model.conditional and params.model.latent_dim == 64
    assert params.train.steps * params.train.batch_size <= 1_000_000 and params.train.batch_size == 64
    cfg = params.eval
    assert (cfg.backbone, cfg.fid_protocol, cfg.num_samples, cfg.native_size) == ("inception", "tf", 10_000, 28)
    assert cfg.reference == "validation"  # choosing; the final report sets test
    assert Measurement("inception", cfg.fid_protocol, cfg.num_samples, "test", cfg.native_size).primary == "fid10k_tf_test_28x28"
