"""Matplotlib figures (Agg backend) for reports: titles, axes and units on every plot."""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence

import matplotlib

matplotlib.use("Agg")
# class names, file names and config values are text, never mathtext: a class folder named
# `$\foo$` made the report's draw raise. Read when each Text is made (tight_layout draws too)
matplotlib.rcParams["text.parse_math"] = False
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


def laid_out(fig):
    """fig.tight_layout(), remembered: the figure then fits its canvas, and saving it skips
    the second layout pass of bbox_inches="tight" (~40% of a save; runner/output.py)."""
    fig.tight_layout()
    fig.runner_laid_out = True
    return fig


def _finite(xs: Sequence[float]):
    return [
        x if x is not None and isinstance(x, (int, float)) and math.isfinite(x) else float("nan")
        for x in xs
    ]


def curves(
    history: List[Dict],
    title: str = "Training curves",
    mark_epoch: Optional[float] = None,
    mark_label: str = "",
):
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
    laid_out(fig)
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
    laid_out(fig)
    return fig


def recipe_walk(
    stages: Sequence[str],
    val_acc: Sequence[Optional[float]],
    n_val: Sequence[Optional[int]],
    wall_s: Sequence[Optional[float]],
    sub_wall_s: Sequence[Optional[float]],
    title: str = "Recipe",
):
    """The recipe at a glance. Left: validation accuracy after each stage with a band of one
    standard error, sqrt(p(1-p)/n_val) (a step inside it is noise). Right: each stage's wall
    time as a horizontal bar, its sub-runs' summed training time darker inside it."""
    k = len(stages)
    fig, (ax, bx) = plt.subplots(
        1, 2, figsize=(12, max(3.2, 0.5 * k + 1.8)), gridspec_kw={"width_ratios": [1.25, 1]}
    )
    x = list(range(k))
    acc = [
        100 * a if isinstance(a, (int, float)) and math.isfinite(a) else float("nan")
        for a in val_acc
    ]
    se = [
        100 * math.sqrt(max(a / 100 * (1 - a / 100), 0.0) / n)
        if n and math.isfinite(a)
        else float("nan")
        for a, n in zip(acc, n_val)
    ]
    lo = [a - s if math.isfinite(s) else a for a, s in zip(acc, se)]
    hi = [a + s if math.isfinite(s) else a for a, s in zip(acc, se)]
    ax.fill_between(x, lo, hi, color="C0", alpha=0.2, lw=0, label="± 1 standard error")
    ax.errorbar(
        x,
        acc,
        yerr=[0 if not math.isfinite(s) else s for s in se],
        fmt="o-",
        color="C0",
        capsize=3,
        label="val accuracy",
    )
    for xi, a in zip(x, acc):
        if math.isfinite(a):
            ax.annotate(
                f"{a:.1f}",
                (xi, a),
                textcoords="offset points",
                xytext=(0, 7),
                ha="center",
                fontsize=8,
            )
    ax.set_xticks(x, list(stages), rotation=30, ha="right")
    ax.set(title="Validation accuracy after each stage", ylabel="val accuracy (%)")
    ax.grid(alpha=0.3)
    if any(math.isfinite(a) for a in acc):
        ax.legend(loc="lower right", fontsize=8)
        ax.set_ylim(top=min(ax.get_ylim()[1], 100.5))  # no room above 100%
    y = list(range(k))[::-1]  # the first stage on top, as in the table
    wall = [w if isinstance(w, (int, float)) else 0.0 for w in wall_s]
    sub = [min(s, w) if isinstance(s, (int, float)) else 0.0 for s, w in zip(sub_wall_s, wall)]
    bx.barh(y, wall, color="C1", alpha=0.45, label="stage (process wall time)")
    if any(sub):
        bx.barh(y, sub, color="C1", label="its sub-runs' training")
    for yi, w in zip(y, wall):
        bx.annotate(
            f"{w:.0f} s" if w >= 10 else f"{w:.1f} s",
            (w, yi),
            textcoords="offset points",
            xytext=(3, -3),
            fontsize=8,
        )
    bx.set_yticks(y, list(stages))
    total = sum(wall)
    bx.set(title=f"Where the time went ({total:.0f} s in all)", xlabel="wall time (s)")
    bx.set_xlim(0, max(wall + [1.0]) * 1.15)  # room for the labels
    bx.grid(alpha=0.3, axis="x")
    bx.legend(loc="best", fontsize=8)
    fig.suptitle(title)
    laid_out(fig)
    return fig
