"""Figure builders the checks and the baseline report share (matplotlib, Agg backend).

Pure: tensors in, a matplotlib Figure out; the output module saves it.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import matplotlib.pyplot as plt  # noqa: E402
import torch

from runner.plots import laid_out  # (importing it selects the Agg backend first)


def denormalise(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Normalised [N, C, H, W] -> display range [0, 1] (undo (x - mean) / std, then clip)."""
    x = x.detach().float().cpu()
    c = x.shape[1]
    m = torch.tensor(list(mean) * (c // max(len(mean), 1)) or [0.0] * c).view(1, c, 1, 1)
    s = torch.tensor(list(std) * (c // max(len(std), 1)) or [1.0] * c).view(1, c, 1, 1)
    return (x * s + m).clamp(0, 1)


def image_grid(
    images: torch.Tensor,
    titles: Sequence[str],
    title: str,
    ncol: int = 8,
    title_colors: Optional[Sequence[str]] = None,
):
    """One mosaic image of [N, C, H, W] in [0, 1] with a caption under each tile.

    One imshow (not a subplot per image) keeps this fast for the 32-64 images a report shows.
    """
    n, c, h, w = images.shape
    ncol = max(1, min(ncol, n))
    nrow = max(1, math.ceil(n / ncol))
    pad = max(1, h // 16)
    cell = 1.25  # inches per tile
    # room under each tile for its caption lines (about 10 pt per line at this scale)
    lines = max((str(t).count("\n") + 1 for t in titles), default=1)
    cap = math.ceil(lines * 10 * (w + pad) / (cell * 72)) + pad
    canvas = torch.ones(3, nrow * (h + cap) + pad, ncol * (w + pad) + pad)
    for i in range(n):
        r, k = divmod(i, ncol)
        img = images[i]
        img = img.expand(3, h, w) if c == 1 else img[:3]
        y0, x0 = pad + r * (h + cap), pad + k * (w + pad)
        canvas[:, y0 : y0 + h, x0 : x0 + w] = img
    width = ncol * cell
    fig, ax = plt.subplots(figsize=(width, width * canvas.shape[1] / canvas.shape[2] + 0.5))
    ax.imshow(canvas.permute(1, 2, 0).numpy(), interpolation="nearest")
    for i, t in enumerate(titles[:n]):
        r, k = divmod(i, ncol)
        ax.text(
            pad + k * (w + pad) + w / 2,
            pad + r * (h + cap) + h + pad / 2,
            t,
            ha="center",
            va="top",
            fontsize=7,
            linespacing=1.1,
            color=(title_colors[i] if title_colors else "black"),
        )
    ax.set_axis_off()
    ax.set_title(title, fontsize=10)
    laid_out(fig)
    return fig
