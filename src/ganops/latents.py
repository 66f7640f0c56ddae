"""The truncation trick (Brock et al. 2019, BigGAN): latent values beyond ±psi are drawn again from
the same standard normal until every value lies within ±psi. The latents then follow a standard
normal truncated to [-psi, psi]; values already within it are kept, so a seed's image changes only
where its latents were redrawn. Smaller psi: more typical, less varied images. Evaluation, the CLI
and the HTTP service all truncate with ``truncate``.
"""

from __future__ import annotations

import numpy as np

MIN_TRUNCATION, MAX_TRUNCATION = 0.05, 10.0  # below 0.05 fewer than 4 % of draws are kept: a redraw loop of hundreds


def check_truncation(psi: float, field: str = "truncation") -> float:
    """``psi`` as a float, or a ValueError naming ``field`` and the allowed range."""
    if isinstance(psi, bool) or not isinstance(psi, (int, float)) or not MIN_TRUNCATION <= psi <= MAX_TRUNCATION:
        raise ValueError(f"{field} must be a number from {MIN_TRUNCATION:g} to {MAX_TRUNCATION:g} (the psi of the "
                         f"truncation trick; leave it out for none), got {psi!r}")
    return float(psi)


def truncate(z: np.ndarray, psi: float | None, rng: np.random.Generator) -> np.ndarray:
    """``z`` (standard normal) with every value beyond ±``psi`` redrawn from ``rng`` until within;
    ``psi`` None: ``z`` unchanged."""
    if psi is None:
        return z
    psi = check_truncation(psi)
    z = np.array(z, dtype=np.float32, copy=True)
    outside = np.flatnonzero(np.abs(z) > psi)
    flat = z.reshape(-1)
    while outside.size:
        flat[outside] = rng.standard_normal(outside.size, dtype=np.float32)
        outside = outside[np.abs(flat[outside]) > psi]
    return z
