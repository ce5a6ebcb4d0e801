"""Checks on evaluation: is it repeatable, and do train and val use the same labels.

Recipe stage 2 ("evaluate on the whole validation set ... report enough digits"): a
validation number only means something when evaluating twice gives it twice, and when
validation labels mean what training labels mean.

- `eval_repeatable` (eval.repeatable): a few validation batches evaluated twice in eval
  mode must give the same logits. When they do not, it names the cause: the MODEL (the same
  input tensor gives different logits: dropout or noise active in eval) or the DATA (the
  same index read twice gives different tensors: random augmentation on the validation
  split).
- `split_labels` (train.split_labels): high training accuracy with validation accuracy at
  chance points at a label mapping that differs between the splits; it compares the class
  lists and reads the confusion matrix for a near-permutation.

Pure: a model, a "read batch" function and numbers in, a Verdict out; the global RNGs and
the model's train/eval modes are as they were afterwards.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn

from runner.checks import Verdict, skip


# ----------------------------------------------------------------------------- eval.repeatable
@contextmanager
def _same_rng_and_modes(model: nn.Module, device: torch.device):
    """Run the body with the model in eval mode; restore every module's mode and every RNG."""
    modes = [(m, m.training) for m in model.modules()]
    py_state, np_state = random.getstate(), np.random.get_state()
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            model.eval()
            yield
    finally:
        for m, was in modes:
            m.training = was
        random.setstate(py_state)
        np.random.set_state(np_state)


def _tensor(batch) -> torch.Tensor:
    """A read_batch result: a tensor, or (inputs, targets) of which the inputs."""
    return batch[0] if isinstance(batch, (tuple, list)) else batch


def _first_noisy_module(model: nn.Module, x: torch.Tensor, atol: float) -> str | None:
    """The first module (in call order) whose output differs between two calls on x."""
    names = {m: n for n, m in model.named_modules()}
    runs: list[list[Any]] = [[], []]
    k = [0]

    def hook(module, _inputs, output):
        if isinstance(output, torch.Tensor):
            runs[k[0]].append((names.get(module, "?"), output.detach().float().clone()))

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        with torch.no_grad():
            for k[0] in (0, 1):
                model(x)
    finally:
        for h in handles:
            h.remove()
    for (name, a), (_, b) in zip(*runs):
        if a.shape != b.shape or not torch.allclose(a, b, rtol=0, atol=atol, equal_nan=True):
            return name or "the model itself"
    return None


def eval_repeatable(
    model: nn.Module,
    read_batch: Callable[[Sequence[int]], Any],
    indices: Sequence[int],
    device="cpu",
    batch_size: int = 32,
    atol: float = 1e-4,
) -> Verdict:
    """eval.repeatable: evaluating the same validation examples twice gives the same logits.

    `read_batch(indices)` returns the validation inputs for those indices (a tensor, or an
    (inputs, targets) pair such as `DataSplit.get`), read the way evaluation reads them.
    Per batch of `indices`: read it twice (DATA differs when the two reads differ), run
    the first read through the model twice in eval mode (MODEL differs when the logits
    differ). `atol` is on |logits|, loose enough for non-deterministic GPU kernels, far
    below what dropout or injected noise change. Fail names the cause (and the first module
    whose output changes); pass otherwise. The model's modes and the RNGs are restored.
    """
    name = "eval.repeatable"
    indices = [int(i) for i in indices]
    if not indices:
        return skip(name, "no validation examples to evaluate twice")
    device = torch.device(device)
    expected = f"two evaluations give the same logits (max |diff| <= {atol:g})"
    data_diff, model_diff, logit_diff = 0.0, 0.0, 0.0
    data_bad: list[int] = []
    noisy_module, in_train = None, []
    with _same_rng_and_modes(model, device):
        in_train = [n for n, m in model.named_modules() if m.training]
        for s in range(0, len(indices), batch_size):
            idx = indices[s : s + batch_size]
            x1, x2 = _tensor(read_batch(idx)), _tensor(read_batch(idx))
            if x1.shape != x2.shape:
                per = torch.full((len(idx),), float("inf"))
            else:
                per = (x1.float() - x2.float()).abs().flatten(1).amax(dim=1)
            data_diff = max(data_diff, float(per.max()))
            data_bad += [i for i, d in zip(idx, per.tolist()) if d > 0]
            x1 = x1.to(device)
            with torch.no_grad():
                a, b = model(x1), model(x1)
                d = float((a.float() - b.float()).abs().max())
                if d > atol and noisy_module is None:
                    noisy_module = _first_noisy_module(model, x1, atol)
                model_diff = max(model_diff, d)
                if x1.shape == x2.shape:
                    logit_diff = max(
                        logit_diff, float((model(x2.to(device)).float() - a.float()).abs().max())
                    )
    details: dict[str, Any] = {
        "examples": len(indices),
        "max_input_diff": data_diff,
        "max_logit_diff_same_input": model_diff,
        "max_logit_diff_reread_input": logit_diff,
        "inputs_that_differ": data_bad[:20],
    }
    causes = []
    if model_diff > atol:
        where = f" (first in module {noisy_module!r})" if noisy_module else ""
        train_only = (
            f"; modules still in train mode after eval(): {in_train[:5]}" if in_train else ""
        )
        causes.append(
            f"MODEL: the same input tensor gives logits up to {model_diff:.3g} apart "
            f"in eval mode{where}{train_only}: dropout or noise is active in eval; "
            "use nn.Dropout (or F.dropout(x, training=self.training)) and gate any "
            "noise on self.training"
        )
        details["module"] = noisy_module
    if data_diff > 0:
        causes.append(
            f"DATA: reading the same validation example twice gives different "
            f"tensors ({len(data_bad)} of {len(indices)} examples, up to "
            f"{data_diff:.3g} apart, e.g. index {data_bad[0]}): random augmentation "
            "on the validation split; give val the eval transform (resize, "
            "center crop, normalise) and keep augmentation for train"
        )
    value = max(model_diff, logit_diff)
    if causes:
        return Verdict(
            name,
            "fail",
            value=value,
            expected=expected,
            message="evaluation is not repeatable. " + " ".join(causes),
            details=details,
        )
    return Verdict(
        name,
        "pass",
        value=value,
        expected=expected,
        message=f"{len(indices)} validation examples evaluated twice give the same "
        "inputs and logits",
        details=details,
    )


# ----------------------------------------------------------------------------- split labels
def chance_accuracy(val_labels: Sequence[int], num_classes: int) -> float:
    """What a model that knows nothing scores: max(majority class rate, 1 / C)."""
    y = np.asarray(val_labels, dtype=np.int64)
    if y.size == 0:
        return 1.0 / max(num_classes, 1)
    return float(
        max(np.bincount(y, minlength=num_classes).max() / y.size, 1.0 / max(num_classes, 1))
    )


def _name_diffs(train_names: Sequence[str], val_names: Sequence[str]) -> list[str]:
    """Each way the two class lists differ, in words."""
    tr, va = [str(c) for c in train_names], [str(c) for c in val_names]
    out = []
    if set(tr) != set(va):
        only_tr, only_va = sorted(set(tr) - set(va)), sorted(set(va) - set(tr))
        if only_tr:
            out.append(f"only in train: {only_tr[:10]}")
        if only_va:
            out.append(f"only in val: {only_va[:10]}")
    moved = [
        f"{c!r} is class {i} in train but {va.index(c)} in val"
        for i, c in enumerate(tr)
        if c in va and va.index(c) != i
    ]
    if moved:
        out.append(
            "; ".join(moved[:5]) + (f" (and {len(moved) - 5} more)" if len(moved) > 5 else "")
        )
    return out


def confusion(labels: Sequence[int], preds: Sequence[int], num_classes: int) -> np.ndarray:
    """Counts[true, predicted]."""
    m = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(m, (np.asarray(labels, np.int64), np.asarray(preds, np.int64)), 1)
    return m


def label_mapping(
    conf: np.ndarray, min_share: float = 0.8, min_examples: int = 5
) -> dict[int, tuple]:
    """{true class: (predicted class, share)} for classes predicted mostly as ONE other class.

    A near-permutation of the confusion matrix (each true class's mass on one other column,
    no two classes on the same one) is a label map that differs between the splits, not a
    weak model; a model that predicts one class for everything is not a mapping.
    """
    out = {}
    for c, row in enumerate(conf):
        n = int(row.sum())
        if n < min_examples:
            continue
        p = int(row.argmax())
        share = row[p] / n
        if p != c and share >= min_share:
            out[c] = (p, float(share))
    targets = [p for p, _ in out.values()]
    return {c: (p, s) for c, (p, s) in out.items() if targets.count(p) == 1}


def split_labels(
    train_acc: float,
    val_acc: float,
    num_classes: int,
    val_labels: Sequence[int] | None = None,
    val_preds: Sequence[int] | None = None,
    train_classes: Sequence[str] | None = None,
    val_classes: Sequence[str] | None = None,
    min_train_acc: float = 0.9,
    margin: float = 0.05,
    min_share: float = 0.8,
) -> Verdict:
    """train.split_labels: high training accuracy with val accuracy at chance = a label mix-up.

    Fail when `train_acc >= min_train_acc` and `val_acc <= chance + margin` (chance =
    max(majority rate, 1/C) of `val_labels`, or 1/C without them): the model learned the
    training labels, and they mean something else in val (class folders named or ordered
    differently, class_to_idx built per split, an offset). The message names what the
    class lists and the confusion matrix (`val_labels` vs `val_preds`) show. Independently
    of the accuracies, different class lists fail. Pass otherwise.
    """
    name = "train.split_labels"
    chance = (
        chance_accuracy(val_labels, num_classes)
        if val_labels is not None
        else 1.0 / max(num_classes, 1)
    )
    expected = (
        f"val accuracy above chance ({chance:.3f}) + {margin:g} when train accuracy "
        f">= {min_train_acc:g}; the same class list in train and val"
    )
    details: dict[str, Any] = {"train_acc": train_acc, "val_acc": val_acc, "chance": chance}
    findings: list[str] = []
    if train_classes is not None and val_classes is not None:
        diffs = _name_diffs(train_classes, val_classes)
        if diffs:
            details["class_list_differences"] = diffs
            findings.append("the class lists differ: " + "; ".join(diffs))
    if val_labels is not None and val_preds is not None and len(val_labels):
        mapping = label_mapping(confusion(val_labels, val_preds, num_classes), min_share)
        if mapping:
            details["mapping"] = {
                str(c): {"predicted": p, "share": round(s, 4)} for c, (p, s) in mapping.items()
            }
            shown = sorted(mapping.items(), key=lambda kv: -kv[1][1])[:5]
            findings.append(
                "val predictions are a relabelling: "
                + ", ".join(
                    f"val class {c} is predicted as {p} in {s:.0%} of cases" for c, (p, s) in shown
                )
                + (f" (and {len(mapping) - 5} more classes)" if len(mapping) > 5 else "")
            )
    at_chance = train_acc >= min_train_acc and val_acc <= chance + margin
    if at_chance or "class_list_differences" in details:
        head = (
            f"train accuracy {train_acc:.3f} but val accuracy {val_acc:.3f} at chance "
            f"({chance:.3f})"
            if at_chance
            else "train and val name their classes differently"
        )
        why = "; ".join(findings) or (
            "the model learned the training labels, which mean something else in val"
        )
        return Verdict(
            name,
            "fail",
            value=val_acc,
            expected=expected,
            message=f"{head}: {why}. Build one class -> index map (e.g. the sorted "
            "class folder names of train) and use it for both splits",
            details=details,
        )
    return Verdict(
        name,
        "pass",
        value=val_acc,
        expected=expected,
        message=f"val accuracy {val_acc:.3f} vs chance {chance:.3f} (train "
        f"{train_acc:.3f}); the splits agree on their labels",
        details=details,
    )
