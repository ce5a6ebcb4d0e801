"""Classification figures from a confusion matrix: per class, balanced, macro, intervals.

Pure functions on a [C, C] count matrix (rows: the true class, columns: the predicted one),
which `runner.loop.evaluate` accumulates on the device; no config, no I/O. scikit-learn's
`precision_recall_fscore_support` gives the same numbers (tests/test_testsplit.py checks);
computing them from the matrix here keeps evaluation one pass and DDP-summable.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence

import torch

# `metric` (the config's top-level key) -> the evaluation figure it reads, and whether a
# smaller value is better; runner/jobs.py selection_value and the loop's best epoch use it
METRIC_FIELDS = {
    "accuracy": ("acc", False),
    "balanced_accuracy": ("balanced_acc", False),
    "macro_f1": ("macro_f1", False),
    "val_loss": ("loss", True),
}


def epoch_score(record: Any, metric: str) -> Optional[float]:
    """One evaluation's figure of `metric` on runner/loop.py's EpochRecord (its `val_` fields
    of METRIC_FIELDS), higher is better (val_loss negated): what a trial reports to the study's
    pruner each epoch, so the pruner compares the quantity the trial's objective is
    (runner/jobs.py selection_value of the best epoch). None when the epoch has no such figure."""
    name, smaller_better = METRIC_FIELDS[metric]
    v = getattr(record, f"val_{name}", None)
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
        return None
    return -float(v) if smaller_better else float(v)


def best_epoch_on(metric: str) -> str:
    """The loop's LoopOptions.best_on for the config's `metric`: accuracy and val_loss keep the
    recipe's val loss (smooth; accuracy on a few hundred images ties between epochs); the
    imbalance-aware ones pick the epoch on themselves."""
    return metric if metric in ("balanced_accuracy", "macro_f1") else "val_loss"


def _safe_div(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.where(b > 0, a / b.clamp_min(1), torch.zeros_like(a))


def per_class(confusion: torch.Tensor) -> Dict[str, torch.Tensor]:
    """precision, recall, f1 and support per class (0 where a class is never predicted or
    has no examples, as scikit-learn's zero_division=0)."""
    cm = confusion.double()
    tp = cm.diag()
    support = cm.sum(1)
    predicted = cm.sum(0)
    precision = _safe_div(tp, predicted)
    recall = _safe_div(tp, support)
    f1 = _safe_div(2 * precision * recall, precision + recall)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support}


def balanced_accuracy(confusion: torch.Tensor) -> float:
    """The mean recall over the classes that have examples (scikit-learn's definition)."""
    pc = per_class(confusion)
    present = pc["support"] > 0
    return float(pc["recall"][present].mean()) if bool(present.any()) else math.nan


def macro_f1(confusion: torch.Tensor) -> float:
    """The unweighted mean F1 over the classes present in the targets or the predictions."""
    pc = per_class(confusion)
    present = (pc["support"] > 0) | (confusion.sum(0) > 0)
    return float(pc["f1"][present].mean()) if bool(present.any()) else math.nan


def confusion_counts(targets: torch.Tensor, preds: torch.Tensor, c: int) -> torch.Tensor:
    """[C, C] counts, rows the true class, columns the predicted (as the loop's evaluation)."""
    return torch.bincount(targets.long() * c + preds, minlength=c * c)[: c * c].view(c, c)


def wilson_interval(correct: int, n: int, z: float = 1.959964) -> List[Optional[float]]:
    """The 95% Wilson score interval of an accuracy of `correct` out of `n` (good at small n
    and near 0 or 1, where the normal approximation leaves [0, 1])."""
    if n <= 0:
        return [None, None]
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return [max(0.0, centre - half), min(1.0, centre + half)]


def evaluation_block(
    confusion: torch.Tensor, loss: float, class_names: Sequence[str]
) -> Dict[str, Any]:
    """One split's figures for summary.json: n, accuracy (with its Wilson interval), loss,
    balanced accuracy, macro-F1, the confusion matrix and the per-class table."""
    cm = confusion.long().cpu()
    n = int(cm.sum())
    correct = int(cm.diag().sum())
    pc = per_class(cm)
    return {
        "n": n,
        "acc": correct / n if n else None,
        "acc_ci95": wilson_interval(correct, n),
        "loss": loss if loss is not None and math.isfinite(loss) else None,
        "balanced_acc": balanced_accuracy(cm) if n else None,
        "macro_f1": macro_f1(cm) if n else None,
        "confusion": cm.tolist(),
        "per_class": [
            {
                "class": str(name),
                "precision": float(pc["precision"][k]),
                "recall": float(pc["recall"][k]),
                "f1": float(pc["f1"][k]),
                "support": int(pc["support"][k]),
            }
            for k, name in enumerate(class_names)
        ],
    }
