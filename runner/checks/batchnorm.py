"""eval.bn_stats: BatchNorm's running statistics describe the batches the model trained on.

Recipe stage 2 ("add significant digits to your eval"; "verify ... train/eval mode"): a
BatchNorm layer normalises with the batch's statistics in training and with its running
estimates in evaluation. When those never updated (momentum 0, the layer kept in eval mode
while the model trained, `reset_running_stats()` after training) or come from batches too
small to estimate them (batch size 2), the model that is evaluated is not the one that was
trained: val accuracy then measures the bug.

After training, a few training batches (at the training batch size) go through the model
with only its BatchNorm layers in train mode (dropout stays off), then through the model in
eval mode. Compared: per layer, the batch statistics of its input against its running
mean/var (in units of the batch std) and how much they jitter from batch to batch; for the
model, the predictions and the loss in the two modes on the same examples.

Pure: a model and tensors in, a Verdict out; the model's buffers, modes and the RNG are as
they were (probes.preserved).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.modules.batchnorm import _BatchNorm

from runner.checks import Verdict, skip
from runner.checks.probes import preserved


def _at_init(m: _BatchNorm) -> bool:
    """Running stats still at their initial values (mean 0, var 1) or never counted a batch."""
    nbt = getattr(m, "num_batches_tracked", None)
    if nbt is not None and int(nbt) == 0:
        return True
    return bool((m.running_mean == 0).all() and (m.running_var == 1).all())


def layer_stats(means: torch.Tensor, vars_: torch.Tensor, m: _BatchNorm) -> dict[str, float]:
    """One layer: batch means/vars [K batches, C] against its running mean/var.

    mismatch: median over channels of the distance between the running estimate and the
    pooled batch statistics (mean shift in batch stds, and |log std ratio|); noise: median
    over channels of how far one batch's mean strays from the pooled mean (in stds)."""
    eps = float(m.eps)
    mu = means.mean(0)
    var = vars_.mean(0) + means.var(0, unbiased=False)
    sd = (var + eps).sqrt()
    rm, rv = m.running_mean.detach().float().cpu(), m.running_var.detach().float().cpu()
    shift = (mu - rm) / sd
    log_std = 0.5 * ((rv + eps) / (var + eps)).log()
    mismatch = (shift.pow(2) + log_std.pow(2)).sqrt()
    noise = ((means - mu).pow(2).mean(0).sqrt() / sd) if len(means) > 1 else torch.zeros_like(mu)
    return {
        "mismatch": float(mismatch.median()),
        "mean_shift": float(shift.abs().median()),
        "log_std_ratio": float(log_std.median()),
        "batch_noise": float(noise.median()),
    }


def bn_stats(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    max_tv: float = 0.25,
    warn_tv: float = 0.2,
    max_mismatch: float = 0.5,
    max_batch_noise: float = 0.3,
    small_batch_tv: float = 0.1,
    min_steps: int = 30,
    min_values: int = 8,
) -> Verdict:
    """eval.bn_stats: train-mode and eval-mode BatchNorm agree on the same training examples.

    `x`, `y`: training examples; they go through the model in batches of `batch_size` (the
    run's: the statistics it trained with) with only the BatchNorm layers in train mode,
    then in eval mode. Fail when a layer's running stats never moved from init (momentum 0,
    kept in eval mode, reset) or when the two modes' predicted distributions differ by more
    than `max_tv` (mean total variation); warn above `warn_tv` or when a layer's running
    stats stand more than `max_mismatch` away from its batch statistics. The message names
    the worst layers, and blames small batches when one batch's mean strays more than
    `max_batch_noise` stds from the others' (fail when the modes also differ by more than
    `small_batch_tv`). A run whose layers tracked fewer than `min_steps` batches lags by
    construction (an average with momentum 0.1 still holds 0.9^steps of its init): it is
    not judged on that (pass, with a note), unless the stats never moved at all, or warns
    when its batches are too small. A layer that normalises fewer than `min_values` values
    per channel in a batch (batch size x its feature map's pixels: a batch of 2 on a 1x1 map
    gives 2, which BatchNorm turns into -1 and +1 whatever they were) fails by construction,
    however the two modes happen to agree. Skip without BatchNorm (or running stats).
    """
    name = "eval.bn_stats"
    bns = [(n, m) for n, m in model.named_modules() if isinstance(m, _BatchNorm)]
    if not bns:
        return skip(name, "the model has no BatchNorm layers: nothing to compare")
    tracked = [(n, m) for n, m in bns if m.track_running_stats and m.running_mean is not None]
    if not tracked:
        return skip(
            name,
            f"its {len(bns)} BatchNorm layer(s) keep no running statistics "
            "(track_running_stats=False): eval mode normalises with the batch too",
        )
    if len(x) < 2:
        return skip(name, "fewer than 2 training examples: no batch statistics")
    bs = max(2, min(int(batch_size), len(x)))
    n_use = len(x) - len(x) % bs
    x, y = x[:n_use], y[:n_use]
    never = [n or type(m).__name__ for n, m in tracked if _at_init(m)]
    # an exponential average still carries (1 - momentum)^steps of its init: a short run's
    # running stats lag, which is the run's length, not a bug (counted in steps, not in
    # 1 / momentum: a momentum of 0.001 is the bug, not an excuse)
    lagging = [
        n
        for n, m in tracked
        if 0 < int(getattr(m, "num_batches_tracked", None) or min_steps) < min_steps
    ]

    captured: dict[str, list] = {n: [] for n, _ in tracked}
    values: dict[str, int] = {}  # the fewest values per channel a layer normalised in a batch
    record = [True]

    def hook_for(n):
        def hook(_m, inputs):
            if record[0]:
                t = inputs[0].detach().float()
                dims = [d for d in range(t.dim()) if d != 1]
                captured[n].append((t.mean(dims).cpu(), t.var(dims, unbiased=False).cpu()))
                values[n] = min(values.get(n, t.numel()), t.numel() // max(1, t.shape[1]))

        return hook

    with preserved(model), torch.no_grad():
        handles = [m.register_forward_pre_hook(hook_for(n)) for n, m in tracked]
        try:
            model.eval()
            for _, m in bns:
                m.train()  # batch statistics, as in training; dropout and the rest stay off
            lt = torch.cat([model(xb).float() for xb in x.split(bs)])
            record[0] = False
            model.eval()
            # eval mode treats each example alone: one pass per 64 is the same, and cheaper
            le = torch.cat([model(xb).float() for xb in x.split(max(bs, 64))])
        finally:
            for h in handles:
                h.remove()
    pt, pe = lt.softmax(1), le.softmax(1)
    tv = float(0.5 * (pt - pe).abs().sum(1).mean())
    agree = float((lt.argmax(1) == le.argmax(1)).float().mean())
    loss_t, loss_e = float(F.cross_entropy(lt, y)), float(F.cross_entropy(le, y))
    layers = {}
    for n, m in tracked:
        if captured[n]:
            means = torch.stack([a for a, _ in captured[n]])
            vars_ = torch.stack([b for _, b in captured[n]])
            layers[n] = {**layer_stats(means, vars_, m), "at_init": _at_init(m)}
    worst = sorted(layers, key=lambda k: -layers[k]["mismatch"])
    few = sorted(k for k in layers if values.get(k, min_values) < min_values)
    noisy = [k for k in layers if layers[k]["batch_noise"] > max_batch_noise or k in few]
    off = [k for k in worst if layers[k]["mismatch"] > max_mismatch]
    details: dict[str, Any] = {
        "examples": n_use,
        "batch_size": bs,
        "layers": len(tracked),
        "train_mode_loss": loss_t,
        "eval_mode_loss": loss_e,
        "agreement": agree,
        "total_variation": tv,
        "never_updated": never,
        "lagging": lagging,
        "values_per_channel": {k: values[k] for k in layers if k in values},
        "too_few_values": few,
        "per_layer": {k: {a: round(b, 4) for a, b in v.items()} for k, v in layers.items()},
    }
    expected = (
        f"train- and eval-mode predictions on the same examples within TV {warn_tv:g}; "
        f"running stats within {max_mismatch:g} std of the batches'"
    )
    modes = (
        f"on {n_use} training examples in batches of {bs}, train-mode BatchNorm vs eval mode: "
        f"predictions agree on {agree:.0%}, mean TV {tv:.3f}, loss {loss_t:.4f} -> {loss_e:.4f}"
    )

    def named(ks):
        shown = ", ".join(
            f"{k or '<model>'} ({layers[k]['mismatch']:.2f})" for k in ks[:4] if k in layers
        )
        return shown + (f" and {len(ks) - 4} more" if len(ks) > 4 else "")

    causes = []
    if never:
        causes.append(
            f"the running statistics of {len(never)} of {len(tracked)} BatchNorm layer(s) "
            f"never moved from init (mean 0, var 1), e.g. {never[:3]}: the layers were kept "
            "in eval mode while training (frozen BN, train() overridden, model.eval() before "
            "the loop), momentum=0, or reset_running_stats() after training; let them update "
            "in train mode (momentum ~0.1)"
        )
    if noisy:
        where = (
            f"{len(few)} layer(s) normalise only {min(values[k] for k in few)} value(s) per "
            f"channel in a batch ({', '.join(k or '<model>' for k in few[:3])}: batch x "
            "feature-map pixels), "
            if few
            else ""
        )
        causes.append(
            f"batches of {bs} are too small for BatchNorm: {where}one batch's mean strays "
            f"{max(layers[k]['batch_noise'] for k in noisy):.2f} std from the others' in "
            f"{len(noisy)} layer(s) ({', '.join(k or '<model>' for k in noisy[:3])}), so the "
            "running estimates do not match what each training batch saw; use a larger "
            "trainer.batch_size, or GroupNorm/LayerNorm, which do not depend on the batch"
        )
    if off and not never:
        causes.append(
            f"running stats stand far from the batch statistics in {named(off)} (median "
            "distance in batch stds): they lag the weights (momentum too small, too few "
            "steps) or were estimated on other data; recompute them on training batches"
        )
    if not causes and tv > warn_tv:
        causes.append(
            f"the running stats lag the weights (worst layers {named(worst)}): too few steps "
            "at the final learning rate, or a momentum too small; train longer or at a lower "
            "final learning rate, or recompute the stats on training batches before evaluating"
        )
    short = ""
    if lagging and not never:
        steps = min(int(m.num_batches_tracked) for n, m in tracked if n in lagging)
        short = (
            f"{len(lagging)} layer(s) tracked only {steps} batches (< {min_steps}): their "
            "running stats still carry part of their init, so eval-mode numbers lag; "
            "not judged before a longer run"
        )
        causes.append(short)
    figures = {}
    if never or few or (not lagging and (tv > max_tv or (noisy and tv > small_batch_tv))):
        status = "fail"
    elif lagging and not never:
        status = "warn" if noisy else "pass"
    elif tv > warn_tv or off or noisy:
        status = "warn"
    else:
        status = "pass"
    if status != "pass" and layers:
        figures["layers"] = _figure(layers, max_mismatch)
    if status == "pass" and short:
        message = f"{modes}; {short}"
    elif status == "pass":
        message = (
            f"{modes}; the running stats of {len(tracked)} BatchNorm layer(s) match the batch "
            f"statistics (worst {named(worst[:1])})"
        )
    else:
        message = (
            f"{modes}: the evaluated model is not the trained one. "
            + (" ".join(c[0].upper() + c[1:] + "." for c in causes) or "")
        ).strip()
    return Verdict(
        name,
        status,
        value=round(tv, 4),
        expected=expected,
        message=message,
        details=details,
        figures=figures,
    )


def _figure(layers: dict[str, dict], max_mismatch: float):
    """Per BatchNorm layer: how far its running stats stand from the batches' (and jitter)."""
    import matplotlib.pyplot as plt

    from runner.plots import laid_out  # (importing it selects the Agg backend)

    names = list(layers)
    k = range(len(names))
    fig, ax = plt.subplots(figsize=(max(4.0, 0.35 * len(names) + 2), 3.2))
    ax.bar(
        [i - 0.2 for i in k], [layers[n]["mismatch"] for n in names], 0.4, label="running vs batch"
    )
    ax.bar(
        [i + 0.2 for i in k], [layers[n]["batch_noise"] for n in names], 0.4, label="batch-to-batch"
    )
    ax.axhline(max_mismatch, color="red", lw=0.8, ls="--")
    ax.set_xticks(list(k))
    ax.set_xticklabels([n or "<model>" for n in names], rotation=90, fontsize=6)
    ax.set_ylabel("median distance (batch stds)")
    ax.set_title("BatchNorm: running statistics vs training batches", fontsize=9)
    ax.legend(fontsize=7)
    laid_out(fig)
    return fig
