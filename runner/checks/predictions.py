"""Evidence about the trained model's predictions (report figures, not pass/fail verdicts).

Recipe stage 2: "visualise prediction dynamics" (a fixed set of validation examples, their
predicted class probabilities over training: they should settle, not jitter or collapse)
and stage 1's "look at the mispredictions and highest-loss examples": a confusion matrix
and the top-loss validation images with true/predicted labels.
"""

from __future__ import annotations

from typing import List, Optional, Sequence

import torch

from runner.checks.figures import denormalise, image_grid, laid_out, plt


def fixed_examples(targets: torch.Tensor, num_classes: int, k: int = 8) -> List[int]:
    """k validation indices, one per class in turn (first occurrences), so every class shows."""
    picked: List[int] = []
    per_class = [torch.nonzero(targets == c).flatten().tolist() for c in range(num_classes)]
    depth = 0
    while len(picked) < k and any(len(p) > depth for p in per_class):
        for p in per_class:
            if len(p) > depth and len(picked) < k:
                picked.append(p[depth])
        depth += 1
    return picked


def prediction_dynamics(
    epochs: Sequence[int],
    probs: Sequence[torch.Tensor],
    targets: torch.Tensor,
    indices: Sequence[int],
    class_names: Optional[Sequence[str]] = None,
    max_lines: int = 6,
):
    """One panel per fixed example: its predicted class probabilities at every epoch.

    `probs[e]` is [len(indices), C], the softmax outputs for `indices` after epoch
    `epochs[e]`. The true class is drawn thick and green, the final wrong prediction (if any)
    red, and the other classes that ever came near the top thin grey (at most `max_lines`
    lines per panel, so 1000 classes stay readable).
    """
    n = len(indices)
    ncol = min(4, n)
    nrow = (n + ncol - 1) // ncol
    fig, axes = plt.subplots(
        nrow, ncol, figsize=(3.1 * ncol, 2.3 * nrow), squeeze=False, sharex=True, sharey=True
    )
    P = torch.stack([p.float().cpu() for p in probs])  # [E, n, C]
    C = P.shape[-1]
    names = list(class_names) if class_names else [str(c) for c in range(C)]
    for k, idx in enumerate(indices):
        ax = axes[k // ncol][k % ncol]
        t = int(targets[idx])
        final = int(P[-1, k].argmax())
        peak = P[:, k].amax(0)
        peak[t] = -1.0
        others = peak.topk(min(max_lines - 1, C - 1)).indices.tolist()
        for c in others:
            colour = "#cf222e" if c == final else "#aaaaaa"
            ax.plot(epochs, P[:, k, c].numpy(), color=colour, lw=1.6 if c == final else 1.0)
        ax.plot(epochs, P[:, k, t].numpy(), color="#1a7f37", lw=2.4)
        ax.set_title(
            f"val #{idx}: true {names[t]}, pred {names[final]}",
            fontsize=8,
            color="black" if final == t else "#cf222e",
        )
        ax.set_ylim(-0.02, 1.02)
    for k in range(n, nrow * ncol):
        axes[k // ncol][k % ncol].set_axis_off()
    for ax in axes[-1]:
        ax.set_xlabel("epoch")
    for row in axes:
        row[0].set_ylabel("predicted prob.")
    fig.suptitle(
        "Prediction dynamics: fixed validation examples (green = true class, "
        "red = final wrong prediction)",
        fontsize=10,
    )
    laid_out(fig)
    return fig


def confusion(logits: torch.Tensor, targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """[C, C] counts, rows = true class, columns = predicted class."""
    from runner.metrics import confusion_counts

    return confusion_counts(targets, logits.argmax(1), num_classes)


def confusion_figure(cm: torch.Tensor, class_names: Optional[Sequence[str]] = None):
    C = cm.shape[0]
    names = list(class_names) if class_names else [str(c) for c in range(C)]
    size = min(12.0, 2.5 + 0.45 * C)
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    im = ax.imshow(cm.numpy(), cmap="Blues")
    if C <= 30:
        thresh = float(cm.max()) / 2 if cm.numel() else 0
        for i in range(C):
            for j in range(C):
                v = int(cm[i, j])
                if v:
                    ax.text(
                        j,
                        i,
                        str(v),
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if v > thresh else "black",
                    )
        ax.set_xticks(range(C), names, rotation=90 if C > 10 else 0, fontsize=7)
        ax.set_yticks(range(C), names, fontsize=7)
    acc = float(cm.diag().sum()) / max(int(cm.sum()), 1)
    ax.set(
        xlabel="predicted class",
        ylabel="true class",
        title=f"Confusion matrix, validation set ({int(cm.sum())} images, acc {100 * acc:.2f}%)",
    )
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="images")
    laid_out(fig)
    return fig


def top_losses(logits: torch.Tensor, targets: torch.Tensor, k: int = 16):
    """Indices and per-example losses of the k highest-loss validation examples."""
    losses = torch.nn.functional.cross_entropy(logits.float(), targets.long(), reduction="none")
    vals, idx = losses.topk(min(k, len(losses)))
    return idx.tolist(), vals.tolist()


def top_loss_figure(
    images: torch.Tensor,
    mean,
    std,
    indices: Sequence[int],
    losses: Sequence[float],
    logits: torch.Tensor,
    targets: torch.Tensor,
    class_names: Optional[Sequence[str]] = None,
):
    """The top-loss validation images (de-normalised) captioned true/predicted (p) and loss."""
    names = list(class_names) if class_names else [str(c) for c in range(logits.shape[1])]
    probs = logits.float().softmax(1)
    titles, colours = [], []
    for i, loss in zip(indices, losses):
        t, p = int(targets[i]), int(probs[i].argmax())
        titles.append(f"{names[t]}->{names[p]} {float(probs[i, p]):.2f}\nloss {loss:.2f}")
        colours.append("#cf222e" if p != t else "black")
    return image_grid(
        denormalise(images, mean, std),
        titles,
        "Top-loss validation examples (true -> predicted, its probability; loss)",
        ncol=8,
        title_colors=colours,
    )
