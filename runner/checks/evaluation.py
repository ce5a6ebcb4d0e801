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


# ----------------------------------------------------------------------------- class mapping
def mapped_classes(
    train_conf: np.ndarray,
    conf: np.ndarray,
    min_share: float = 0.6,
    min_train_recall: float = 0.8,
    min_examples: int = 5,
) -> dict[int, dict[str, float]]:
    """{class: {"to", "share", "train_recall"}} for classes the model knows on train (recall
    >= `min_train_recall`) whose images in this split go, at least `min_share` of them, to
    ONE other class (at least `min_examples` images, and surely more than half: Wilson's
    99% lower bound above 0.5, which two look-alike classes splitting ~50/50 never reach by
    chance): a label that means another class
    here, not a hard class (a hard class is hard in train too, and its mistakes spread).
    The other half of a swap (j's images going back to c) needs half that train recall."""
    tr, cf = np.asarray(train_conf, np.float64), np.asarray(conf, np.float64)
    out = {}
    for c in range(cf.shape[0]):
        n, n_tr = cf[c].sum(), tr[c].sum()
        if n < min_examples or n_tr < min_examples:
            continue
        recall_tr = tr[c, c] / n_tr
        row = cf[c].copy()
        row[c] = -1
        j = int(row.argmax())
        share = cf[c, j] / n
        # at least min_examples images moved, and more than half of the class with 99%
        # confidence: two classes that look alike split ~50/50, a remapping moves ~all
        if (
            share >= min_share
            and cf[c, j] >= min_examples
            and _surely_most(cf[c, j], n)
            and recall_tr >= min_train_recall
        ):
            out[c] = {"to": j, "share": float(share), "train_recall": float(recall_tr)}
    # the other half of a swap: j's images go to c as systematically; a swap is evidence
    # enough that j needs only half the train recall
    for c, m in list(out.items()):
        j = m["to"]
        n, n_tr = cf[j].sum(), tr[j].sum()
        if j in out or n < min_examples or n_tr < min_examples:
            continue
        share, recall_tr = cf[j, c] / n, tr[j, j] / n_tr
        moved = cf[j, c] >= min_examples and _surely_most(cf[j, c], n)
        if share >= min_share and moved and recall_tr >= min_train_recall / 2:
            out[j] = {"to": c, "share": float(share), "train_recall": float(recall_tr)}
    return out


def _surely_most(k: float, n: float) -> bool:
    """k of n is more than half, with 99% confidence (Wilson's lower bound above 0.5): a
    50/50 split passes as one by chance in ~0.3% of classes; 7 of 7 is enough."""
    from runner.metrics import wilson_interval

    low = wilson_interval(int(k), int(n), z=2.576)[0]
    return low is not None and low > 0.5


def _patterns(mapped: dict[int, dict], support: np.ndarray, names: Sequence[str]) -> list[str]:
    """Swapped pairs and shifted runs of classes, in words (the rest one by one)."""
    said, out = set(), []
    for c, m in mapped.items():
        j = m["to"]
        if j in mapped and mapped[j]["to"] == c and c < j:
            out.append(f"{names[c]!r} and {names[j]!r} are swapped")
            said |= {c, j}
    runs: list[list[int]] = []
    for c in sorted(set(mapped) - said):
        d = mapped[c]["to"] - c
        if runs and runs[-1][-1] == c - 1 and mapped[runs[-1][-1]]["to"] - (c - 1) == d:
            runs[-1].append(c)
        else:
            runs.append([c])
    for run in runs:
        d = mapped[run[0]]["to"] - run[0]
        if len(run) >= 2 and abs(d) == 1:
            lo, hi = run[0], run[-1]
            empty = [k for k in (lo - 1, hi + 1, lo + d, hi + d) if 0 <= k < len(support)]
            gone = sorted({k for k in empty if support[k] == 0 and k not in mapped})
            why = (
                f"; class(es) {[names[k] for k in gone]} have no images here: a class "
                "missing from this split's class list shifts the indices after it"
                if gone
                else ""
            )
            out.append(
                f"classes {names[lo]!r}..{names[hi]!r} are predicted as the class {d:+d} "
                f"from them (labels off by one){why}"
            )
        else:
            out += [
                f"{names[c]!r} is predicted as {names[mapped[c]['to']]!r} in "
                f"{mapped[c]['share']:.0%} of its images"
                for c in run
            ]
    return out


def class_mapping(
    train_confusion,
    split_confusions: dict[str, Any],
    class_names: Sequence[str] | None = None,
    min_share: float = 0.6,
    min_train_recall: float = 0.8,
    min_examples: int = 5,
) -> Verdict:
    """eval.class_mapping: no class means another class in val (or test) than in train.

    `train_confusion`: counts[true, predicted] of the trained model on training examples
    (read through the eval transform); `split_confusions`: {"val": counts, "test": ...} of
    the same model. Fail when a class the model knows on train (recall >= `min_train_recall`)
    has `min_share` or more of a split's images predicted as ONE other class: two classes
    swapped in that split, or a class missing from its class list so that the indices after
    it shift by one. train.split_labels fires only when the whole split is at chance; this
    one names a few classes. Genuinely confusable classes spread their mistakes and are
    weaker on train too: they pass.
    """
    name = "eval.class_mapping"
    tr = np.asarray(torch.as_tensor(train_confusion).cpu(), np.int64)
    C = tr.shape[0]
    names = [str(c) for c in (class_names or range(C))]
    if tr.sum() == 0:
        return skip(name, "no training predictions to compare with")
    split_confusions = {k: v for k, v in split_confusions.items() if v is not None}
    if not split_confusions:
        return skip(name, "no val/test predictions to compare with")
    expected = (
        f"no class with train recall >= {min_train_recall:g} has >= {min_share:.0%} of a "
        "split's images predicted as one other class"
    )
    recall_tr = np.diag(tr) / np.maximum(tr.sum(1), 1)
    details: dict[str, Any] = {"train_recall": [round(float(r), 4) for r in recall_tr]}
    found, worst, worst_at = [], 0.0, None
    for split, cm in split_confusions.items():
        if cm is None:
            continue
        cf = np.asarray(torch.as_tensor(cm).cpu(), np.int64)
        mapped = mapped_classes(tr, cf, min_share, min_train_recall, min_examples)
        off = cf.astype(np.float64) / np.maximum(cf.sum(1, keepdims=True), 1)
        np.fill_diagonal(off, 0)
        known = recall_tr >= min_train_recall
        if known.any() and off[known].max() > worst:
            worst = float(off[known].max())
            r = int(np.flatnonzero(known)[off[known].max(1).argmax()])
            worst_at = (split, names[r], names[int(off[r].argmax())])
        support = cf.sum(1)
        details[split] = {
            "mapped": {
                names[c]: {**m, "to": names[m["to"]], "share": round(m["share"], 4)}
                for c, m in mapped.items()
            },
            "missing_classes": [names[k] for k in range(C) if support[k] == 0 and tr[k].sum()],
        }
        if mapped:
            found.append((split, mapped, _patterns(mapped, support, names)))
    if not found:
        near = (
            f"; the most systematic mistake: {worst_at[0]} {worst_at[1]!r} -> {worst_at[2]!r} "
            f"in {worst:.0%} of its images"
            if worst_at
            else ""
        )
        return Verdict(
            name,
            "pass",
            value=round(worst, 4),
            expected=expected,
            message=f"every class the model knows on train keeps its label in "
            f"{', '.join(split_confusions)}{near}",
            details=details,
        )
    text = "; ".join(f"{split}: " + "; ".join(p) for split, _, p in found)
    n = sum(len(m) for _, m, _ in found)
    split0, mapped0, _ = found[0]
    c0 = max(mapped0, key=lambda c: mapped0[c]["share"])
    figures = {"confusion": _mapping_figure(tr, split_confusions[split0], split0, mapped0, names)}
    return Verdict(
        name,
        "fail",
        value=n,
        expected=expected,
        message=f"{n} class(es) mean another class than in train. {text} (e.g. {split0} "
        f"{names[c0]!r}: {mapped0[c0]['share']:.0%} predicted as "
        f"{names[mapped0[c0]['to']]!r}, train recall {mapped0[c0]['train_recall']:.0%}). "
        "Build one class -> index map (train's sorted class names) and use it for every "
        "split; check the split's class folders for a missing or misnamed class",
        details=details,
        figures=figures,
    )


def _mapping_figure(train_conf, conf, split: str, mapped: dict, names: Sequence[str]):
    """Row-normalised confusion on train and on the split, the remapped cells boxed."""
    import matplotlib.pyplot as plt

    from runner.plots import laid_out  # (importing it selects the Agg backend)

    C = len(names)
    size = min(10.0, 2.0 + 0.3 * C)
    fig, axes = plt.subplots(1, 2, figsize=(2 * size, size * 0.9))
    for ax, cm, title in ((axes[0], train_conf, "train"), (axes[1], conf, split)):
        cm = np.asarray(torch.as_tensor(cm).cpu(), np.float64)
        ax.imshow(cm / np.maximum(cm.sum(1, keepdims=True), 1), cmap="Blues", vmin=0, vmax=1)
        for c, m in mapped.items():
            ax.add_patch(
                plt.Rectangle((m["to"] - 0.5, c - 0.5), 1, 1, fill=False, color="red", lw=1.5)
            )
        if C <= 30:
            ax.set_xticks(range(C), names, rotation=90, fontsize=6)
            ax.set_yticks(range(C), names, fontsize=6)
        ax.set(xlabel="predicted", ylabel="label", title=f"{title} (share of each label)")
    fig.suptitle("Classes predicted as one other class outside train (boxed)", fontsize=9)
    laid_out(fig)
    return fig
