"""onnxruntime inference for exported generators.

The model file carries everything needed to call it (latent size, classes, output range) in its
metadata, so callers never pass architecture details. Sessions come from ganops.ort_session.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np

from ganops.latents import truncate
from ganops.models.spec import GeneratorSpec
from ganops.ort_session import ModelError, make_session
from ganops.pixels import to_uint8

SPEC_KEY = "ganops.generator_spec"


class GenerationTimeout(ModelError):
    """A generation stopped because it ran past its time limit."""


def onnx_metadata(path: Path) -> dict[str, str]:
    """The model file's metadata properties, read without building a session."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as error:
        raise ModelError(f"{path}: not a readable ONNX file ({str(error).strip()[:200]})") from None
    return {prop.key: prop.value for prop in model.metadata_props}


class OnnxGenerator:
    """An exported generator under onnxruntime: ``sample(n, seed, labels)`` -> uint8 NCHW images;
    ``generate(z, labels)`` -> the float32 images for given latent vectors."""

    def __init__(self, path: str | Path, providers: list[str] | None = None, intra_op_threads: int | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelError(f"model file not found: {self.path}")
        self.session = make_session(self.path, providers, intra_op_threads)
        metadata = self.session.get_modelmeta().custom_metadata_map
        if SPEC_KEY not in metadata:
            raise ModelError(f"{self.path}: not a ganops generator (no {SPEC_KEY} metadata)")
        self.metadata = metadata
        self.spec = GeneratorSpec.model_validate(json.loads(metadata[SPEC_KEY]))
        self.input_names = [i.name for i in self.session.get_inputs()]
        probe = self.run(self.latents(2, 0), self.labels_for(2, None))
        if not np.isfinite(probe).all():  # NaN weights give NaN images, which to_uint8 would turn black
            raise ModelError(f"{self.path}: the generator's images are not finite (NaN or infinite values "
                             "for seeded latents): refusing a broken model")

    @property
    def providers(self) -> list[str]:
        return self.session.get_providers()

    def run(self, z: np.ndarray, labels: np.ndarray | None = None, timeout_s: float | None = None) -> np.ndarray:
        """Raw call: float32 z (N, latent) [+ int64 labels (N,)] -> float32 images in [-1, 1];
        GenerationTimeout when onnxruntime is still running after ``timeout_s``."""
        import onnxruntime as ort

        feeds = {"z": np.ascontiguousarray(z, dtype=np.float32)}
        if self.spec.conditional:
            if labels is None:
                raise ValueError("this generator is conditional: pass labels")
            feeds["labels"] = np.ascontiguousarray(labels, dtype=np.int64)
        options = ort.RunOptions()
        # onnxruntime checks the flag between kernels: a timer setting it ends a run that takes too long
        timer = threading.Timer(timeout_s, setattr, (options, "terminate", True)) if timeout_s is not None else None
        if timer is not None:
            timer.start()
        try:
            (images,) = self.session.run(["images"], feeds, options)
        except Exception:
            if options.terminate:
                raise GenerationTimeout(f"generation of {len(feeds['z'])} images ran past {timeout_s:g} s") from None
            raise
        finally:
            if timer is not None:
                timer.cancel()
        return images

    def latents(self, n: int, seed: int, truncation: float | None = None) -> np.ndarray:
        """The noise for a seed: the same seed gives the same images on every machine and interface.
        ``truncation`` psi: values beyond ±psi redrawn from the same stream (ganops.latents.truncate)."""
        rng = np.random.default_rng(seed)
        return truncate(rng.standard_normal((n, self.spec.latent_dim), dtype=np.float32), truncation, rng)

    def labels_for(self, n: int, labels: list[int] | int | None) -> np.ndarray | None:
        """None -> classes in turn (0, 1, 2, ...); one int -> all that class; a list -> as given."""
        if not self.spec.conditional:
            if labels is not None:
                raise ValueError("this generator is unconditional: it takes no labels")
            return None
        if labels is None:
            out = np.arange(n) % self.spec.num_classes
        elif isinstance(labels, int):
            out = np.full(n, labels)
        else:
            if len(labels) != n:
                raise ValueError(f"got {len(labels)} labels for {n} images")
            out = np.asarray(labels)
        bad = out[(out < 0) | (out >= self.spec.num_classes)]
        if bad.size:
            raise ValueError(f"label {int(bad[0])} is outside 0..{self.spec.num_classes - 1}")
        return out.astype(np.int64)

    def check_latents(self, z) -> np.ndarray:
        """Given latent vectors (an array or a list of rows) as float32 (N, latent_dim), N >= 1; a
        ValueError naming the first row of the wrong length, or a value that isn't finite in float32."""
        d = self.spec.latent_dim
        if not isinstance(z, np.ndarray):
            z = list(z)
            for index, row in enumerate(z):
                if not isinstance(row, (list, tuple, np.ndarray)):
                    raise ValueError(f"z[{index}] is not a row of numbers; this generator takes rows of latent_dim={d}")
                if len(row) != d:
                    raise ValueError(f"z[{index}] has {len(row)} numbers; this generator takes rows of latent_dim={d} "
                                     "numbers")
        array = np.asarray(z, dtype=np.float32)
        if array.ndim != 2 or array.shape[1] != d or len(array) == 0:
            raise ValueError(f"z must have shape (n >= 1, {d}); got {array.shape}")
        if not np.isfinite(array).all():
            row, column = np.argwhere(~np.isfinite(array))[0]
            raise ValueError(f"z[{row}][{column}] is not a finite float32 number")
        return array

    def generate(self, z, labels: list[int] | int | None = None,
                 timeout_s: float | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """Images for given latent vectors (N, latent_dim): float32 (N, C, H, W) in [-1, 1] as the model
        returns them, with the labels they were generated for (``labels_for``: default classes in turn)."""
        z = self.check_latents(z)
        label_array = self.labels_for(len(z), labels)
        return self.run(z, label_array, timeout_s), label_array

    def sample(self, n: int, seed: int, labels: list[int] | int | None = None,
               truncation: float | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """n images for a seed as uint8 (N, C, H, W), with the labels they were generated for:
        ``generate`` applied to ``latents(n, seed, truncation)``."""
        images, label_array = self.generate(self.latents(n, seed, truncation), labels)
        return to_uint8(images), label_array

