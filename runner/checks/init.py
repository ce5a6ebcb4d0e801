"""Checks on the untrained model: the loss at init, and initialising the final bias well.

Recipe stage 2: "verify loss @ init" (about log C for C balanced classes) and "init well"
(final bias = log of the class prior, so the net starts by predicting the base rates).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from runner.checks import Verdict, skip
from runner.checks.probes import train_mode_loss
from runner.models import final_linear


def prior_entropy(prior: torch.Tensor) -> float:
    """Cross-entropy of predicting the class prior itself: H(p) = -sum p log p (nats)."""
    p = prior.double()
    p = p[p > 0]
    return float(-(p * p.log()).sum())


def expected_init_loss(prior: torch.Tensor):
    """(low, high): an uninformed net predicts between the prior (H(p)) and uniform (log C)."""
    return prior_entropy(prior), math.log(len(prior))


def _band(lo: float, hi: float, tol: float) -> str:
    if hi - lo < 1e-3:
        return f"{hi:.2f} +/- {tol:.2f}"
    return f"{lo:.2f}..{hi:.2f} +/- {tol:.2f}"


def init_loss(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, prior: torch.Tensor, tolerance: float = 0.25
) -> Verdict:
    """init.loss: cross-entropy of the untrained model (train mode) vs. what "knows nothing" gives.

    A net that knows nothing predicts uniform (loss log C) or, with its bias set to the log
    prior, the prior (loss H(prior)); both are log C for balanced classes. Pass within
    `tolerance` nats of that band; fail when further off than 3x the tolerance *and* than the
    band's own value (e.g. above 2 log C: an over-scaled final layer, a wrong loss); warn in
    between (moderately over-confident inits, e.g. timm's EfficientNet/MobileNet heads).
    """
    name = "init.loss"
    if len(prior) != 0 and x.shape[0] == 0:
        return skip(name, "no examples to measure the loss on")
    loss = train_mode_loss(model, x, y)
    lo, hi = expected_init_loss(prior)
    expected = _band(lo, hi, tolerance)
    C = len(prior)
    if not math.isfinite(loss):
        return Verdict(
            name,
            "fail",
            value=loss,
            expected=expected,
            message=f"loss at init is {loss}: the untrained model already produces NaN/Inf",
            details={"loss": loss, "low": lo, "high": hi},
        )
    off = max(lo - loss, loss - hi, 0.0)
    details = {"loss": loss, "low": lo, "high": hi, "examples": int(x.shape[0]), "classes": C}
    where = f"log C = log {C} = {hi:.3f}" + (f", H(prior) = {lo:.3f}" if hi - lo >= 1e-3 else "")
    if off <= tolerance:
        return Verdict(
            name,
            "pass",
            value=loss,
            expected=expected,
            details=details,
            message=f"loss at init {loss:.4f} on {x.shape[0]} examples is within "
            f"{tolerance} of the uninformed value ({where})",
        )
    status = "warn" if off <= max(3 * tolerance, hi) else "fail"
    why = (
        "the untrained net is over-confident: outputs too large at init (over-scaled final "
        "layer or init), or the loss is applied to the wrong tensor"
        if loss > hi
        else "the loss is lower than a net that knows nothing can get: labels "
        "leak into the inputs, or the loss is not cross-entropy over all classes"
    )
    return Verdict(
        name,
        status,
        value=loss,
        expected=expected,
        details=details,
        message=f"loss at init {loss:.4f} is {off:.3f} away from the uninformed value "
        f"({where}): {why}",
    )


def init_bias(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    prior: torch.Tensor,
    tolerance: float = 0.25,
    head: Optional[nn.Linear] = None,
) -> Verdict:
    """init.bias: set the final Linear's bias to log(prior) *in place*; loss before and after.

    After it, an uninformed net should predict the base rates: loss about H(prior). Warn when
    the loss is still off by more than `tolerance`, fail when far off (as init.loss grades it):
    the logits are dominated by the weights, or the "final" Linear is not what produces the
    logits. Skip when there is no final Linear with a bias.
    """
    name = "init.bias"
    head = head if head is not None else final_linear(model)
    if head is None:
        return skip(
            name,
            f"no final nn.Linear found in {type(model).__name__} (no timm "
            "get_classifier() Linear, no Linear module): set the bias by hand",
        )
    if head.bias is None:
        return skip(name, f"the final Linear ({head.in_features}->{head.out_features}) has no bias")
    if head.out_features != len(prior):
        return skip(
            name,
            f"the final Linear has {head.out_features} outputs but the data has "
            f"{len(prior)} classes: it is not the classifier",
        )
    before = train_mode_loss(model, x, y)
    log_prior = prior.double().clamp_min(1e-8).log().float()
    with torch.no_grad():
        head.bias.copy_(log_prior.to(head.bias))
    after = train_mode_loss(model, x, y)
    target = prior_entropy(prior)
    details = {
        "loss_before": before,
        "loss_after": after,
        "prior_entropy": target,
        "bias": [round(float(b), 4) for b in log_prior],
    }
    expected = f"{target:.2f} +/- {tolerance:.2f} (H(prior))"
    balanced = float(prior.max()) <= 1.25 * float(prior.min())
    how = "classes (nearly) balanced, so the loss hardly moves" if balanced else "imbalanced"
    msg = (
        f"final bias set to log(prior) ({how}); "
        f"init loss {before:.4f} -> {after:.4f}, H(prior) = {target:.4f}"
    )
    off = abs(after - target) if math.isfinite(after) else math.inf
    if off <= tolerance:
        return Verdict(name, "pass", value=after, expected=expected, message=msg, details=details)
    # graded like init.loss: moderately off is a warning, far off (an over-scaled head) a failure
    status = "warn" if off <= max(3 * tolerance, target) else "fail"
    return Verdict(
        name,
        status,
        value=after,
        expected=expected,
        details=details,
        message=msg + ": with the bias at log(prior) the net still does not predict "
        "the base rates; the logits are dominated by the weights "
        "(over-scaled final layer) or something after the final Linear "
        "changes them",
    )
