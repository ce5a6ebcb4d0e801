"""train.lr_range: a learning-rate range test (recipe stage 3, "don't trust defaults").

An exponential sweep of the learning rate over a few hundred optimiser steps on a copy of the
model with a fresh optimiser of the configured kind: the loss falls, bottoms out and blows up.
The suggestion is the lr where the smoothed loss falls fastest (the steepest descent of the
loss against log lr); the "valley" rule (a tenth of the lr at the lowest loss) is reported
beside it. The run's own model and optimiser are never touched (pure: tensors in, a Verdict
out; the figure goes into `verdict.figures`).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Callable, Iterable, List, Optional, Tuple

import torch
from torch import nn

from runner.checks import Verdict
from runner.loop import step

NAME = "train.lr_range"
RULE = "steepest descent of the smoothed loss against log lr"
VALLEY_RULE = "a tenth of the lr at the lowest smoothed loss"

Batches = Callable[[int], Iterable[Tuple[torch.Tensor, torch.Tensor]]]


@dataclass
class Sweep:
    """What the sweep saw: one entry per optimiser step taken."""

    lrs: List[float] = field(default_factory=list)
    losses: List[float] = field(default_factory=list)  # raw; non-finite as nan
    smoothed: List[float] = field(default_factory=list)  # EMA, bias-corrected
    stopped: str = "the sweep reached end_lr"


def lr_schedule(start_lr: float, end_lr: float, steps: int) -> List[float]:
    """`steps` learning rates from start_lr to end_lr, evenly spaced in log lr."""
    if steps < 2:
        return [float(start_lr)]
    r = math.log(end_lr / start_lr)
    return [float(start_lr * math.exp(r * i / (steps - 1))) for i in range(steps)]


def _cycle(batches: Batches):
    """The training batches pass after pass (a short epoch is repeated)."""
    k = 0
    while True:
        empty = True
        for b in batches(k):
            empty = False
            yield b
        if empty:
            return
        k += 1


def sweep(
    model: nn.Module,
    make_optimizer: Callable[[nn.Module], torch.optim.Optimizer],
    batches: Batches,
    loss_fn: Optional[nn.Module] = None,
    steps: int = 100,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    beta: float = 0.9,
    diverge: float = 4.0,
) -> Sweep:
    """The range test on a deep copy of `model`: lr i of `lr_schedule` for step i, until the
    smoothed loss exceeds `diverge` x its minimum or a loss is non-finite."""
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    m = copy.deepcopy(model)
    m.train()
    opt = make_optimizer(m)
    out = Sweep()
    avg, best = 0.0, math.inf
    data = _cycle(batches)
    for i, lr in enumerate(lr_schedule(start_lr, end_lr, steps)):
        b = next(data, None)
        if b is None:
            out.stopped = "the loader gave no batches"
            break
        for g in opt.param_groups:
            g["lr"] = lr
        x, y = b
        loss = float(step(m, opt, x, y, loss_fn).loss)
        out.lrs.append(lr)
        if not math.isfinite(loss):
            out.losses.append(math.nan)
            out.smoothed.append(math.nan)
            out.stopped = f"the loss became non-finite ({loss}) at lr {lr:.3g}"
            break
        out.losses.append(loss)
        avg = beta * avg + (1 - beta) * loss
        s = avg / (1 - beta ** (i + 1))
        out.smoothed.append(s)
        best = min(best, s)
        if i > 0 and s > diverge * best:
            out.stopped = (
                f"the smoothed loss {s:.3g} exceeded {diverge:g}x its minimum {best:.3g} "
                f"at lr {lr:.3g}"
            )
            break
    del m, opt
    return out


@dataclass
class Suggestion:
    lr: float  # the steepest descent's lr
    valley_lr: float  # a tenth of the lr at the lowest smoothed loss
    min_loss_lr: float
    low: float  # the good region's lower end, before widening by `factor`
    drop: float  # relative fall of the smoothed loss from its start to its minimum


def ema_lag(i: int, beta: float) -> float:
    """How many steps the bias-corrected EMA at step i lags its newest loss: the centroid of
    its weights, ~beta/(1-beta) once i is large (0.9: 9 steps, ~0.75 decade of lr at 100 steps
    over 1e-7..10, which would place the steepest descent that much too high)."""
    w = [beta**k for k in range(i + 1)]
    return sum(k * x for k, x in enumerate(w)) / sum(w)


def smoothed_lrs(s: Sweep, beta: float = 0.9) -> List[float]:
    """The lr each smoothed loss belongs to: the lr at its EMA's centroid step (the sweep's
    lrs are exponential in the step, so lr_i x ratio^-lag). The EMA stays causal: the
    divergence at the end never leaks back into the curve."""
    if len(s.lrs) < 2:
        return list(s.lrs)
    ratio = s.lrs[1] / s.lrs[0]
    return [lr * ratio ** -ema_lag(i, beta) for i, lr in enumerate(s.lrs)]


def suggest(
    s: Sweep, min_drop: float = 0.1, skip_start: int = 3, beta: float = 0.9
) -> Optional[Suggestion]:
    """The suggestion from a sweep, or None when the curve does not descend (flat or noisy):
    on the smoothed loss at its lag-corrected lrs (`smoothed_lrs`), which must fall by at
    least `min_drop` (relative) before its minimum, the minimum coming after a few points."""
    pts = [(lr, v) for lr, v in zip(smoothed_lrs(s, beta), s.smoothed) if math.isfinite(v)]
    if len(pts) < skip_start + 3:
        return None
    lrs = [p[0] for p in pts]
    ys = [p[1] for p in pts]
    k = min(range(len(ys)), key=ys.__getitem__)
    first = ys[0]
    drop = (first - ys[k]) / first if first > 0 else 0.0
    if drop < min_drop or k < skip_start + 2:
        return None
    # d(loss)/d(log lr) by central differences, over the descent only (start .. minimum)
    xs = [math.log(v) for v in lrs]
    grads = []
    for i in range(skip_start, k + 1):
        lo, hi = max(i - 1, 0), min(i + 1, len(ys) - 1)
        grads.append(((ys[hi] - ys[lo]) / (xs[hi] - xs[lo]), i))
    _, j = min(grads)
    steep, valley = lrs[j], lrs[k] / 10
    return Suggestion(
        lr=steep,
        valley_lr=valley,
        min_loss_lr=lrs[k],
        low=min(steep, valley),
        drop=drop,
    )


def lr_range(
    model: nn.Module,
    make_optimizer: Callable[[nn.Module], torch.optim.Optimizer],
    batches: Batches,
    configured_lr: float,
    loss_fn: Optional[nn.Module] = None,
    steps: int = 100,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    beta: float = 0.9,
    diverge: float = 4.0,
    factor: float = 10.0,
    min_drop: float = 0.1,
    figure: bool = True,
) -> Verdict:
    """train.lr_range: pass when `configured_lr` lies in the good region, [min(steepest,
    valley) / factor, steepest x factor] capped at the lr of the lowest loss; warn outside it
    (naming the suggestion and the rule); skip when the curve shows no descent."""
    s = sweep(model, make_optimizer, batches, loss_fn, steps, start_lr, end_lr, beta, diverge)
    sug = suggest(s, min_drop, beta=beta)
    details = {
        "rule": RULE,
        "lrs": s.lrs,
        "losses": [v if math.isfinite(v) else None for v in s.losses],
        "smoothed": [v if math.isfinite(v) else None for v in s.smoothed],
        # the lr each smoothed value belongs to (its EMA's centroid step): the rule reads these
        "smoothed_lrs": smoothed_lrs(s, beta),
        "steps": len(s.lrs),
        "stopped": s.stopped,
        "configured_lr": configured_lr,
        "start_lr": start_lr,
        "end_lr": end_lr,
    }
    figs = {}
    if sug is None:
        if figure and s.lrs:
            figs["curve"] = lr_range_figure(s, configured_lr, None, None, beta)
        return Verdict(
            NAME,
            "skip",
            expected=f"the smoothed loss falls by >= {100 * min_drop:g}% before it turns",
            message=f"no descent in the lr range test ({len(s.lrs)} steps, lr {start_lr:g} "
            f"to {s.lrs[-1] if s.lrs else start_lr:.3g}; {s.stopped}): the loss curve is "
            "flat or noisy, so no lr is suggested",
            details=details,
            figures=figs,
        )
    # within `factor` of the steepest descent (down to the valley rule's value when that is
    # lower), never above the lr of the lowest loss, where the loss turns
    low = sug.low / factor
    high = min(sug.lr * factor, sug.min_loss_lr)
    details.update(
        {
            "suggestion": sug.lr,
            "valley": sug.valley_lr,
            "valley_rule": VALLEY_RULE,
            "min_loss_lr": sug.min_loss_lr,
            "good_region": [low, high],
            "drop": sug.drop,
        }
    )
    if figure:
        figs["curve"] = lr_range_figure(s, configured_lr, sug, (low, high), beta)
    expected = f"optim.lr within [{low:.2g}, {high:.2g}]"
    found = (
        f"the lr range test suggests {sug.lr:.2g} ({RULE}; the valley rule, {VALLEY_RULE}, "
        f"gives {sug.valley_lr:.2g})"
    )
    if low <= configured_lr <= high:
        return Verdict(
            NAME,
            "pass",
            value=sug.lr,
            expected=expected,
            message=f"the configured optim.lr={configured_lr:g} is in the good region: {found}",
            details=details,
            figures=figs,
        )
    side = "below" if configured_lr < low else "above"
    return Verdict(
        NAME,
        "warn",
        value=sug.lr,
        expected=expected,
        message=f"the configured optim.lr={configured_lr:g} is far {side} the good region "
        f"[{low:.2g}, {high:.2g}]: {found}; set optim.lr={sug.lr:.2g}",
        details=details,
        figures=figs,
    )


def lr_range_figure(
    s: Sweep, configured_lr: float, sug: Optional[Suggestion], region=None, beta: float = 0.9
):
    """Loss against lr (log x): raw and smoothed, the configured lr and the suggestions."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    from runner.plots import laid_out

    fig, ax = plt.subplots(figsize=(7, 4))
    smooth = [v for v in s.smoothed if math.isfinite(v)]
    ax.plot(s.lrs, s.losses, ".", color="0.6", markersize=3, label="loss per step")
    ax.plot(
        smoothed_lrs(s, beta)[: len(smooth)],
        smooth,
        "-",
        color="C0",
        label="smoothed (EMA at its lag-corrected lr)",
    )
    if region is not None:
        ax.axvspan(region[0], region[1], color="C2", alpha=0.12, label="good region")
    ax.axvline(configured_lr, color="C3", ls="--", label=f"configured optim.lr {configured_lr:.2g}")
    if sug is not None:
        ax.axvline(sug.lr, color="C2", label=f"suggested {sug.lr:.2g} (steepest descent)")
        ax.axvline(sug.valley_lr, color="C1", ls=":", label=f"valley {sug.valley_lr:.2g}")
    ax.set_xscale("log")
    # plain numbers on the log axis (the reports draw text without mathtext)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    if smooth:  # the divergence at the end would squash the curve: clip the y axis
        lo = min(smooth)
        hi = max(smooth[0], min(max(smooth), 4 * lo))
        pad = 0.05 * (hi - lo) + 1e-3
        ax.set_ylim(lo - pad, hi + 3 * pad)
    ax.set(
        title="Learning-rate range test",
        xlabel="learning rate (log scale)",
        ylabel="training loss (nats per example)",
    )
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    laid_out(fig)
    return fig
