"""The figures of ganops' reports and model cards, drawn by matplotlib: the memorisation pairs, the
in-training FID curve, the truncation curve, and a notice where a figure has nothing to show. Apart
from the sample grids (ganops.visualize), which training draws too: editing a figure here does not
make DVC retrain."""

from __future__ import annotations

import io

import numpy as np


def memorisation_png(generated: np.ndarray, training: np.ndarray, distances: np.ndarray, threshold: float) -> bytes:
    """The generated images nearest to a training image (top row, closest first) above their nearest
    training images (bottom row), each pair titled with its feature distance; drawn by matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    count = len(generated)
    figure, axes = plt.subplots(2, count, figsize=(1.3 * count + 0.6, 3.2), squeeze=False)
    for column in range(count):
        for row, (images, title) in enumerate(((generated, f"d={distances[column]:.1f}"), (training, "training"))):
            axis = axes[row][column]
            picture = images[column].transpose(1, 2, 0)
            axis.imshow(picture[..., 0] if picture.shape[-1] == 1 else picture, cmap="gray", vmin=0, vmax=255,
                        interpolation="nearest")
            axis.set_title(title, fontsize=8, color="red" if row == 0 and distances[column] < threshold else "black")
            axis.axis("off")
    figure.suptitle(f"generated (top) nearest to a training image (bottom); red: nearer than {threshold:.1f}",
                    fontsize=9)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    return buffer.getvalue()


def figure_png(draw, panels: int, title: str) -> bytes:
    """A matplotlib figure of ``panels`` side-by-side axes, filled by ``draw(axes)``, as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, panels, figsize=(5.2 * panels, 3.6), squeeze=False)
    try:
        draw(list(axes[0]))
        figure.suptitle(title, fontsize=10)
        figure.tight_layout()
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=100)
        return buffer.getvalue()
    finally:
        plt.close(figure)


def notice_png(text: str) -> bytes:
    """A figure that says why there is no figure (a report's picture of something not measured)."""

    def draw(axes):
        axes[0].text(0.5, 0.5, text, ha="center", va="center", wrap=True, fontsize=10)
        axes[0].axis("off")

    return figure_png(draw, 1, "")


def training_curve_png(rows: list[dict], chosen_step: int | None) -> bytes | None:
    """The in-training FID against the step, with its ±1.96 std band and the chosen snapshot marked."""
    if not rows:
        return None
    steps = [int(row["step"]) for row in rows]
    values = [float(row["value"]) for row in rows]
    stds = [float(row.get("std") or 0.0) for row in rows]

    def draw(axes):
        (axis,) = axes
        axis.plot(steps, values, marker="o", label=rows[0]["metric"])
        axis.fill_between(steps, [v - 1.96 * s for v, s in zip(values, stds)],
                          [v + 1.96 * s for v, s in zip(values, stds)], alpha=0.25, label="±1.96 std (half-samples)")
        if chosen_step is not None:
            axis.axvline(chosen_step, color="black", linestyle="--", label=f"shipped: step {chosen_step}")
        axis.set_xlabel("generator step")
        axis.set_ylabel(rows[0]["metric"])
        axis.legend(fontsize=8)

    return figure_png(draw, 1, "in-training evaluation of the EMA generator")


def truncation_png(points: list[dict]) -> bytes | None:
    """FID, precision and recall against the truncation psi (none drawn at the right)."""
    if len(points) < 2:
        return None
    measured = [p for p in points if p["psi"] is not None]
    none = next((p for p in points if p["psi"] is None), None)

    def draw(axes):
        left, right = axes
        psis = [p["psi"] for p in measured]
        left.plot(psis, [p["value"] for p in measured], marker="o")
        right.plot(psis, [p["precision"] for p in measured], marker="o", label="precision")
        right.plot(psis, [p["recall"] for p in measured], marker="o", label="recall")
        if none is not None:
            left.axhline(none["value"], color="gray", linestyle="--", label="no truncation")
            right.axhline(none["precision"], color="C0", linestyle=":", label="precision, no truncation")
            right.axhline(none["recall"], color="C1", linestyle=":", label="recall, no truncation")
            left.legend(fontsize=8)
        left.set_xlabel("truncation psi")
        left.set_ylabel(points[0]["metric"].rsplit("_psi", 1)[0])
        right.set_xlabel("truncation psi")
        right.set_ylim(0, 1)
        right.legend(fontsize=7)

    return figure_png(draw, 2, "the truncation trick: quality against diversity")
