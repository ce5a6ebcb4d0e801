"""Small helpers the checks share: probe a model without leaving a trace on it.

A check may run forward passes in train mode (that is the mode the recipe's numbers are
about), which updates BatchNorm running statistics and draws dropout masks from the global
RNG. `preserved` puts buffers, train/eval flags and the RNG back afterwards, so running a
check never changes the model or the random stream of the run that follows.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, List

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


@contextlib.contextmanager
def preserved(model: nn.Module) -> Iterator[nn.Module]:
    """Restore the model's buffers, per-module training flags and the RNG on exit."""
    flags = [(m, m.training) for m in model.modules()]
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    devices: List[int] = []
    for b in list(model.parameters())[:1]:
        if b.device.type == "cuda":
            devices = [b.device.index or 0]
    with torch.random.fork_rng(devices=devices):
        try:
            yield model
        finally:
            with torch.no_grad():
                for b, saved in buffers:
                    b.copy_(saved)
            for m, was in flags:
                m.training = was


def batchnorm_layers(model: nn.Module) -> List[nn.Module]:
    return [m for m in model.modules() if isinstance(m, _BatchNorm)]


def train_mode_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Cross-entropy of the model in train mode (the loss the first step sees), no trace left."""
    with preserved(model), torch.no_grad():
        model.train()
        return float(nn.functional.cross_entropy(model(x).float(), y))


def trainable(model: nn.Module):
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]
