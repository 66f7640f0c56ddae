"""Differentiable augmentation of every image the discriminator sees, for small data sets.

With a few hundred images the discriminator memorises the training set and FID climbs after an early
minimum. Augmenting only the real images would teach the generator the augmentations; augmenting
real *and* generated images, in the discriminator's and the generator's steps, differentiably, does not
(Zhao et al. 2020, "Differentiable Augmentation for Data-Efficient GAN Training"; Karras et al. 2020,
"Training Generative Adversarial Networks with Limited Data").

- ``diffaugment``: DiffAugment's policy colour + translation + cutout, applied to every image, with the
  official code's ranges (brightness ±0.5, saturation ×[0, 2), contrast ×[0.5, 1.5), translation up to
  1/8 of the side with zero padding, a cutout square of half the side).
- ``ada``: the same operations, each applied to each image with probability p; p moves every
  ``ada_interval`` steps by sign(r_t - ada_target) times the share of ``ada_kimg`` thousand images seen
  since, where r_t = E[sign(D(real))] is ADA's overfitting heuristic (1: D is sure of every real image).

The random numbers are drawn by the caller into a buffer (``DRAWS_PER_IMAGE`` uniforms per image) and
p is a 0-dim tensor on the device, so one captured CUDA graph replays with new draws and a moving p.
Where an operation is not applied it is skipped exactly (``torch.where``), so p = 0 is the identity.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.nn import functional as F

OPERATIONS = ("brightness", "saturation", "contrast", "translation", "cutout")
# Per image: one uniform per operation deciding whether it applies (u < p), then the operations' own
# parameters: brightness, saturation, contrast, translation (rows, columns), cutout centre (rows, columns).
DRAWS_PER_IMAGE = len(OPERATIONS) + 7
TRANSLATION_RATIO = 0.125
CUTOUT_RATIO = 0.5
# train.augment: auto picks this for a user's own image folder with fewer training images than
# train.augment_auto_below. From benchmarks/small_data.py (RESULTS.md): with 100 training images
# DiffAugment halves the standard FID, ADA (target 0.6) recovers less than half of that; with 500 all
# three are within the spread between seeds, DiffAugment the lowest and steadiest. Hence DiffAugment,
# below 1,000 images.
AUTO_CHOICE = "diffaugment"


def resolve_augment(requested: str, source: str, num_train: int, auto_below: int) -> str:
    """The augmentation a run uses: ``requested``, or for ``auto`` AUTO_CHOICE on an imagefolder with
    fewer than ``auto_below`` training images and none otherwise (the built-in data sets are recipes
    tuned without it)."""
    if requested != "auto":
        return requested
    return AUTO_CHOICE if source == "imagefolder" and num_train < auto_below else "none"


def augment(images: torch.Tensor, draws: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Augment float images (N, C, H, W) in [-1, 1]: ``draws`` (N, DRAWS_PER_IMAGE) uniforms in [0, 1),
    ``p`` the probability of each operation (a 0-dim tensor; 1 applies them all)."""
    n, _, height, width = images.shape
    applies = draws[:, : len(OPERATIONS)] < p  # (N, 5) bool
    params = draws[:, len(OPERATIONS):].to(images.dtype)
    x = images

    def where(op: int, changed: torch.Tensor, unchanged: torch.Tensor) -> torch.Tensor:
        return torch.where(applies[:, op].view(n, 1, 1, 1), changed, unchanged)

    # colour (DiffAugment's rand_brightness, rand_saturation, rand_contrast)
    x = where(0, x + (params[:, 0] - 0.5).view(n, 1, 1, 1), x)
    channel_mean = x.mean(dim=1, keepdim=True)
    x = where(1, (x - channel_mean) * (params[:, 1] * 2).view(n, 1, 1, 1) + channel_mean, x)
    image_mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = where(2, (x - image_mean) * (params[:, 2] + 0.5).view(n, 1, 1, 1) + image_mean, x)

    # translation by whole pixels, zeros shifted in (rand_translation): gather rows, then columns, of
    # the image padded by one pixel of zeros; indices clamped to the padding read zeros
    shift_h, shift_w = int(height * TRANSLATION_RATIO + 0.5), int(width * TRANSLATION_RATIO + 0.5)
    dy = _uniform_int(params[:, 3], -shift_h, shift_h)
    dx = _uniform_int(params[:, 4], -shift_w, shift_w)
    rows = (torch.arange(height, device=x.device) + dy[:, None] + 1).clamp(0, height + 1)  # (N, H)
    cols = (torch.arange(width, device=x.device) + dx[:, None] + 1).clamp(0, width + 1)  # (N, W)
    padded = F.pad(x, (1, 1, 1, 1))
    channels = x.shape[1]
    moved = padded.gather(2, rows.view(n, 1, height, 1).expand(n, channels, height, width + 2))
    moved = moved.gather(3, cols.view(n, 1, 1, width).expand(n, channels, height, width))
    x = where(3, moved, x)

    # cutout: a square of half the side set to zero, its centre anywhere in the image (rand_cutout)
    cut_h, cut_w = int(height * CUTOUT_RATIO + 0.5), int(width * CUTOUT_RATIO + 0.5)
    top = _uniform_int(params[:, 5], 0, height - cut_h % 2) - cut_h // 2
    left = _uniform_int(params[:, 6], 0, width - cut_w % 2) - cut_w // 2
    r = torch.arange(height, device=x.device)
    c = torch.arange(width, device=x.device)
    in_rows = (r >= top[:, None]) & (r < top[:, None] + cut_h)  # (N, H)
    in_cols = (c >= left[:, None]) & (c < left[:, None] + cut_w)  # (N, W)
    cut = in_rows[:, :, None] & in_cols[:, None, :] & applies[:, 4].view(n, 1, 1)
    return x * (~cut).unsqueeze(1).to(x.dtype)


def _uniform_int(u: torch.Tensor, low: int, high: int) -> torch.Tensor:
    """Integers uniform on [low, high] from uniforms on [0, 1)."""
    return (u * (high - low + 1)).floor().long().clamp(max=high - low) + low


class AdaController:
    """ADA's p: the augmentation probability as a device tensor, adjusted without a host sync.

    Each step adds E[sign(D(real))] of its last discriminator update; every ``interval`` steps
    r_t (their mean, over all ranks) moves p by ±(images seen since) / (kimg * 1000), clamped to [0, 1].
    """

    def __init__(self, target: float, kimg: float, interval: int, batch_size: int, device: torch.device) -> None:
        self.target, self.interval = target, interval
        self.adjustment = batch_size * interval / (kimg * 1000)
        self.p = torch.zeros((), device=device)
        self.signs = torch.zeros((), device=device)  # sum of E[sign(D(real))] since the last adjustment

    def observe(self, real_sign_mean: torch.Tensor, done: int,
                all_reduce_mean: Callable[[torch.Tensor], None] = lambda tensor: None) -> None:
        """After step ``done`` (1-based): add its r_t sample, and adjust p at every interval's end."""
        self.signs += real_sign_mean
        if done % self.interval:
            return
        all_reduce_mean(self.signs)
        r_t = self.signs / self.interval
        self.p.copy_((self.p + torch.sign(r_t - self.target) * self.adjustment).clamp(0.0, 1.0))
        self.signs.zero_()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"p": self.p.cpu(), "signs": self.signs.cpu()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.p.copy_(state["p"])
        self.signs.copy_(state["signs"])
