"""input.split_consistency: train, val and test are fed through the same preprocessing.

Recipe stage 2 ("visualise just before the net"): input.stats looks at one training batch;
a bug in only one split's pipeline (val left unnormalised or scaled to 0-255, another
mean/std, BGR instead of RGB, another size or resize filter) slips past it, trains fine and
shows up as a val score that means nothing. This check compares what the loaders produce
for each split: shape, per-channel mean/std/min/max (de-normalised with the pipeline's
mean/std, in units of train's std) and a sharpness figure (the share of an image's variance
in pixel-to-pixel differences; blur lowers it, the scale does not change it).

The reference is the training split read through the *evaluation* transform, so train-only
augmentation does not count as a difference; the batches the loop actually feeds (with any
augmentation) are compared with it too, with loose thresholds (crops, flips, colour jitter
and RandAugment move statistics; a train pipeline that skips normalisation moves them more).

Pure: tensors in, a Verdict out (a figure of the splits side by side when something differs).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from runner.checks import Verdict, skip


def view_stats(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> dict[str, Any]:
    """Per-channel statistics of a batch [N, C, H, W], de-normalised with (mean, std)."""
    x = _raw(x, mean, std)
    c = x.shape[1]
    flat = x.transpose(0, 1).reshape(c, -1)
    finite = torch.isfinite(flat).all(1)
    flat = torch.nan_to_num(flat, nan=0.0, posinf=0.0, neginf=0.0)
    q = torch.quantile(
        flat[:, :: max(1, flat.shape[1] // 20000)], torch.tensor([0.05, 0.5, 0.95]), dim=1
    )
    pooled_sd = flat.std(1).clamp_min(1e-12)
    xi = torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)
    n = len(x)
    img_means = xi.mean(dim=(2, 3))
    img_stds = xi.flatten(2).std(2) if xi[0, 0].numel() > 1 else torch.zeros_like(img_means)
    sharp = per_image_sharpness(xi)
    sharp = sharp[torch.isfinite(sharp)]
    return {
        "n": n,
        # how much single images vary (relative to the pooled std): what sets the sampling
        # error of the split's statistics, so a split of 5 images is judged more loosely
        "img_mean_rel_sd": (img_means.std(0) / pooled_sd).tolist() if n > 1 else [0.0] * c,
        "img_std_rel_sd": (img_stds.std(0) / pooled_sd).tolist() if n > 1 else [0.0] * c,
        "sharpness_rel_sd": float(sharp.std() / sharp.mean().clamp_min(1e-12))
        if len(sharp) > 1
        else 0.0,
        "shape": list(x.shape[1:]),
        "mean": flat.mean(1).tolist(),
        "std": flat.std(1).tolist(),
        "min": flat.min(1).values.tolist(),
        "max": flat.max(1).values.tolist(),
        "q05": q[0].tolist(),
        "median": q[1].tolist(),
        "q95": q[2].tolist(),
        "sharpness": sharpness(x).tolist(),
        "finite": bool(finite.all()),
    }


def sharpness(x: torch.Tensor) -> torch.Tensor:
    """Per channel: mean over images of E[(neighbour difference)^2] / (2 var), i.e. one minus
    the lag-1 autocorrelation. Blur lowers it; scale and offset leave it unchanged."""
    if x.dim() != 4 or x.shape[-1] < 2 or x.shape[-2] < 2:
        return torch.full((x.shape[1] if x.dim() > 1 else 1,), math.nan)
    x = torch.nan_to_num(x.float())
    var = x.var(dim=(2, 3))
    dh = (x[..., 1:] - x[..., :-1]).pow(2).mean(dim=(2, 3))
    dv = (x[..., 1:, :] - x[..., :-1, :]).pow(2).mean(dim=(2, 3))
    r = (dh + dv) / 4 / var.clamp_min(1e-12)
    ok = var > 1e-8
    num = torch.where(ok, r, torch.zeros_like(r)).sum(0)
    return num / ok.sum(0).clamp_min(1)


def per_image_sharpness(x: torch.Tensor) -> torch.Tensor:
    """[N]: each image's sharpness (as `sharpness`), averaged over its non-constant channels."""
    if x.dim() != 4 or x.shape[-1] < 2 or x.shape[-2] < 2:
        return torch.full((len(x),), math.nan)
    var = x.var(dim=(2, 3))
    dh = (x[..., 1:] - x[..., :-1]).pow(2).mean(dim=(2, 3))
    dv = (x[..., 1:, :] - x[..., :-1, :]).pow(2).mean(dim=(2, 3))
    r = (dh + dv) / 4 / var.clamp_min(1e-12)
    ok = var > 1e-8
    return torch.where(ok, r, torch.zeros_like(r)).sum(1) / ok.sum(1).clamp_min(1)


def _raw(x: torch.Tensor, mean, std) -> torch.Tensor:
    x = x.detach().float().cpu()
    if x.dim() == 3:
        x = x.unsqueeze(1)
    c = x.shape[1]
    m, s = _per_channel(mean, c), _per_channel(std, c)
    return x * torch.tensor(s).view(1, c, 1, 1) + torch.tensor(m).view(1, c, 1, 1)


def _per_channel(v: Sequence[float], c: int) -> list[float]:
    v = [float(a) for a in v] or [0.0]
    return (v * c)[:c] if len(v) != c else v


def _features(st: dict[str, Any], c: int) -> torch.Tensor:
    """[C, 5] location/spread features of each channel (for the channel-order test)."""
    return torch.tensor(
        [[st[k][i] for k in ("mean", "q05", "median", "q95", "std")] for i in range(c)]
    )


def compare(
    ref: dict[str, Any],
    other: dict[str, Any],
    max_shift: float,
    max_std_ratio: float,
    max_sharpness_ratio: float | None,
    loose: bool = False,
) -> dict[str, Any]:
    """How `other` differs from `ref`: each problem in words, and the numbers behind them.
    Severe: far beyond the thresholds, or (`loose` thresholds, already far) beyond them."""
    out: dict[str, Any] = {"problems": [], "severe": False}
    if ref["shape"] != other["shape"]:
        out["problems"].append(
            f"tensors are {'x'.join(map(str, other['shape']))} but train's are "
            f"{'x'.join(map(str, ref['shape']))} (another size or channel count)"
        )
        out["severe"] = True
        if ref["shape"][0] != other["shape"][0]:
            return out
    if not other["finite"]:
        out["problems"].append("holds NaN/Inf values")
        out["severe"] = True
    c = len(ref["mean"])
    sd = [max(s, 1e-6) for s in ref["std"]]
    shift = [(other["mean"][i] - ref["mean"][i]) / sd[i] for i in range(c)]
    ratio = [max(other["std"][i], 1e-12) / sd[i] for i in range(c)]
    # two standard errors of each figure (from how much single images vary) widen the
    # thresholds: they matter for a split of a few images, hardly for a few hundred
    nr, no = max(ref["n"], 1), max(other["n"], 1)

    def se(key, i=None):
        a, b = (ref[key], other[key]) if i is None else (ref[key][i], other[key][i])
        return math.sqrt(a * a / nr + b * b / no)

    tol_shift = max_shift + 2 * max(se("img_mean_rel_sd", i) for i in range(c))
    tol_ratio = max_std_ratio * math.exp(2 * max(se("img_std_rel_sd", i) for i in range(c)))
    max_shift, max_std_ratio = tol_shift, tol_ratio
    out["tolerance"] = {"shift": round(tol_shift, 4), "std_ratio": round(tol_ratio, 4)}
    if max_sharpness_ratio is not None:
        max_sharpness_ratio = max_sharpness_ratio * math.exp(2 * se("sharpness_rel_sd"))
    out.update(shift=[round(v, 4) for v in shift], std_ratio=[round(v, 4) for v in ratio])
    if loose:
        # augmentation (colour ops, equalize, invert) can move one channel far; a pipeline
        # bug (no Normalize, no /255) moves them all: judge the channels' average
        shift = [sum(shift) / c]
        ratio = [math.exp(sum(math.log(r) for r in ratio) / c)]
        c = 1
    # channel order: does a permutation of the other's channels explain the difference?
    if 1 < c <= 4:
        fr, fo = _features(ref, c), _features(other, c)
        scale = torch.tensor(sd).view(c, 1)

        def cost(p):
            return float((((fo[list(p)] - fr) / scale) ** 2).sum())

        ident = tuple(range(c))
        best = min(itertools.permutations(range(c)), key=cost)
        if best != ident and cost(ident) > 4 * max_shift**2 and cost(best) < cost(ident) / 4:
            order = ", ".join(f"ch{k}<-ch{best[k]}" for k in range(c) if best[k] != k)
            out["problems"].append(
                f"channels come in another order (matches train with {order}: RGB vs BGR?)"
            )
            out["severe"] = True
            out["channel_order"] = list(best)
            return out
    scaled = [i for i in range(c) if not (1 / max_std_ratio <= ratio[i] <= max_std_ratio)]
    shifted = [i for i in range(c) if abs(shift[i]) > max_shift]
    if scaled:
        r = ratio[scaled[0]]
        hint = (
            "raw 0-255 values where train has 0-1 (a missing /255 or ToTensor)"
            if r > 100
            else "pixels /255 twice, or 0-1 where train has 0-255"
            if r < 0.02
            else "normalised (x - mean) / std in one split only, or with other mean/std"
        )
        which = "the channels' average" if loose else f"channel(s) {scaled}"
        out["problems"].append(
            f"std of {which} is {_fmt([ratio[i] for i in scaled])} x train's: {hint}"
        )
        out["severe"] |= any(
            not (max_std_ratio**-2 <= ratio[i] <= max_std_ratio**2) for i in scaled
        )
    if shifted:
        which = "the channels' average" if loose else f"channel(s) {shifted}"
        out["problems"].append(
            f"mean of {which} is {_fmt([shift[i] for i in shifted])} train "
            "std(s) away from train's: another mean subtracted, or none"
        )
        out["severe"] |= any(abs(shift[i]) > 2 * max_shift for i in shifted)
    if max_sharpness_ratio is not None and ref["shape"] == other["shape"] and not loose:
        rs, os_ = ref["sharpness"], other["sharpness"]
        sr = [os_[i] / rs[i] if rs[i] > 0 else math.nan for i in range(c)]
        out["sharpness_ratio"] = [round(v, 4) for v in sr]
        mean_sr = sum(sr) / len(sr)
        if math.isfinite(mean_sr) and not (
            1 / max_sharpness_ratio <= mean_sr <= max_sharpness_ratio
        ):
            what = "blurrier" if mean_sr < 1 else "sharper (blockier)"
            out["problems"].append(
                f"{what} than train (sharpness {mean_sr:.2f} x train's): another resize "
                "(size, then resized back) or another interpolation filter"
            )
            out["severe"] |= not (max_sharpness_ratio**-1.8 <= mean_sr <= max_sharpness_ratio**1.8)
    out["severe"] |= loose and bool(out["problems"])
    return out


def _fmt(xs) -> str:
    return "[" + ", ".join(f"{v:.3g}" for v in xs) + "]"


def split_consistency(
    splits: Mapping[str, torch.Tensor],
    fed_train: torch.Tensor | None = None,
    mean: Sequence[float] = (0.0,),
    std: Sequence[float] = (1.0,),
    max_shift: float = 0.35,
    max_std_ratio: float = 1.3,
    max_sharpness_ratio: float = 1.25,
    fed_max_shift: float = 1.0,
    fed_max_std_ratio: float = 2.0,
) -> Verdict:
    """input.split_consistency: the tensors each split feeds the net come from one pipeline.

    `splits`: {"train": train examples read through the evaluation transform, "val": ...,
    "test": ...} as their loaders produce them (normalised); `fed_train`: training batches
    as the loop feeds them (augmented). `mean`/`std`: the normalisation the pipeline applies,
    used to de-normalise every split the same way. Against train, a split whose shape differs,
    whose channel means move more than `max_shift` train stds, whose stds differ by more than
    `max_std_ratio` x, whose channels match train only reordered, or whose sharpness differs
    by more than `max_sharpness_ratio` x, is named (fail when far off, else warn). `fed_train`
    is held to the looser `fed_max_*` (augmentation moves statistics), with no sharpness
    test (crops resize, random erasing adds noise).
    """
    name = "input.split_consistency"
    if "train" not in splits or not len(splits["train"]):
        return skip(name, "no training examples to compare the other splits with")
    ref = view_stats(splits["train"], mean, std)
    details: dict[str, Any] = {"train": ref}
    found, severe = [], False
    for split, x in splits.items():
        if split == "train" or x is None or not len(x):
            continue
        st = view_stats(x, mean, std)
        diff = compare(ref, st, max_shift, max_std_ratio, max_sharpness_ratio)
        details[split] = {**st, **{k: v for k, v in diff.items() if k != "problems"}}
        if diff["problems"]:
            found.append((split, diff["problems"]))
            severe |= diff["severe"]
    if fed_train is not None and len(fed_train):
        st = view_stats(fed_train, mean, std)
        diff = compare(ref, st, fed_max_shift, fed_max_std_ratio, None, loose=True)
        details["train (as fed, augmented)"] = {
            **st,
            **{k: v for k, v in diff.items() if k != "problems"},
        }
        if diff["problems"]:
            found.append(("train as the loop feeds it (vs its eval transform)", diff["problems"]))
            severe |= diff["severe"]
    compared = [s for s in splits if s != "train"]
    expected = (
        f"every split as train's eval read: same shape; channel means within {max_shift:g} "
        f"train std, stds within {max_std_ratio:g}x, sharpness within {max_sharpness_ratio:g}x"
    )
    n = {s: len(x) for s, x in splits.items() if x is not None}
    if not found:
        return Verdict(
            name,
            "pass",
            value=0,
            expected=expected,
            message=f"{', '.join(compared) or 'no other split'} match train (through the eval "
            f"transform) in shape, scale, normalisation, channel order and sharpness "
            f"({', '.join(f'{k} {v}' for k, v in n.items())} examples)"
            + (
                "; the augmented training batches stay within augmentation's range"
                if fed_train is not None
                else ""
            ),
            details=details,
        )
    details["differences"] = {s: p for s, p in found}
    figures = {}
    fig = _figure(splits, fed_train, mean, std)
    if fig is not None:
        figures["splits"] = fig
    text = "; ".join(f"{s}: " + ", ".join(p) for s, p in found)
    return Verdict(
        name,
        "fail" if severe else "warn",
        value=len(found),
        expected=expected,
        message=f"the splits are not preprocessed alike. {text}. Build one eval transform "
        "(resize, crop, ToTensor, Normalize with train's mean/std, same channel order) and "
        "use it for val and test; keep only random augmentation train-only",
        details=details,
        figures=figures,
    )


def _figure(splits, fed_train, mean, std, per: int = 8):
    """The first examples of each split side by side, all de-normalised with the same
    mean/std: a split that is scaled, unnormalised, reordered or blurred looks it."""
    from runner.checks.figures import image_grid

    rows = [(s, x) for s, x in splits.items() if x is not None and len(x) and x.dim() == 4]
    if fed_train is not None and fed_train.dim() == 4:
        rows.append(("train fed", fed_train))
    shape = rows[0][1].shape[1:] if rows else None
    imgs, titles = [], []
    for s, x in rows:
        x = _raw(torch.nan_to_num(x[:per]), mean, std).clamp(0, 1)
        if x.shape[1:] != shape:
            x = torch.nn.functional.interpolate(x, size=tuple(shape[1:]), mode="nearest")
            if x.shape[1] != shape[0]:
                x = x[:, :1].expand(-1, shape[0], -1, -1)
        imgs.append(x)
        titles += [s] * len(x)
    if not imgs:
        return None
    return image_grid(
        torch.cat(imgs),
        titles,
        "Each split's inputs, de-normalised with the same mean/std (rows: splits)",
        ncol=per,
    )
