"""Metric names say how they were measured, defined here once (in the spirit of StyleGAN2-ADA's ``fid50k_full``).

A name says which feature space it was computed in (``tf``, ``pytorch-fid`` or ``clean``: the FID
Inception network under that FID protocol's resize and scaling; ``domain``: the domain classifier),
how many images were generated, which split was the reference (``train``, ``validation``, ``test``)
and, when both sides were cropped to the data's native size before the backbone (eval.native_size),
that size. ``fid2k_tf_train`` is the standard FID of 2,000 generated images against the whole
training split, under torch-fidelity's (the original TF code's) protocol, at the generator's size;
``fid10k_tf_test_28x28`` is the literature's FID on MNIST and Fashion-MNIST (Lucic et al. 2018,
google/compare_gan): 10,000 generated images against the 10,000 test images, both at 28x28.
Numbers under different names are never compared: evaluate, register, the registry listing and the
Prefect summary all build and read names through this module.
"""

from __future__ import annotations

from dataclasses import dataclass

# metrics named after the distance: FID on the Inception network, FD elsewhere
DISTANCES = {"fd": "{distance}", "fd_inf": "{distance}_inf", "ifd": "i{distance}"}


@dataclass(frozen=True)
class Measurement:
    """How one set of numbers was measured: what every metric name spells out."""

    backbone: str             # "inception" or "domain"
    feature_space: str        # the backbone's label: "tf" | "pytorch-fid" | "clean" (inception) or "domain"
    num_samples: int          # generated images
    reference: str            # "train", "validation" or "test": the whole split is the reference
    native_size: int | None = None  # both sides cropped to this side before the backbone; None: as generated

    @property
    def distance(self) -> str:
        # The Fréchet distance on the FID Inception network is what the literature calls FID.
        return "fid" if self.backbone == "inception" else "fd"

    def name(self, metric: str, suffix: str = "") -> str:
        """``fd`` -> fid2k_tf_train; ``kid`` with suffix ``mean`` -> kid2k_tf_train_mean; ``fd_inf`` ->
        fid_inf2k_tf_train (extrapolated from at most 2k images); ``ifd`` -> ifid2k_tf_train (the mean
        of the per-class distances, whose names end in ``_class<index>``)."""
        metric = DISTANCES[metric].format(distance=self.distance) if metric in DISTANCES else metric
        base = f"{metric}{count_label(self.num_samples)}_{self.feature_space}_{self.reference}{self._size}"
        return f"{base}_{suffix}" if suffix else base

    def floor_name(self) -> str:
        """The distance between two halves of the reference split (no generated images involved)."""
        return f"{self.distance}_real_halves_{self.feature_space}_{self.reference}{self._size}"

    @property
    def _size(self) -> str:
        """``_28x28`` when the images were cropped to the data's native 28x28; nothing otherwise."""
        return f"_{self.native_size}x{self.native_size}" if self.native_size is not None else ""

    @property
    def primary(self) -> str:
        return self.name("fd")

    def class_name(self, metric: str, index: int, suffix: str = "") -> str:
        """Class ``index``'s share of this measurement: ``fd`` of class 3 -> fid2k_tf_train_class3."""
        return self.name(metric, f"class{index}" + (f"_{suffix}" if suffix else ""))


def count_label(count: int) -> str:
    return f"{count // 1000}k" if count >= 1000 and count % 1000 == 0 else str(count)


def truncation_label(psi: float | None) -> str:
    """The name suffix of a truncation curve's point: psi0.7, psinone (no truncation)."""
    return "psinone" if psi is None else f"psi{psi:g}"
