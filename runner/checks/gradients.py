"""Checks that use backprop itself: does every parameter learn, and do examples stay apart?

Recipe stage 2: "use backprop to chart dependencies" (the loss of example i must give a
zero gradient on every other example's input) and our `train.grads_flow`: every trainable
parameter gets a finite, non-zero gradient and moves when the optimiser steps.
"""

from __future__ import annotations

import copy
from typing import Callable, Dict, List, Optional, Sequence

import torch
from torch import nn

from runner.checks import Verdict, skip
from runner.checks.probes import batchnorm_layers, preserved, trainable
from runner.loop import step


def _default_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)


def _dead_modules(model: nn.Module, bad: set) -> List[str]:
    """The largest sub-modules whose trainable parameters are *all* bad (a dead branch)."""
    whole = []
    for mname, m in model.named_modules():
        if not mname:
            continue
        ps = [f"{mname}.{n}" for n, p in m.named_parameters() if p.requires_grad]
        if ps and all(p in bad for p in ps):
            whole.append(mname)
    return [w for w in whole if not any(w.startswith(o + ".") for o in whole)]


def grads_flow(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    steps: int = 3,
    make_optimizer: Optional[Callable[[nn.Module], torch.optim.Optimizer]] = None,
    loss_fn: Optional[nn.Module] = None,
) -> Verdict:
    """train.grads_flow: on a copy of the model, take `steps` optimiser steps on (x, y).

    Every trainable parameter must get a finite gradient that is non-zero at some step (more
    than one step because e.g. zero-initialised last BatchNorm gammas in residual blocks
    hold their branch's gradient at exactly zero until the first update), and its value must
    change. Warn when a few tensors fail, fail when a whole module (a branch) does, or any
    gradient is NaN/Inf. The model passed in is not changed.
    """
    name = "train.grads_flow"
    m = copy.deepcopy(model)
    m.train()
    params = trainable(m)
    if not params:
        return Verdict(
            name,
            "fail",
            value=0,
            expected="every trainable parameter",
            message="the model has no trainable parameters (all requires_grad=False)",
        )
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    opt = (make_optimizer or _default_optimizer)(m)
    start = {n: p.detach().clone() for n, p in params}
    got: Dict[str, bool] = {n: False for n, _ in params}
    none: Dict[str, bool] = {n: True for n, _ in params}
    nonfinite: List[str] = []

    def inspect(loss: torch.Tensor, logits: torch.Tensor) -> bool:
        """Note which parameters got a (finite, non-zero) gradient; False (no update) on NaN/Inf."""
        for n, p in params:
            if p.grad is None:
                continue
            none[n] = False
            if not torch.isfinite(p.grad).all():
                if n not in nonfinite:
                    nonfinite.append(n)
            elif bool((p.grad != 0).any()):
                got[n] = True
        return not nonfinite

    with preserved(m):
        for _ in range(max(1, steps)):
            if not step(m, opt, x, y, loss_fn, before_update=inspect).updated:
                break
    moved = {n: not torch.equal(start[n], p.detach()) for n, p in params}
    problems: Dict[str, str] = {}
    for n, _ in params:
        if n in nonfinite:
            problems[n] = "NaN/Inf gradient"
        elif none[n]:
            problems[n] = "no gradient (not connected to the loss)"
        elif not got[n]:
            problems[n] = "gradient exactly zero"
        elif not moved[n] and not nonfinite:
            problems[n] = "unchanged after the optimiser step (not in the optimiser?)"
    total = len(params)
    details = {"parameters": total, "steps": steps, "problems": problems}
    expected = "finite, non-zero gradient and an update for every trainable tensor"
    if not problems:
        return Verdict(
            name,
            "pass",
            value=0,
            expected=expected,
            details=details,
            message=f"all {total} trainable tensors got a finite, non-zero gradient "
            f"and moved within {steps} optimiser step(s)",
        )
    bad = set(problems)
    dead = _dead_modules(m, bad)
    listed = "; ".join(f"{n}: {why}" for n, why in list(problems.items())[:8])
    more = f" (+{len(problems) - 8} more)" if len(problems) > 8 else ""
    details["dead_modules"] = dead
    if nonfinite or dead or len(bad) == total:
        what = (
            "NaN/Inf gradients"
            if nonfinite
            else f"whole module(s) get no learning signal: {', '.join(dead[:5]) or 'all'}"
        )
        return Verdict(
            name,
            "fail",
            value=len(bad),
            expected=expected,
            details=details,
            message=f"{len(bad)} of {total} trainable tensors: {what}. {listed}{more}",
        )
    return Verdict(
        name,
        "warn",
        value=len(bad),
        expected=expected,
        details=details,
        message=f"{len(bad)} of {total} trainable tensors do not learn: {listed}{more}",
    )


def batch_independence(
    model: nn.Module, x: torch.Tensor, examples: Sequence[int] = (0, -1), rtol: float = 1e-6
) -> Verdict:
    """train.batch_independence: backprop the output of example i alone to the inputs.

    Only row i of the input gradient may be non-zero; anything else means the model mixes
    examples across the batch (a view/reshape/transpose over the batch dimension). BatchNorm
    couples a batch in train mode by design, so the check runs in train mode with BatchNorm
    layers switched to eval (running statistics): that isolates real bugs and keeps dropout
    and other train-mode behaviour. The message says which mode ran.
    """
    name = "train.batch_independence"
    B = x.shape[0]
    if B < 2:
        return skip(name, "needs a batch of at least 2 examples")
    bns = batchnorm_layers(model)
    mode = (
        f"train mode with its {len(bns)} BatchNorm layer(s) in eval mode (running statistics; "
        "BatchNorm couples a batch by design in train mode)"
        if bns
        else "train mode"
    )
    leaks: Dict[int, float] = {}
    self_zero: List[int] = []
    rows = sorted({i % B for i in examples})
    with preserved(model):
        model.train()
        for bn in bns:
            bn.eval()
        for i in rows:
            xi = x.detach().clone().requires_grad_(True)
            out = model(xi).float()
            # a fixed random projection of example i's outputs, not their plain sum: a sum is
            # constant for softmax outputs and would hide every dependency
            w = torch.randn(out.shape[1:], generator=torch.Generator().manual_seed(i))
            (g,) = torch.autograd.grad((out[i] * w.to(out.device)).sum(), xi, allow_unused=True)
            if g is None:
                self_zero.append(i)
                continue
            per_row = g.detach().abs().flatten(1).amax(1)
            own = float(per_row[i])
            others = torch.cat([per_row[:i], per_row[i + 1 :]])
            worst = float(others.max())
            if not torch.isfinite(per_row).all() or worst > rtol * max(own, 1e-30):
                leaks[i] = worst / own if own > 0 else float("inf")
            if own == 0:
                self_zero.append(i)
    details = {"batch": B, "examples": rows, "mode": mode, "leaks": leaks}
    expected = "zero gradient on every other example's input"
    if leaks:
        i, r = next(iter(leaks.items()))
        return Verdict(
            name,
            "fail",
            value=len(leaks),
            expected=expected,
            details=details,
            message=f"the output of example {i} has a gradient on other examples' "
            f"inputs (largest {r:.3g}x its own): the model mixes information "
            "across the batch dimension (a view/reshape/transpose bug?); "
            f"ran in {mode}",
        )
    if self_zero:
        return Verdict(
            name,
            "warn",
            value=0,
            expected=expected,
            details=details,
            message=f"example(s) {self_zero}: the output does not depend on its own "
            f"input at all; ran in {mode}",
        )
    return Verdict(
        name,
        "pass",
        value=0,
        expected=expected,
        details=details,
        message=f"outputs of examples {rows} depend only on their own inputs "
        f"(batch of {B}); ran in {mode}",
    )
