"""data.label_in_pixels: a small region of the image gives the label away on its own.

Recipe stage 1 (become one with the data; "outliers almost always reveal a bug"): a tag, a
watermark, a ruler, a hospital marker, a coloured corner or a border drawn differently per
class lets a network read the label off a few pixels and never look at the object. It
passes every training check and fails on images from elsewhere. data.spurious looks at
file-level properties (size, format, mode); this check looks at places in the picture.

How: every image is cut into a CELLS x CELLS grid (runner/checks/data.py `region_colours`,
plus the 32x32 grey `match_image` for the detail inside a cell). A region is a cell (1/64 of
the area), a 2x2 block of cells (1/16) or one of the four border strips (1/32 of the side
thick). A nearest-centroid classifier on the region's few numbers alone (its mean colour;
with a 4x4 grey sketch of it; its grey pattern with its own level and contrast taken out,
which keeps a glyph drawn over a changing background) is fitted on train and scored on val,
and fitted on val and scored on train: a class the region identifies with an F1 of at least
`min_f1` both ways is written in that region. Tags and patches are the same pixels in every
image of a class, so they reach F1 ~1; clean digits' best region, the 2x2 block in a 0's
hole, 0.92-0.94. Thin text on a busy photo is at the edge of what a 32x32 grey copy keeps
(F1 0.83-0.92 on 48 px photo tiles: not found); on a label or a calmer background it is.

Content also identifies classes, but it is spread out: classes that differ in colour or
texture are told apart by almost every cell. A finding counts only while the cells that
(nearly: F1 >= `near_f1`) tell a class apart cover at most `max_area` of the picture (the
border ring left out when a border strip is what tells). data=synthetic is exempt by design: its class IS a bright square
at a class-specific place (runner/data.py synthetic_images), exactly what this check finds.
Pure: arrays in, a Verdict out; the stage draws the evidence (`region_figure`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from runner.checks import Verdict, skip

NAME = "data.label_in_pixels"
SIDES = ("top", "bottom", "left", "right")
# grey levels (0..255) of within-class spread below which a feature counts as constant:
# a tag stamped identically on every image of a class has none
NOISE_FLOOR = 4.0


@dataclass
class Region:
    name: str  # "cell r2 c7", "block r0-1 c6-7", "border top"
    box: tuple[float, float, float, float]  # (top, bottom, left, right) as fractions of the image
    area: float  # fraction of the image
    kind: str  # "cell", "block" or "border"
    cells: tuple[tuple[int, int], ...]  # the grid cells it covers (borders: none)
    f1: np.ndarray = field(default=None, repr=False)  # per class, the worse of the two directions
    classes: list[int] = field(default_factory=list)  # classes it identifies (F1 >= min_f1)


def regions(n: int = 8) -> list[Region]:
    """The candidate regions of an n x n grid: cells, 2x2 blocks, the four border strips."""
    out = []
    for r in range(n):
        for c in range(n):
            box = (r / n, (r + 1) / n, c / n, (c + 1) / n)
            out.append(Region(f"cell r{r} c{c}", box, 1 / n**2, "cell", ((r, c),)))
    for r in range(n - 1):
        for c in range(n - 1):
            box = (r / n, (r + 2) / n, c / n, (c + 2) / n)
            cells = tuple((r + i, c + j) for i in (0, 1) for j in (0, 1))
            out.append(Region(f"block r{r}-{r + 1} c{c}-{c + 1}", box, 4 / n**2, "block", cells))
    t = 1 / 32
    for side, box in zip(SIDES, ((0, t, 0, 1), (1 - t, 1, 0, 1), (0, 1, 0, t), (0, 1, 1 - t, 1))):
        out.append(Region(f"border {side}", box, t, "border", ()))
    return out


def region_features(cells: np.ndarray, detail: np.ndarray, border: np.ndarray, region: Region):
    """[(N, d) features] of one region, each set judged on its own: its cells' mean RGB; that
    with a 4x4 grey sketch of it (from the 32x32 `detail` image); its grey pattern (a cell's
    4x4 detail pixels, a block's sketch) less its mean, over its contrast. A border strip: its
    mean RGB and luma std. Colour alone is not drowned by texture; the sketch and the pattern
    see a tag's shape, the pattern whatever the background's level."""
    n = cells.shape[1]
    if region.kind == "border":
        return [border[:, SIDES.index(region.name.split()[-1])].astype(np.float32)]
    (r0, c0), (r1, c1) = region.cells[0], region.cells[-1]
    k = detail.shape[1] // n  # detail pixels per cell
    sub = detail[:, r0 * k : (r1 + 1) * k, c0 * k : (c1 + 1) * k].astype(np.float32)
    m, s = sub.shape[0], sub.shape[1] // 4
    sketch = sub.reshape(m, 4, s, 4, sub.shape[2] // 4).mean((2, 4)).reshape(m, -1)
    colour = cells[:, r0 : r1 + 1, c0 : c1 + 1].astype(np.float32).reshape(m, -1)
    # the region's pattern at full detail, its own mean and contrast taken out: a glyph drawn
    # over a varying background keeps its shape while the background's level changes
    full = sketch if region.kind == "block" else sub.reshape(m, -1)
    centred = full - full.mean(1, keepdims=True)
    shape = centred / (np.sqrt((centred**2).mean(1, keepdims=True)) + NOISE_FLOOR) * 64.0
    return [colour, np.concatenate([colour, sketch], 1), shape]


def _nearest_centroid_f1(xa, ya, xb, yb, classes) -> np.ndarray:
    """Per class, the one-vs-rest F1 on (xb, yb) of nearest centroids fitted on (xa, ya),
    each feature scaled by its pooled within-class spread (floored at NOISE_FLOOR)."""
    mu = np.stack([xa[ya == c].mean(0) for c in classes])
    resid = xa - mu[np.searchsorted(classes, ya)]
    scale = np.sqrt((resid**2).mean(0)) + NOISE_FLOOR
    zb, zm = xb / scale, mu / scale
    d = (zm**2).sum(1)[None] - 2 * zb @ zm.T  # ||zb - zm||^2 less the ||zb||^2 all share
    pred = classes[d.argmin(1)]
    f1 = np.zeros(len(classes))
    for k, c in enumerate(classes):
        tp = np.sum((pred == c) & (yb == c))
        denom = np.sum(pred == c) + np.sum(yb == c)
        f1[k] = 2 * tp / denom if denom else 0.0
    return f1


def _both_ways(x, y, split, classes) -> np.ndarray:
    a, b = split == 0, split == 1
    fa = _nearest_centroid_f1(x[a], y[a], x[b], y[b], classes)
    fb = _nearest_centroid_f1(x[b], y[b], x[a], y[a], classes)
    return np.minimum(fa, fb)


def label_in_pixels(
    cells: np.ndarray,
    detail: np.ndarray,
    border: np.ndarray,
    labels,
    split,
    class_names: Sequence[str] | None = None,
    min_f1: float = 0.98,
    max_area: float = 0.15,
    near_f1: float = 0.8,
    min_class_examples: int = 10,
    examples: int = 6,
) -> Verdict:
    """data.label_in_pixels: warn naming each small region that identifies classes alone.

    `cells` (N, 8, 8, 3) region colours, `detail` (N, 32, 32) grey, `border` (N, 4, 4) strips
    (runner/checks/data.py `region_colours`, `match_image`); `labels` and `split` (0 train,
    1 val) per image. Only classes with `min_class_examples` in both splits take part.
    details["regions"]: the telling regions, smallest first, each with its box (fractions of
    the image), classes, F1 and `examples` indices per class for the evidence picture.
    """
    y = np.asarray(labels).astype(np.int64).ravel()
    sp = np.asarray(split).ravel()
    keep = (sp == 0) | (sp == 1)
    counts = [np.bincount(y[keep & (sp == s)], minlength=y.max() + 1) for s in (0, 1)]
    classes = np.flatnonzero((counts[0] >= min_class_examples) & (counts[1] >= min_class_examples))
    if len(classes) < 2:
        return skip(
            NAME,
            f"fewer than 2 classes with {min_class_examples}+ images in both train and val: "
            "too few to tell a region that gives the label away from chance",
        )
    rows = np.flatnonzero(keep & np.isin(y, classes))
    y, sp = y[rows], sp[rows]
    cells, detail, border = cells[rows], detail[rows], border[rows]
    n = cells.shape[1]
    cands = regions(n)
    for r in cands:
        sets = region_features(cells, detail, border, r)
        r.f1 = np.max([_both_ways(f, y, sp, classes) for f in sets], 0)
        r.classes = [int(classes[k]) for k in np.flatnonzero(r.f1 >= min_f1)]
    # the whole image, for comparison: its 16x16 grey sketch and 8x8 colour
    whole = np.concatenate(
        [
            cells.reshape(len(y), -1).astype(np.float32),
            detail.reshape(len(y), 16, 2, 16, 2).mean((2, 4)).reshape(len(y), -1),
        ],
        1,
    )
    whole_f1 = _both_ways(whole, y, sp, classes)
    # how spread out the telling is: the cells that (nearly: F1 >= near_f1) identify each
    # class on their own; a stamp is an island, content is everywhere
    edge = {(r, c) for r in range(n) for c in range(n) if r in (0, n - 1) or c in (0, n - 1)}
    found = []
    for k, c in enumerate(classes):
        telling = [r for r in cands if int(c) in r.classes]
        if not telling:
            continue
        near = [r for r in cands if r.kind == "cell" and r.f1[k] >= near_f1]
        spread = {cell for r in near for cell in r.cells}
        if any(r.kind == "border" for r in telling):
            spread -= edge  # a border also colours the edge cells
        if len(spread) / n**2 <= max_area:
            found.append((int(c), telling, len(spread) / n**2))
    names = [str(class_names[c]) if class_names else str(c) for c in range(int(y.max()) + 1)]
    best = {r.name: r for r in cands}
    summary = [
        {
            "region": r.name,
            "box": [round(v, 4) for v in r.box],
            "area": round(r.area, 4),
            "classes": [names[c] for c in r.classes],
            "f1": {names[int(c)]: round(float(f), 3) for c, f in zip(classes, r.f1)},
        }
        for r in sorted(
            {r.name: r for _, ts, _ in found for r in ts}.values(),
            key=lambda r: (r.area, -float(r.f1.max())),
        )
    ]
    top_f1 = max(float(r.f1.max()) for r in cands)
    details: dict[str, Any] = {
        "whole_image_f1": {names[int(c)]: round(float(f), 3) for c, f in zip(classes, whole_f1)},
        "best_region_f1": round(top_f1, 4),
        "best_region": max(cands, key=lambda r: float(r.f1.max())).name,
        "regions": summary,
    }
    expected = (
        f"no region of <= {max_area:.0%} of the image identifies a class alone "
        f"(F1 < {min_f1:g} from train to val and back)"
    )
    if not found:
        return Verdict(
            NAME,
            "pass",
            value=0,
            expected=expected,
            message=f"{len(cands)} regions (cells, 2x2 blocks, border strips) of "
            f"{len(classes)} classes: none gives the label away; the most telling, "
            f"{details['best_region']}, reaches F1 {top_f1:.2f}",
            details=details,
        )
    # the evidence: per region shown, a few images of each class it identifies
    rng = np.random.default_rng(0)
    for s in summary:
        r = best[s["region"]]
        s["examples"] = {
            names[c]: [int(rows[i]) for i in _pick(y, c, examples, rng)] for c in r.classes
        }
    by_region: dict[str, list[int]] = {}
    for c, telling, _ in found:
        by_region.setdefault(_shown(telling).name, []).append(c)
    parts = []
    for rname, cs in list(by_region.items())[:6]:
        r, ks = best[rname], np.searchsorted(classes, cs)
        who = f"class {names[cs[0]]}" if len(cs) == 1 else f"classes {_names(cs, names)}"
        parts.append(
            f"{rname} ({r.area:.1%} of the image) identifies {who} alone, F1 "
            f"{float(r.f1[ks].min()):.2f} (the whole image: {float(whole_f1[ks].min()):.2f})"
        )
    more = f" (+{len(by_region) - 6} more regions)" if len(by_region) > 6 else ""
    return Verdict(
        NAME,
        "warn",
        value=len(found),
        expected=expected,
        message="a small region gives the label away: "
        + "; ".join(parts)
        + more
        + ". A net can read the label off these pixels (a tag, watermark, marker, coloured "
        "corner or border) and ignore the object: remove or crop the mark, or put the same "
        "one on every class; if that region is the object itself, switch this check off "
        "(checks.data_label_in_pixels.enabled=false)",
        details=details,
    )


def _shown(telling: list[Region]) -> Region:
    """The region that names a finding: a border strip when 3+ sides tell (a frame: the edge
    cells it colours tell too), else the smallest, most telling cell or block (a corner patch
    also colours two strips)."""
    borders = [r for r in telling if r.kind == "border"]
    inner = [r for r in telling if r.kind != "border"]
    pool = borders if len(borders) >= 3 or not inner else inner
    return min(pool, key=lambda r: (r.area, -float(r.f1.max())))


def _names(cs: Sequence[int], names: Sequence[str]) -> str:
    shown = [names[c] for c in cs]
    return ", ".join(shown[:8]) + (f" (+{len(shown) - 8} more)" if len(shown) > 8 else "")


def _pick(y: np.ndarray, c: int, k: int, rng) -> np.ndarray:
    idx = np.flatnonzero(y == c)
    return np.sort(rng.choice(idx, min(k, len(idx)), replace=False))


def outlined(img: np.ndarray, box, colour=(255, 0, 0)) -> np.ndarray:
    """HxWxC uint8 -> RGB copy with `box` (top, bottom, left, right fractions) outlined."""
    a = np.repeat(img, 3, -1) if img.shape[-1] == 1 else img[..., :3].copy()
    h, w = a.shape[:2]
    t, b = int(box[0] * h), max(int(round(box[1] * h)) - 1, int(box[0] * h))
    le, r = int(box[2] * w), max(int(round(box[3] * w)) - 1, int(box[2] * w))
    a[t : b + 1, [le, r]] = colour
    a[[t, b], le : r + 1] = colour
    return a


def crop(img: np.ndarray, box) -> np.ndarray:
    h, w = img.shape[:2]
    t, b = int(box[0] * h), max(int(round(box[1] * h)), int(box[0] * h) + 1)
    le, r = int(box[2] * w), max(int(round(box[3] * w)), int(box[2] * w) + 1)
    return np.ascontiguousarray(img[t:b, le:r])
