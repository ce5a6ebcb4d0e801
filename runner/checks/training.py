"""Checks about the training run itself: determinism and finiteness."""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple

import torch
from torch import nn

from runner.checks import Verdict


def short_run_losses(make_model: Callable[[], nn.Module],
                     make_optimizer: Callable[[nn.Module], torch.optim.Optimizer],
                     batches: Sequence[Tuple[torch.Tensor, torch.Tensor]], seed: int,
                     loss_fn: Optional[nn.Module] = None) -> List[float]:
    """Seed, build, and take one optimiser step per batch; the losses seen."""
    loss_fn = loss_fn or nn.CrossEntropyLoss()
    torch.manual_seed(seed)
    model = make_model()
    model.train()
    opt = make_optimizer(model)
    out = []
    for x, y in batches:
        loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        out.append(float(loss.detach()))
    return out


def seed_determinism(make_model, make_optimizer, batches, seed: int, loss_fn=None) -> Verdict:
    """seed.determinism: two short runs from the same seed give identical losses (recipe 2)."""
    a = short_run_losses(make_model, make_optimizer, batches, seed, loss_fn)
    b = short_run_losses(make_model, make_optimizer, batches, seed, loss_fn)
    diff = max((abs(x - y) for x, y in zip(a, b)), default=0.0)
    if a == b:
        return Verdict("seed.determinism", "pass", value=0.0, expected="0 (bit-identical)",
                       message=f"{len(a)} steps from seed {seed} gave identical losses twice "
                               f"({', '.join(f'{v:.6f}' for v in a)})",
                       details={"losses_a": a, "losses_b": b})
    return Verdict("seed.determinism", "fail", value=diff, expected="0 (bit-identical)",
                   message=f"two runs from seed {seed} differ by up to {diff:.3g} in loss: some "
                           "randomness is not seeded (data order, dropout, init, nondeterministic "
                           "kernels)", details={"losses_a": a, "losses_b": b})


def train_finite(nonfinite: Optional[BaseException], steps: int) -> Verdict:
    """train.finite: no NaN/Inf in the loss (the loop stops at the first one)."""
    if nonfinite is None:
        return Verdict("train.finite", "pass", value=steps, expected="all steps finite",
                       message=f"loss finite at all {steps} optimiser steps")
    return Verdict("train.finite", "fail", value=f"epoch {nonfinite.epoch}, step {nonfinite.step}",
                   expected="all steps finite", message=str(nonfinite))
