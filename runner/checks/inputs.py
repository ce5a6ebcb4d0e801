"""input.stats: "visualise just before the net" - the exact (x, y) that go into model(x).

Recipe stage 2: decode and show the tensors after every transform, with their statistics.
Normalised inputs sit within a few units of zero; raw 0-255 pixels, a constant batch or a
NaN are preprocessing bugs that training would hide.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

from runner.checks import Verdict, skip


def input_stats(
    x: torch.Tensor,
    y: torch.Tensor,
    mean: Sequence[float] = (0.0,),
    std: Sequence[float] = (1.0,),
    class_names: Optional[Sequence[str]] = None,
    max_abs_warn: float = 10.0,
    max_abs_fail: float = 50.0,
    show: int = 32,
) -> Verdict:
    """Per-channel mean/std/min/max of the batch x (as fed to the model) and an image grid.

    Fail on NaN/Inf, a constant batch, or |x| > `max_abs_fail` (unscaled 0-255 pixels); warn
    on |x| > `max_abs_warn`, a constant channel, or channel means/stds far from a normalised
    range. `mean`/`std` are the normalisation the pipeline applied, used only to de-normalise
    the grid for display.
    """
    name = "input.stats"
    if x.numel() == 0:
        return skip(name, "empty batch")
    xf = x.detach().float().cpu()
    C = xf.shape[1] if xf.dim() >= 2 else 1
    flat = xf.transpose(0, 1).reshape(C, -1) if xf.dim() >= 2 else xf.reshape(1, -1)
    finite = torch.isfinite(flat)
    n_bad = int((~finite).sum())
    rows = []
    for c in range(C):
        v = flat[c][finite[c]]
        rows.append(
            {
                "channel": c,
                "mean": float(v.mean()) if v.numel() else math.nan,
                "std": float(v.std()) if v.numel() > 1 else 0.0,
                "min": float(v.min()) if v.numel() else math.nan,
                "max": float(v.max()) if v.numel() else math.nan,
            }
        )
    max_abs = max(
        (max(abs(r["min"]), abs(r["max"])) for r in rows if math.isfinite(r["min"])),
        default=math.nan,
    )
    stats = "; ".join(
        f"ch{r['channel']} mean {r['mean']:.3f} std {r['std']:.3f} "
        f"min {r['min']:.3f} max {r['max']:.3f}"
        for r in rows
    )
    details = {
        "shape": list(x.shape),
        "dtype": str(x.dtype),
        "channels": rows,
        "nonfinite": n_bad,
        "labels": [int(v) for v in y[:show].tolist()],
    }
    grid = _grid(xf, y, mean, std, class_names, show)
    figures = {"grid": grid} if grid is not None else {}
    expected = f"finite, not constant, |x| <= {max_abs_warn:g} (normalised)"
    head = f"x {tuple(x.shape)} {str(x.dtype).replace('torch.', '')}: "

    def verdict(status, why):
        return Verdict(
            name,
            status,
            value=max_abs,
            expected=expected,
            details=details,
            figures=figures,
            message=head + (f"{why}. " if why else "") + stats,
        )

    if n_bad:
        return verdict("fail", f"{n_bad} NaN/Inf value(s) in the inputs")
    spread = float(flat.max() - flat.min())
    if spread == 0.0:
        return verdict(
            "fail", f"every input value is {float(flat[0, 0]):.4g}: the batch is constant"
        )
    if max_abs > max_abs_fail:
        return verdict(
            "fail",
            f"values reach {max_abs:.4g}: inputs look unscaled (0-255 pixels "
            "not divided by 255, or normalised twice the wrong way)",
        )
    warns = []
    if max_abs > max_abs_warn:
        warns.append(
            f"values reach {max_abs:.4g}, more than {max_abs_warn:g}: check scaling/normalisation"
        )
    const = [r["channel"] for r in rows if r["std"] == 0.0]
    if const:
        warns.append(f"channel(s) {const} are constant")
    off = [r["channel"] for r in rows if r["std"] > 0 and (abs(r["mean"]) > 3 or r["std"] > 5)]
    if off:
        warns.append(f"channel(s) {off} are far from normalised (|mean| > 3 or std > 5)")
    if warns:
        return verdict("warn", "; ".join(warns))
    return verdict("pass", "")


def _grid(xf: torch.Tensor, y: torch.Tensor, mean, std, class_names, show: int):
    from runner.checks.figures import denormalise, image_grid

    if xf.dim() != 4:
        return None
    imgs = denormalise(torch.nan_to_num(xf[:show]), mean, std)
    labels = [int(v) for v in y[:show].tolist()]
    titles = [class_names[v] if class_names and v < len(class_names) else str(v) for v in labels]
    return image_grid(
        imgs,
        titles,
        f"Exact inputs to model(x), de-normalised (first {len(imgs)} "
        f"of the batch; caption = label)",
    )
