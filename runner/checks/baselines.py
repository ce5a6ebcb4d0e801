"""Dumb baselines the real model must beat, and the overfit-one-batch test.

Recipe stage 2: "input-independent baseline" (train on zeroed inputs; the real model must
do clearly better), "human baseline" (report it beside the model), and "overfit one batch"
(a few examples driven to ~zero loss and 100% accuracy, or there is a bug).
"""

from __future__ import annotations

import copy
import math
from typing import Callable, List, Optional

import torch
from torch import nn

from runner.checks import Verdict, skip
from runner.checks.probes import preserved, trainable
from runner.loop import step


def majority_accuracy(
    train_labels: torch.Tensor, val_labels: torch.Tensor, num_classes: int
) -> float:
    """Validation accuracy of always predicting the most frequent *training* class."""
    if len(val_labels) == 0:
        return math.nan
    counts = torch.bincount(train_labels.long().cpu(), minlength=num_classes)
    return float((val_labels.long().cpu() == int(counts.argmax())).float().mean())


def overfit_batch(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    steps: int = 200,
    lr: float = 1e-3,
    make_optimizer: Optional[Callable[[nn.Module], torch.optim.Optimizer]] = None,
    loss_below: float = 0.05,
    loss_fn: Optional[nn.Module] = None,
) -> Verdict:
    """baseline.overfit_batch: train a copy of the model on one small batch (x, y) only.

    Pass when it reaches 100% accuracy and loss <= `loss_below` within `steps` (stopping as
    soon as it does), warn when accuracy is 100% and the loss fell by >= 90% but is not yet
    below the target, fail otherwise: a model that cannot memorise 16 examples has a bug (its
    outputs are already probabilities, it is frozen or disconnected, the loss is on the wrong
    tensor). Train mode; Adam at `lr` unless `make_optimizer` is given. Plots the loss curve.
    """
    name = "baseline.overfit_batch"
    n = int(x.shape[0])
    if n == 0:
        return skip(name, "no examples")
    expected = f"100% accuracy and loss <= {loss_below:g} within {steps} steps on {n} examples"
    m = copy.deepcopy(model)
    m.train()
    params = [p for _, p in trainable(m)]
    if not params:
        return Verdict(
            name,
            "fail",
            value=None,
            expected=expected,
            message="the model has no trainable parameters: nothing can be fitted",
        )
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    opt = make_optimizer(m) if make_optimizer else torch.optim.Adam(params, lr=lr)
    losses: List[float] = []
    accs: List[float] = []
    probs_out = False

    def record(loss: torch.Tensor, logits: torch.Tensor) -> bool:
        """Note the step's loss and accuracy; False (no update) once done or non-finite."""
        nonlocal probs_out
        if not losses:
            ones = torch.ones(len(logits), device=logits.device)
            probs_out = bool(((logits >= 0) & (logits <= 1)).all()) and bool(
                torch.allclose(logits.float().sum(1), ones, atol=1e-3)
            )
        losses.append(float(loss))
        accs.append(float((logits.argmax(1) == y).float().mean()))
        return math.isfinite(losses[-1]) and not (accs[-1] == 1.0 and losses[-1] <= loss_below)

    with preserved(m):
        for _ in range(max(1, steps)):
            if not step(m, opt, x, y, loss_fn, before_update=record).updated:
                break
    final, acc, first = losses[-1], accs[-1], losses[0]
    details = {
        "examples": n,
        "steps": len(losses),
        "first_loss": first,
        "final_loss": final,
        "final_acc": acc,
        "outputs_are_probabilities": probs_out,
        "losses": [round(v, 5) for v in losses],
    }
    figures = {"loss": _loss_curve(losses, accs, loss_below, n)}
    status = "fail"
    if acc == 1.0 and final <= loss_below:
        status = "pass"
    elif acc == 1.0 and math.isfinite(final) and final <= 0.1 * first:
        status = "warn"
    msg = (
        f"{n} examples: loss {first:.4f} -> {final:.4g}, accuracy {100 * acc:.1f}% after "
        f"{len(losses)} step(s)"
    )
    if status == "warn":
        msg += (
            f"; memorised, but the loss is not yet below {loss_below:g} (more steps or a larger lr)"
        )
    elif status == "fail":
        if probs_out:
            hint = (
                "the model's outputs are already probabilities (each row in [0, 1], summing to "
                "1): cross-entropy applies its own softmax, so drop the softmax from forward"
            )
        elif acc == 1.0:
            hint = "the loss plateaus well above zero: is the loss applied to the right tensor?"
        else:
            hint = (
                "the model cannot memorise a handful of examples: a frozen or disconnected "
                "model, a loss on the wrong tensor, or far too little capacity/lr"
            )
        msg += f"; {hint}"
    return Verdict(
        name, status, value=final, expected=expected, message=msg, details=details, figures=figures
    )


def _loss_curve(losses: List[float], accs: List[float], target: float, n: int):
    from runner.checks.figures import laid_out, plt

    fig, ax = plt.subplots(figsize=(6, 3.4))
    ys = [v if math.isfinite(v) and v > 0 else float("nan") for v in losses]
    ax.plot(range(len(ys)), ys, lw=1.5, label="loss")
    ax.axhline(target, color="grey", ls="--", lw=1, label=f"target loss {target:g}")
    ax.set_yscale("log")
    ax.set(
        title=f"Overfit one batch ({n} examples)",
        xlabel="optimiser step",
        ylabel="training loss (cross-entropy, log scale)",
    )
    acc_ax = ax.twinx()
    acc_ax.plot(
        range(len(accs)),
        [100 * a for a in accs],
        color="#1a7f37",
        lw=1,
        alpha=0.7,
        label="accuracy",
    )
    acc_ax.set(ylabel="accuracy on the batch (%)", ylim=(-2, 102))
    lines = ax.get_legend_handles_labels()
    more = acc_ax.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], loc="center right", fontsize=8)
    laid_out(fig)
    return fig


def input_independent(
    model_acc: float,
    model_loss: float,
    zero_acc: float,
    zero_loss: float,
    majority_acc: float,
    human_acc: Optional[float] = None,
    margin: float = 0.05,
) -> Verdict:
    """baseline.input_independent: the real model vs. the same model trained on zeroed inputs.

    Pass when the real model's validation accuracy beats the input-independent one (or the
    majority class, the best any constant predictor can do, if higher) by at least `margin`
    (absolute); fail otherwise: the inputs carry no usable signal (labels
    unrelated to the images) or the model ignores them. Reports the majority-class and the
    human accuracy beside them, with a bar chart.
    """
    name = "baseline.input_independent"
    if not (math.isfinite(model_acc) and math.isfinite(zero_acc)):
        return skip(
            name,
            f"no finite validation accuracy to compare (model {model_acc}, zero-input {zero_acc})",
        )
    # an input-independent model can at best learn a constant: the majority class. Taking the
    # larger of the two keeps the bar honest when the zero-input run had a short budget.
    bar = max(zero_acc, majority_acc) if math.isfinite(majority_acc) else zero_acc
    gain = model_acc - bar
    details = {
        "model_acc": model_acc,
        "model_loss": model_loss,
        "zero_input_acc": zero_acc,
        "zero_input_loss": zero_loss,
        "majority_acc": majority_acc,
        "human_acc": human_acc,
        "gain": gain,
    }
    human = f", human {100 * human_acc:.1f}%" if human_acc is not None else ""
    msg = (
        f"val accuracy: model {100 * model_acc:.2f}% (loss {model_loss:.4f}) vs zeroed inputs "
        f"{100 * zero_acc:.2f}% (loss {zero_loss:.4f}); majority class "
        f"{100 * majority_acc:.2f}%{human}"
    )
    fig = _baseline_bars(model_acc, zero_acc, majority_acc, human_acc)
    expected = f"model beats zeroed inputs and majority class by >= {100 * margin:g} points"
    if gain >= margin:
        return Verdict(
            name,
            "pass",
            value=gain,
            expected=expected,
            details=details,
            message=msg,
            figures={"bars": fig},
        )
    return Verdict(
        name,
        "fail",
        value=gain,
        expected=expected,
        details=details,
        figures={"bars": fig},
        message=msg + ": the model does no better than one that never sees its "
        "input; the labels may be unrelated to the images, or the model "
        "ignores x",
    )


def _baseline_bars(model_acc, zero_acc, majority_acc, human_acc):
    from runner.checks.figures import laid_out, plt

    names = ["majority class", "zeroed inputs", "model"]
    vals = [majority_acc, zero_acc, model_acc]
    if human_acc is not None:
        names, vals = names + ["human"], vals + [human_acc]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    colours = ["#bbbbbb", "#999999", "#1a7f37", "#0969da"][: len(vals)]
    bars = ax.barh(names, [100 * v for v in vals], color=colours)
    for b, v in zip(bars, vals):
        ax.text(b.get_width() + 1, b.get_y() + b.get_height() / 2, f"{100 * v:.1f}%", va="center")
    ax.set(xlim=(0, 110), xlabel="validation accuracy (%)", title="Model vs. dumb baselines")
    laid_out(fig)
    return fig
