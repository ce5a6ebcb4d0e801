"""Checks about the training run itself: determinism, finiteness, a loss that goes down."""

from __future__ import annotations

import math
import statistics
from typing import Callable, List, Optional, Sequence, Tuple

import torch
from torch import nn

from runner.checks import Verdict
from runner.loop import step


def short_run_losses(
    make_model: Callable[[], nn.Module],
    make_optimizer: Callable[[nn.Module], torch.optim.Optimizer],
    batches: Sequence[Tuple[torch.Tensor, torch.Tensor]],
    seed: int,
    loss_fn: Optional[nn.Module] = None,
) -> List[float]:
    """Seed, build, and take one optimiser step per batch; the losses seen."""
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    torch.manual_seed(seed)
    model = make_model()
    model.train()
    opt = make_optimizer(model)
    out = []
    for x, y in batches:
        out.append(float(step(model, opt, x, y, loss_fn).loss))
    return out


def seed_determinism(make_model, make_optimizer, batches, seed: int, loss_fn=None) -> Verdict:
    """seed.determinism: two short runs from the same seed give identical losses (recipe 2)."""
    a = short_run_losses(make_model, make_optimizer, batches, seed, loss_fn)
    b = short_run_losses(make_model, make_optimizer, batches, seed, loss_fn)
    diff = max((abs(x - y) for x, y in zip(a, b)), default=0.0)
    if a == b:
        return Verdict(
            "seed.determinism",
            "pass",
            value=0.0,
            expected="0 (bit-identical)",
            message=f"{len(a)} steps from seed {seed} gave identical losses twice "
            f"({', '.join(f'{v:.6f}' for v in a)})",
            details={"losses_a": a, "losses_b": b},
        )
    return Verdict(
        "seed.determinism",
        "fail",
        value=diff,
        expected="0 (bit-identical)",
        message=f"two runs from seed {seed} differ by up to {diff:.3g} in loss: some "
        "randomness is not seeded (data order, dropout, init, nondeterministic "
        "kernels)",
        details={"losses_a": a, "losses_b": b},
    )


def train_finite(nonfinite: Optional[BaseException], steps: int) -> Verdict:
    """train.finite: no NaN/Inf in the loss (the loop stops at the first one)."""
    if nonfinite is None:
        return Verdict(
            "train.finite",
            "pass",
            value=steps,
            expected="all steps finite",
            message=f"loss finite at all {steps} optimiser steps",
        )
    return Verdict(
        "train.finite",
        "fail",
        value=f"epoch {nonfinite.epoch}, step {nonfinite.step}",
        expected="all steps finite",
        message=str(nonfinite),
    )


def loss_decreases(
    losses: Sequence[float], initial: Optional[float] = None, min_drop: float = 0.1
) -> Verdict:
    """train.loss_decreases: the training loss goes down over the run, robust to noise.

    Compares the median of the first third of the losses (per epoch or per step; `initial`,
    the loss at init, is put in front when given) with the median of the last third: fail
    when it did not go down at all, warn when it fell by less than `min_drop` (relative),
    pass otherwise. Medians of thirds ignore a noisy epoch or a spike.
    """
    name = "train.loss_decreases"
    xs = ([initial] if initial is not None else []) + list(losses)
    xs = [float(v) for v in xs if v is not None and math.isfinite(v)]
    if len(xs) < 2:
        return Verdict(name, "skip", message=f"needs at least 2 finite losses, got {len(xs)}")
    k = max(1, len(xs) // 3)
    first, last = statistics.median(xs[:k]), statistics.median(xs[-k:])
    drop = (first - last) / first if first > 0 else 0.0
    details = {"losses": xs, "first": first, "last": last, "window": k}
    expected = f"falls by >= {100 * min_drop:g}% (median of first vs last {k} of {len(xs)})"
    start = ", starting from the loss at init" if initial is not None else ""
    msg = (
        f"training loss {first:.4f} -> {last:.4f} ({-100 * drop:+.1f}%; medians of the first "
        f"and last {k} of {len(xs)} values{start})"
    )
    if last >= first:
        return Verdict(
            name,
            "fail",
            value=drop,
            expected=expected,
            details=details,
            message=msg + ": the loss does not go down; lr too low/high, frozen "
            "parameters, or labels unrelated to inputs",
        )
    if drop < min_drop:
        return Verdict(
            name,
            "warn",
            value=drop,
            expected=expected,
            details=details,
            message=msg + ": it barely goes down",
        )
    return Verdict(name, "pass", value=drop, expected=expected, details=details, message=msg)


def train_fit(
    train_loss: float | None,
    train_acc: float | None,
    loss_target: float,
    acc_target: float,
    epochs: int,
    budget: int,
) -> Verdict:
    """Pass when the final training loss <= loss_target or training accuracy >= acc_target."""
    name = "overfit.train_fit"
    expected = f"train_loss <= {loss_target:g} or train_acc >= {acc_target:g}"
    if train_loss is None or not math.isfinite(train_loss):
        return Verdict(
            name,
            "fail",
            value=train_loss,
            expected=expected,
            message="no finite training loss: fix the baseline stage first",
        )
    acc = train_acc if train_acc is not None else float("nan")
    if train_loss <= loss_target or (math.isfinite(acc) and acc >= acc_target):
        return Verdict(
            name,
            "pass",
            value=train_loss,
            expected=expected,
            message=f"the model fits the training set (loss {train_loss:.4g}, "
            f"accuracy {acc:.4f}) after {epochs} epoch(s)",
            details={"train_acc": train_acc},
        )
    advice = ["a bigger model (model.name=resnet18 or wider)"]
    if epochs >= budget:
        advice.insert(0, f"a longer budget (trainer.epochs > {budget})")
    advice.append("another learning rate (optim.lr: try 1e-3 and 1e-4)")
    return Verdict(
        name,
        "fail",
        value=train_loss,
        expected=expected,
        message=f"training loss {train_loss:.4g} (accuracy {acc:.4f}) after {epochs} "
        f"epoch(s) did not reach the target; try "
        + ", ".join(advice)
        + "; then check the labels (stage=inspect)",
        details={"train_acc": train_acc, "advice": advice},
    )
