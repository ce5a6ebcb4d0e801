"""aug.label_preserving: the training augmentation keeps every image in its class.

Recipe stage 2 ("visualise just before the net", "verify the data pipeline") and stage 4
(augmentation): a random flip or rotation is only an augmentation when the flipped or rotated
image is still a valid example of the same class. A mirrored 3, a 6 turned into a 9, a
left arrow flipped into a right one, mirrored text: the net is then taught contradictory
labels, training accuracy stalls and nothing raises an error.

Which geometric transforms are applied: read from the training transform (torchvision's
RandomHorizontalFlip / RandomVerticalFlip / RandomRotation / RandomAffine, timm's
RandAugment `Rotate`, as `aug=` builds them with timm's create_transform, or the user's own
dataset's `transform`) and found empirically: the same training example drawn a few times,
a draw that equals a flip or a quarter turn of another draw (`drawn_transforms`) is one,
whatever code did it.

Whether each preserves the label: a cheap linear model (ridge regression on one-hot labels,
on images area-averaged to 16 px) fitted on unaugmented images scores held-out unaugmented
images, and the same images transformed (at the largest rotation the pipeline draws, both
ways). When the transform keeps the class, the transformed images are still read as their
class (mirror-symmetric classes, colours, textures: the accuracy stays); when it does not,
the model, which has never seen such images, reads them as chance or as another class.
`kept` = (acc transformed - chance) / (acc original - chance); below `min_kept` warns,
naming the classes that break and what they are read as. Pure: tensors in, a Verdict out.
"""

from __future__ import annotations

import math
import re
from typing import Any, Callable, Dict, Optional, Sequence

import numpy as np

from runner.checks import Verdict, skip

NAME = "aug.label_preserving"
# the exact transforms `drawn_transforms` compares draws under
EXACT = ("hflip", "vflip", "rot90", "rot180", "rot270", "transpose")
# timm RandAugment: Rotate's angle is magnitude / 10 * 30 degrees (timm.data.auto_augment)
RAND_ROTATE_PER_MAGNITUDE = 3.0


def transform(x, name: str):
    """[N, C, H, W] tensor under one named transform: EXACT names or "rotate+<deg>"."""
    import torch

    x = torch.as_tensor(x)
    if name == "hflip":
        return x.flip(-1)
    if name == "vflip":
        return x.flip(-2)
    if name in ("rot90", "rot180", "rot270"):
        return torch.rot90(x, int(name[3:]) // 90, (-2, -1))
    if name == "transpose":
        return x.transpose(-2, -1)
    m = re.fullmatch(r"rotate([+-][0-9.]+)", name)
    if m:
        from torchvision.transforms.functional import InterpolationMode, rotate

        return rotate(x.float(), float(m.group(1)), InterpolationMode.BILINEAR)
    raise ValueError(f"unknown transform {name!r}")


def pipeline_transforms(tf, where: str = "the training transform") -> Dict[str, str]:
    """The geometric transforms a (torchvision/timm) transform object applies: name ->
    where it was found ("RandomHorizontalFlip(p=0.5) in aug=..."). Rotations by at most d
    degrees become "rotate+d" and "rotate-d"; a p=0 flip applies nothing."""
    found: Dict[str, str] = {}

    def walk(t) -> None:
        if t is None:
            return
        kids = getattr(t, "transforms", None)
        if isinstance(kids, (list, tuple)):
            for k in kids:
                walk(k)
        kind = type(t).__name__
        p = float(getattr(t, "p", 1.0) or 0.0)
        if kind == "RandomHorizontalFlip" and p > 0:
            found["hflip"] = f"RandomHorizontalFlip(p={p:g}) in {where}"
        elif kind == "RandomVerticalFlip" and p > 0:
            found["vflip"] = f"RandomVerticalFlip(p={p:g}) in {where}"
        elif kind in ("RandomRotation", "RandomAffine"):
            d = max(abs(float(v)) for v in np.ravel(getattr(t, "degrees", 0)))
            if d > 0:
                for s in ("+", "-"):
                    found[f"rotate{s}{d:g}"] = f"{kind}(degrees={d:g}) in {where}"
        for op in getattr(t, "ops", []) or []:  # timm RandAugment / AutoAugment sub-policies
            if getattr(op, "name", "") == "Rotate":
                d = min(30.0, float(getattr(op, "magnitude", 0)) * RAND_ROTATE_PER_MAGNITUDE)
                if d > 0:
                    for s in ("+", "-"):
                        found[f"rotate{s}{d:g}"] = (
                            f"timm RandAugment Rotate (up to {d:g} deg) in {where}"
                        )

    walk(tf)
    return found


def drawn_transforms(
    draw: Callable[[int], Any],
    indices: Sequence[int],
    repeats: int = 4,
    tol: float = 0.05,
    rotation_tol: float = 0.25,
    min_rotated: int = 3,
) -> Dict[str, str]:
    """Flips, quarter turns and rotations seen by drawing each training example `repeats`
    times: two draws that differ, one equal (within `tol` of their difference) to a flip or
    quarter turn of the other, or (within `rotation_tol`: interpolation blurs) to a rotation
    of the other by 10+ degrees, compared inside the inscribed disc, in `min_rotated`
    examples or more (two random crops of a round digit can look like a turn of each other
    by chance: ~1 pair in 200 at this tolerance; a rotating dataset shows it in most). Finds a
    dataset that flips or rotates in its own __getitem__, whatever code does it. Draws
    rotated by up to +-d differ by up to 2d: it is reported as half the widest angle seen."""
    import torch

    found: Dict[str, str] = {}
    widest, rotated = (0.0, -1), set()
    for i in indices:
        draws = [torch.as_tensor(draw(i)).float() for _ in range(repeats)]
        for a_i in range(repeats):
            for b_i in range(a_i + 1, repeats):
                a, b = draws[a_i][None], draws[b_i][None]
                diff = float((a - b).abs().mean())
                if diff <= 1e-6 or a.shape != b.shape:
                    continue
                exact = False
                for name in EXACT:
                    t = transform(a, name)
                    if t.shape == b.shape and float((t - b).abs().mean()) <= tol * diff:
                        found.setdefault(
                            name, f"two draws of training example {i} differ by a {name}"
                        )
                        exact = True
                if not exact and a.shape[-1] == a.shape[-2]:
                    angle = _rotation_between(a[0], b[0], rotation_tol)
                    if angle is not None:
                        rotated.add(i)
                        widest = max(widest, (abs(angle), i))
    if len(rotated) >= min_rotated:
        d = widest[0] / 2
        for s in ("+", "-"):
            found.setdefault(
                f"rotate{s}{d:g}",
                f"draws of training example {widest[1]} differ by a {widest[0]:g} deg rotation",
            )
    return found


def _rotation_between(a, b, tol: float) -> Optional[float]:
    """The angle (degrees, 10..180 either way, 5-degree steps) that rotates [C, S, S] `a`
    onto `b` within `tol` of their difference inside the inscribed disc, or None."""
    import torch
    from torch.nn import functional as F

    angles = torch.arange(-175.0, 181.0, 5.0)
    angles = angles[angles.abs() >= 10]
    t = angles * math.pi / 180
    zero = torch.zeros_like(t)
    mat = torch.stack(
        [torch.stack([t.cos(), -t.sin(), zero], 1), torch.stack([t.sin(), t.cos(), zero], 1)], 1
    )
    c, h, w = a.shape
    grid = F.affine_grid(mat, (len(t), c, h, w), align_corners=False)
    rot = F.grid_sample(a.expand(len(t), c, h, w), grid, align_corners=False)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    disc = ((yy**2 + xx**2) <= 0.8**2).float()
    base = float(((a - b).abs() * disc).sum())
    if base <= 1e-6:
        return None
    err = ((rot - b).abs() * disc).sum((1, 2, 3))
    k = int(err.argmin())
    return float(angles[k]) if float(err[k]) <= tol * base else None


def _features(x, cells: int = 4, bins: int = 6) -> np.ndarray:
    """What the cheap model reads: an 8x8 blurred layout of each image, per 4x4 cell its mean
    colour and a histogram of (unsigned) edge orientations. Coarse on purpose: a small shift
    or a few degrees of rotation barely move these, a mirror or a turn moves the layout and
    the strokes' directions; stripes or textures keep their histogram under a flip."""
    import torch
    from torch.nn import functional as F

    x = torch.as_tensor(x).float()
    n = len(x)
    grey = x.mean(1, keepdim=True)
    layout = F.adaptive_avg_pool2d(F.avg_pool2d(grey, 3, 1, 1, count_include_pad=False), 8)
    colour = F.adaptive_avg_pool2d(x, cells)
    gy, gx = torch.gradient(grey[:, 0], dim=(-2, -1))
    mag = torch.sqrt(gx**2 + gy**2)
    ang = torch.remainder(torch.atan2(gy, gx), math.pi)  # unsigned: edges, not their sign
    b = torch.clamp((ang / math.pi * bins).long(), max=bins - 1)
    hist = torch.zeros(n, bins, *grey.shape[-2:])
    hist.scatter_(1, b[:, None], mag[:, None])
    hist = F.adaptive_avg_pool2d(hist, cells)
    hist = hist / (hist.sum(1, keepdim=True) + 1e-6)
    parts = [layout.reshape(n, -1), colour.reshape(n, -1), hist.reshape(n, -1)]
    return torch.cat(parts, 1).numpy().astype(np.float64)


def _readers(d: int) -> Dict[str, np.ndarray]:
    """Columns of `_features` each cheap reader sees: every feature, the layout alone (shapes,
    strokes: digits, text), colour and edge directions alone (textures, whose layout is any
    phase: a flip of stripes is the same stripes elsewhere)."""
    return {"all": np.arange(d), "layout": np.arange(64), "texture": np.arange(64, d)}


class _Ridge:
    """Ridge regression on one-hot labels over standardised pixels: a cheap linear reader."""

    def __init__(self, x: np.ndarray, y: np.ndarray, classes: int, lam: float = 10.0):
        self.mu, self.sd = x.mean(0), x.std(0) + 1e-3
        z = np.c_[(x - self.mu) / self.sd, np.ones(len(x))]
        t = np.eye(classes)[y]
        self.w = np.linalg.solve(z.T @ z + lam * np.eye(z.shape[1]), z.T @ t)

    def predict(self, x: np.ndarray) -> np.ndarray:
        z = np.c_[(x - self.mu) / self.sd, np.ones(len(x))]
        return (z @ self.w).argmax(1)


def label_preserving(
    fit_x,
    fit_y,
    test_x,
    test_y,
    applied: Dict[str, str],
    class_names: Optional[Sequence[str]] = None,
    min_kept: float = 0.6,
    min_skill: float = 0.3,
    found_by: str = "",
) -> Verdict:
    """aug.label_preserving: warn for each applied transform after which the images are no
    longer read as their class (see the module docstring).

    `fit_x/fit_y`: unaugmented images [N, C, H, W] and labels the cheap model learns from;
    `test_x/test_y`: other unaugmented images it is scored on, as they are and transformed;
    `applied`: transform name -> where it was found (`pipeline_transforms`,
    `drawn_transforms`). Skips when the cheap model cannot read the classes at all
    (skill below `min_skill` of the way from chance to 1): it then judges no transform.
    """
    if not applied:
        return Verdict(
            NAME,
            "pass",
            value=0,
            expected="flips/rotations only where they keep the class",
            message="the training pipeline applies no flip or rotation"
            + (f" ({found_by})" if found_by else "")
            + ": nothing can move an image out of its class",
        )
    fy, ty = np.asarray(fit_y).astype(np.int64), np.asarray(test_y).astype(np.int64)
    k = int(max(fy.max(initial=0), ty.max(initial=0)) + 1)
    names = [str(class_names[c]) if class_names else str(c) for c in range(k)]
    if len(fy) < 2 * k or len(ty) < k:
        return skip(NAME, f"too few unaugmented images ({len(fy)} + {len(ty)}) to judge by")
    ff, tf = _features(fit_x), _features(test_x)
    chance = float(np.bincount(ty, minlength=k).max() / len(ty))
    # each reader: (model, its accuracy on held-out images as they are)
    readers = {}
    for rname, cols in _readers(ff.shape[1]).items():
        m = _Ridge(ff[:, cols], fy, k)
        readers[rname] = (m, cols, float((m.predict(tf[:, cols]) == ty).mean()))
    acc0 = readers["all"][2]
    skill = (acc0 - chance) / (1 - chance) if chance < 1 else 0.0
    if skill < min_skill:
        return skip(
            NAME,
            f"a linear model reads only {acc0:.2f} of held-out images right (chance "
            f"{chance:.2f}): too weak to tell whether {', '.join(applied)} keep the class",
        )
    results: Dict[str, Dict[str, Any]] = {}
    for name in applied:
        xt = transform(test_x, name)
        if tuple(xt.shape[-2:]) != tuple(np.shape(test_x)[-2:]):
            continue  # a quarter turn of a non-square image: compared at another size
        xf = _features(xt)
        # the reader that keeps most of its skill on the transformed images speaks: a
        # transform changes the label only when no cheap reader still sees the class
        best = None
        for rname, (m, cols, a0) in readers.items():
            if (a0 - chance) < min_skill * (1 - chance):
                continue
            p = m.predict(xf[:, cols])
            kept = (float((p == ty).mean()) - chance) / (a0 - chance)
            if best is None or kept > best[0]:
                best = (kept, rname, p, a0, m.predict(tf[:, cols]))
        kept, rname, pred, a0, pred0 = best
        acc = float((pred == ty).mean())
        per_class = {}
        for c in range(k):
            m = ty == c
            if not m.any():
                continue
            kept_c = float((pred[m] == c).mean())
            read_as = np.bincount(pred[m], minlength=k)
            read_as[c] = 0
            per_class[names[c]] = {
                "acc": round(float((pred0[m] == c).mean()), 3),
                "acc_transformed": round(kept_c, 3),
                "read_as": names[int(read_as.argmax())] if read_as.any() else None,
            }
        results[name] = {
            "where": applied[name],
            "reader": rname,
            "acc": round(a0, 4),
            "acc_transformed": round(acc, 4),
            "kept": round(kept, 4),
            "classes": per_class,
        }
    details = {"chance": round(chance, 4), "acc": round(acc0, 4), "transforms": results}
    expected = f"transformed images keep >= {min_kept:g} of the cheap model's skill"
    bad = {n: r for n, r in results.items() if r["kept"] < min_kept}
    # a rotation found both ways is one finding: the worse side names it
    for n in [n for n in bad if n.startswith("rotate+")]:
        twin = n.replace("+", "-")
        if twin in bad:
            bad.pop(n if bad[n]["kept"] > bad[twin]["kept"] else twin)
    if not bad:
        worst = min(results, key=lambda n: results[n]["kept"]) if results else None
        return Verdict(
            NAME,
            "pass",
            value=len(results),
            expected=expected,
            message=f"{', '.join(results)} keep the class: a linear model reads "
            f"{results[worst]['acc_transformed']:.2f} of transformed held-out images "
            f"right vs {acc0:.2f} as they are (worst: {worst})"
            if worst
            else "no transform could be compared",
            details=details,
        )
    parts = []
    for n, r in bad.items():
        broken = sorted(
            r["classes"].items(), key=lambda kv: kv[1]["acc_transformed"] - kv[1]["acc"]
        )[:4]
        who = ", ".join(
            f"{c} ({v['acc']:.2f} -> {v['acc_transformed']:.2f}, read as {v['read_as']})"
            for c, v in broken
        )
        parts.append(
            f"{n} ({r['where']}): accuracy {r['acc']:.2f} -> {r['acc_transformed']:.2f} "
            f"(kept {r['kept']:.2f} of the skill); classes hit hardest: {who}"
        )
    return Verdict(
        NAME,
        "warn",
        value=len(bad),
        expected=expected,
        message="augmentation that changes the label: "
        + " | ".join(parts)
        + ". Transformed images no longer look like their class (a mirrored digit or text, a "
        "left arrow turned right): remove that transform (aug.hflip=0 / aug.vflip=0, a "
        "smaller rotation, or the dataset's own flip); if the transformed images are valid "
        "examples of their class, switch this check off "
        "(checks.aug_label_preserving.enabled=false)",
        details=details,
    )


def class_means_figure(x, y, names: Sequence[str], transforms: Sequence[str]):
    """Each class's mean image, then under each transform: what the model is asked to call
    that class (runner/checks/figures.py image_grid)."""
    import torch

    from runner.checks.figures import image_grid

    x = torch.as_tensor(x).float()
    y = np.asarray(y)
    classes = [c for c in range(len(names)) if (y == c).any()][:10]
    means = torch.stack([x[torch.as_tensor(y == c)].mean(0) for c in classes])
    lo, hi = means.amin(), means.amax()
    means = (means - lo) / (hi - lo + 1e-8)
    tiles, titles = [], []
    for c, m in zip(classes, means):
        tiles.append(m)
        titles.append(f"{names[c]}")
        for t in transforms:
            tiles.append(transform(m[None], t)[0])
            titles.append(f"{names[c]} {t}")
    return image_grid(
        torch.stack(tiles).clamp(0, 1),
        titles,
        "class means: as they are, transformed",
        ncol=1 + len(transforms),
    )
