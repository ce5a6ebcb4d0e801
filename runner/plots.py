"""Matplotlib figures (Agg backend) for reports: titles, axes and units on every plot."""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


def _finite(xs: Sequence[float]):
    return [x if x is not None and isinstance(x, (int, float)) and math.isfinite(x)
            else float("nan") for x in xs]


def curves(history: List[Dict], title: str = "Training curves", mark_epoch: Optional[float] = None,
           mark_label: str = ""):
    """Loss, accuracy and learning rate per epoch, from metrics rows; `mark_epoch` draws a
    vertical line (e.g. where a continued run picked up)."""
    ep = [r["epoch"] for r in history]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    ax = axes[0]
    ax.plot(ep, _finite([r["train_loss"] for r in history]), "o-", label="train")
    ax.plot(ep, _finite([r["val_loss"] for r in history]), "o-", label="val")
    ax.set(title="Loss (cross-entropy)", xlabel="epoch", ylabel="loss (nats per example)")
    ax.legend()
    ax = axes[1]
    ax.plot(ep, _finite([100 * r["train_acc"] for r in history]), "o-", label="train")
    ax.plot(ep, _finite([100 * r["val_acc"] for r in history]), "o-", label="val")
    ax.set(title="Accuracy", xlabel="epoch", ylabel="accuracy (%)")
    ax.legend()
    ax = axes[2]
    ax.plot(ep, [r["lr"] for r in history], "o-")
    ax.set(title="Learning rate (end of epoch)", xlabel="epoch", ylabel="learning rate")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    for ax in axes:  # epochs are whole numbers; a grid makes values readable at a glance
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if mark_epoch is not None:
            ax.axvline(mark_epoch, color="grey", ls="--", lw=1, label=mark_label or None)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def line(ys: Sequence[float], title: str, xlabel: str, ylabel: str, logy: bool = False, hline=None):
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(range(1, len(ys) + 1), _finite(ys))
    if hline is not None:
        ax.axhline(hline, color="grey", ls="--", lw=1)
    if logy:
        ax.set_yscale("log")
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
