"""regularize.first_layer: the recipe's "visualise the first layer's weights": clean edges and
blobs, not noise. Plots the first conv's filters and judges their smoothness."""

from __future__ import annotations

import math

from runner.checks import Verdict


def first_layer_weight(model):
    """The first Conv2d's weight (out, in, k, k), or None."""
    import torch

    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            return m.weight.detach().float().cpu()
    return None


def neighbour_corr(w) -> float:
    """Mean over filters of the correlation of horizontally and vertically adjacent weights.

    Smooth, structured filters (edges, blobs) are positively correlated with their
    neighbours; untrained or noisy ones sit near 0.
    """
    import torch

    out = []
    for f in w:  # (in, k, k)
        if f.shape[-1] < 2 and f.shape[-2] < 2:
            continue
        a = torch.cat([f[:, :, :-1].reshape(-1), f[:, :-1, :].reshape(-1)])
        b = torch.cat([f[:, :, 1:].reshape(-1), f[:, 1:, :].reshape(-1)])
        a, b = a - a.mean(), b - b.mean()
        den = float(a.norm() * b.norm())
        if den > 0:
            out.append(float((a * b).sum()) / den)
    return float(sum(out) / len(out)) if out else float("nan")


def first_layer_figure(w, title: str = "first-layer filters"):
    import matplotlib.pyplot as plt
    import numpy as np

    import runner.plots  # noqa: F401  (Agg backend, names as plain text)

    n = min(int(w.shape[0]), 64)
    cols = min(8, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.0, rows * 1.0 + 0.4), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        f = w[i].numpy()
        img = f.transpose(1, 2, 0) if f.shape[0] == 3 else f.mean(0)
        lo, hi = float(img.min()), float(img.max())
        img = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)
        ax.imshow(img, cmap=None if img.ndim == 3 else "gray", interpolation="nearest")
    fig.suptitle(title, fontsize=9)
    return fig


def first_layer_verdict(model, min_corr: float, min_kernel: int = 5) -> Verdict:
    """Plot the first conv's filters; warn when they look like noise (kernels >= min_kernel)."""
    name = "regularize.first_layer"
    w = first_layer_weight(model)
    if w is None:
        return Verdict(name, "skip", message="the model has no Conv2d layer")
    corr = neighbour_corr(w)
    k = tuple(w.shape[-2:])
    fig = first_layer_figure(w, f"first-layer filters {tuple(w.shape)}, neighbour corr {corr:.2f}")
    expected = f"mean neighbour correlation >= {min_corr:g}"
    if max(k) < min_kernel:
        v = Verdict(
            name,
            "skip",
            value=corr,
            expected=expected,
            message=f"{k[0]}x{k[1]} first-layer kernels are too small to judge by "
            f"neighbour correlation (needs >= {min_kernel}); see the plot",
            details={"shape": list(w.shape)},
        )
        v.figures["filters"] = fig
        return v
    if math.isfinite(corr) and corr >= min_corr:
        status, msg = "pass", f"the {w.shape[0]} filters ({k[0]}x{k[1]}) look smooth/structured"
    else:
        status = "warn"
        msg = (
            f"the first-layer filters look like noise (neighbour correlation {corr:.3f}): "
            "train longer, lower the lr, or add weight decay/augmentation; small kernels "
            "(3x3 stems) show less structure"
        )
    v = Verdict(
        name, status, value=corr, expected=expected, message=msg, details={"shape": list(w.shape)}
    )
    v.figures["filters"] = fig
    return v


# ----------------------------------------------------------------------------- the ladder
