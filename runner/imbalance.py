"""Imbalanced classes (recipe stage 1 asks about them; issue 27): `trainer.imbalance` treats
them in training, one way at a time.

- `class_weights`: cross-entropy weighted per class by n / (k * count) (scikit-learn's
  "balanced" weights), so every class weighs the same in the loss; with mixup/cutmix the
  soft targets' weight is their mix of the classes' weights (`SoftTargetCE`);
- `balanced_sampler`: each epoch draws as many training examples as the split has, with
  replacement, each with probability proportional to 1 / its class's count (seeded by seed
  and epoch like the shuffle: a resumed run draws the same batches);
- `auto`: class weights when the largest training class has at least
  `trainer.imbalance_ratio` (10) times the examples of the smallest, else none;
- `none` (the default).

Validation loss stays the plain, unweighted cross-entropy: it measures the model on the data
as it is, and early stopping and the selections read it. Balanced accuracy and macro-F1 are
reported beside accuracy in every run (metrics.csv, summary.json; `metric=balanced_accuracy`
selects on one).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import torch
from torch import nn

SETTINGS = ("none", "class_weights", "balanced_sampler", "auto")


@dataclass
class Imbalance:
    """What `trainer.imbalance` came to for a training split."""

    setting: str
    applied: str  # none | class_weights | balanced_sampler
    ratio: float  # largest / smallest class count (inf when a class has no example)
    counts: List[int]
    class_weights: Optional[torch.Tensor] = None
    sample_weights: Optional[torch.Tensor] = None
    reason: str = ""

    def record(self) -> Dict[str, Any]:
        """summary.json's `imbalance`."""
        return {
            "setting": self.setting,
            "applied": self.applied,
            "ratio": self.ratio if self.ratio != float("inf") else None,
            "train_class_counts": self.counts,
            "class_weights": None
            if self.class_weights is None
            else [round(float(w), 6) for w in self.class_weights],
            "reason": self.reason,
        }


def ratio_of(counts: List[int]) -> float:
    present = [c for c in counts if c > 0]
    if not present:
        return 1.0
    return float("inf") if len(present) < len(counts) else max(present) / min(present)


def resolve(setting: str, labels: torch.Tensor, num_classes: int, threshold: float) -> Imbalance:
    """`trainer.imbalance` for training labels `labels`: what is applied, and its weights."""
    counts = torch.bincount(labels.long(), minlength=num_classes)
    ratio = ratio_of(counts.tolist())
    applied, reason = setting, f"trainer.imbalance={setting}"
    if setting == "auto":
        if ratio >= threshold:
            applied = "class_weights"
            reason = (
                f"trainer.imbalance=auto: the largest training class has {ratio:.1f}x the "
                f"examples of the smallest (>= trainer.imbalance_ratio={threshold:g}): "
                "class-weighted loss"
            )
        else:
            applied = "none"
            reason = (
                f"trainer.imbalance=auto: largest/smallest training class {ratio:.1f} "
                f"< trainer.imbalance_ratio={threshold:g}: nothing to treat"
            )
    out = Imbalance(setting, applied, ratio, counts.tolist(), reason=reason)
    per_class = torch.where(
        counts > 0, len(labels) / (num_classes * counts.clamp(min=1).double()), 0.0
    ).float()
    if applied == "class_weights":
        out.class_weights = per_class
    elif applied == "balanced_sampler":
        out.sample_weights = per_class[labels.long()].double()
    return out


class SoftTargetCE(nn.Module):
    """Cross-entropy against soft targets (mixup/cutmix) with per-class weights: each
    example weighs its target's mix of the class weights, and the mean is over those weights,
    as torch's weighted cross-entropy averages hard labels."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.register_buffer("weight", weight.float())

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        per = -(target * torch.log_softmax(logits, dim=-1)).sum(-1)
        w = target @ self.weight.to(target.dtype)
        return (per * w).sum() / w.sum().clamp(min=1e-12)
