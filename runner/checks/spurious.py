"""data.spurious: image properties that predict the label on their own (shortcuts).

Recipe stage 1 ("sort/filter/visualise along every axis you can compute"): when every image
of some classes is 24x24 px and of the others 32x32, or one class alone is greyscale or
PNG, a network can learn the label from that and never look at the content; accuracy
looks fine until the images come from elsewhere.

Anchor: cleanlab Datalab's spurious-correlation issue type scores a property by how well
it alone predicts the label (cross-validated accuracy of a small tree vs the majority
baseline). That number misses a shortcut that splits ten classes into two groups (the
property then predicts the group, only 20% accuracy), so the decision here rests on class
*pairs*: the separation of classes a and b by a property is the balanced accuracy of the
best rule on that property alone, (1 + D) / 2 with D the Kolmogorov-Smirnov distance of
their values (numbers) or the total-variation distance (categories, or numbers with few
values such as widths). Classes that cannot be told apart are joined; when the property
splits the classes into two or more groups that it tells apart (every pair across groups
separated), it is a shortcut. Content properties (brightness, contrast, sharpness, file
size, ...) legitimately differ between classes (a digit 1 has less ink than an 8), so they
need a near-perfect split; acquisition properties (size, aspect, format, colour mode) carry
no content in a one-source dataset, so a clear split is enough. Pure: arrays in, a Verdict
out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from runner.checks import Verdict, skip

NAME = "data.spurious"

# properties that depend on what is in the picture (more ink, more texture, more bytes)
CONTENT_PROPERTIES = (
    "brightness",
    "contrast",
    "sharpness",
    "file_bytes",
    "entropy",
    "colourfulness",
    "p01",
    "p99",
)

# numbers with at most this many distinct values are compared as categories (widths, sizes)
MAX_CATEGORIES = 32


@dataclass
class PropertyScore:
    name: str
    kind: str  # "content" or "acquisition"
    accuracy: float  # cross-validated accuracy of predicting the label from this property alone
    baseline: float  # majority-class rate
    gain: float  # (accuracy - baseline) / (1 - baseline), Datalab's relative improvement
    groups: list[list[int]] = field(default_factory=list)  # classes the property tells apart
    describe: list[str] = field(default_factory=list)  # each group's typical values
    min_separation: float = 1.0  # worst separation across groups (1 = perfect)


def _is_categorical(v: np.ndarray) -> bool:
    return v.dtype.kind in "OUSb" or len(np.unique(v)) <= MAX_CATEGORIES


def _codes(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    cats, codes = np.unique(v.astype(str) if v.dtype.kind == "O" else v, return_inverse=True)
    return cats, codes.ravel()


def _cv_accuracy(v: np.ndarray, y: np.ndarray, categorical: bool, folds: int, seed: int) -> float:
    """Cross-validated accuracy of the label from one property: per-category majority, or a
    depth-3 tree (Datalab's kind of small model) on a number."""
    from sklearn.model_selection import StratifiedKFold
    from sklearn.tree import DecisionTreeClassifier

    counts = np.bincount(y)
    folds = int(min(folds, max(2, counts[counts > 0].min())))
    if len(y) < 2 * folds:
        return float(counts.max() / len(y))
    hits = 0
    split = StratifiedKFold(folds, shuffle=True, random_state=seed)
    if categorical:
        _, codes = _codes(v)
        for tr, te in split.split(codes, y):
            table = np.zeros((codes.max() + 1, y.max() + 1), np.int64)
            np.add.at(table, (codes[tr], y[tr]), 1)
            majority = np.bincount(y[tr]).argmax()
            pred = np.where(table.sum(1) > 0, table.argmax(1), majority)[codes[te]]
            hits += int((pred == y[te]).sum())
    else:
        x = v.astype(np.float64)[:, None]
        for tr, te in split.split(x, y):
            tree = DecisionTreeClassifier(max_depth=3, random_state=seed).fit(x[tr], y[tr])
            hits += int((tree.predict(x[te]) == y[te]).sum())
    return hits / len(y)


def _distances(v: np.ndarray, y: np.ndarray, classes: np.ndarray, categorical: bool):
    """(len(classes), len(classes)) distances D in [0, 1]: TV for categories, KS for numbers."""
    if categorical:
        _, codes = _codes(v)
        p = np.zeros((len(classes), codes.max() + 1))
        for k, c in enumerate(classes):
            p[k] = np.bincount(codes[y == c], minlength=p.shape[1])
        p /= p.sum(1, keepdims=True)
        return 0.5 * np.abs(p[:, None, :] - p[None, :, :]).sum(-1)
    v = v.astype(np.float64)
    grid = np.unique(v)
    if len(grid) > 4096:
        grid = np.quantile(v, np.linspace(0, 1, 4096))
    cdf = np.stack(
        [np.searchsorted(np.sort(v[y == c]), grid, side="right") / (y == c).sum() for c in classes]
    )
    d = np.zeros((len(classes), len(classes)))
    for k in range(len(classes)):  # one row at a time: C x grid memory, not C x C x grid
        d[k] = np.abs(cdf[k][None, :] - cdf).max(1)
    return d


def _groups(sep: np.ndarray, threshold: float) -> list[list[int]]:
    """Connected components of "cannot be told apart" (separation below threshold)."""
    n = len(sep)
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a in range(n):
        for b in range(a + 1, n):
            if sep[a, b] < threshold:
                parent[find(a)] = find(b)
    comps: dict[int, list[int]] = {}
    for i in range(n):
        comps.setdefault(find(i), []).append(i)
    return sorted(comps.values(), key=lambda g: g[0])


def _describe(v: np.ndarray, members: np.ndarray, categorical: bool) -> str:
    vals = v[members]
    if categorical:
        cats, counts = np.unique(vals.astype(str), return_counts=True)
        top = np.argsort(-counts)[:3]
        return ", ".join(
            f"{cats[i]}" + ("" if counts[i] == len(vals) else f" ({counts[i] / len(vals):.0%})")
            for i in top
        )
    lo, hi = np.percentile(vals.astype(np.float64), [1, 99])
    return f"{lo:.4g}..{hi:.4g}"


def property_scores(
    properties: Mapping[str, Any],
    labels,
    min_separation: float = 0.95,
    min_separation_content: float = 0.99,
    min_class_examples: int = 10,
    content: Sequence[str] = CONTENT_PROPERTIES,
    folds: int = 5,
    seed: int = 0,
) -> list[PropertyScore]:
    """One PropertyScore per property with more than one value; see the module docstring.

    `properties`: name -> (N,) values (numbers, or strings such as "png"/"24x24"/"L");
    NaN/None rows (unreadable images) are left out of that property. Classes with fewer
    than `min_class_examples` examples take no part in the grouping (with so few, a perfect
    split happens by chance).
    """
    y_all = np.asarray(labels).astype(np.int64).ravel()
    out = []
    for name, raw in properties.items():
        v = np.asarray(raw)
        if v.dtype.kind in "fc":
            keep = np.isfinite(v)
        else:
            keep = np.array([x is not None and x != "" for x in v.tolist()], bool)
        v, y = v[keep], y_all[keep]
        if len(v) == 0 or len(np.unique(v.astype(str) if v.dtype.kind == "O" else v)) < 2:
            continue
        categorical = _is_categorical(v)
        baseline = float(np.bincount(y).max() / len(y))
        acc = _cv_accuracy(v, y, categorical, folds, seed)
        gain = (acc - baseline) / (1 - baseline) if baseline < 1 else 0.0
        kind = "content" if name in content else "acquisition"
        counts = np.bincount(y)
        classes = np.flatnonzero(counts >= min_class_examples)
        score = PropertyScore(name, kind, acc, baseline, float(gain))
        if len(classes) >= 2:
            sep = 0.5 * (1.0 + _distances(v, y, classes, categorical))
            thr = min_separation_content if kind == "content" else min_separation
            groups = _groups(sep, thr)
            if len(groups) >= 2:
                score.groups = [[int(classes[i]) for i in g] for g in groups]
                score.describe = [_describe(v, np.isin(y, classes[g]), categorical) for g in groups]
                score.min_separation = float(
                    min(
                        sep[np.ix_(a, b)].min()
                        for i, a in enumerate(groups)
                        for b in groups[i + 1 :]
                    )
                )
        out.append(score)
    return out


def _class_list(cs: Sequence[int], class_names: Sequence[str] | None) -> str:
    """[0, 1, 2, 3, 4, 7] -> "0-4, 7" (names when given)."""
    if class_names:
        names = [str(class_names[c]) for c in cs]
        return ", ".join(names[:6]) + (f" (+{len(names) - 6} more)" if len(names) > 6 else "")
    runs, start = [], cs[0]
    for a, b in zip(cs, list(cs[1:]) + [None]):
        if b != a + 1:
            runs.append(f"{start}" if start == a else f"{start}-{a}")
            start = b
    return ", ".join(runs)


def spurious(
    properties: Mapping[str, Any],
    labels,
    class_names: Sequence[str] | None = None,
    min_separation: float = 0.95,
    min_separation_content: float = 0.99,
    max_gain: float = 0.5,
    min_class_examples: int = 10,
    content: Sequence[str] = CONTENT_PROPERTIES,
    folds: int = 5,
    seed: int = 0,
) -> Verdict:
    """data.spurious: warn naming each property that predicts the label on its own.

    A property warns when it splits the classes into groups it tells apart (see the module
    docstring; `min_separation` for acquisition properties, `min_separation_content` for
    content ones) or when it alone predicts the label with a Datalab gain >= `max_gain`.
    value = the number of such properties; details hold every property's numbers.
    """
    y = np.asarray(labels).ravel()
    if y.size == 0:
        return skip(NAME, "no labelled images to compare properties with")
    scores = property_scores(
        properties,
        y,
        min_separation,
        min_separation_content,
        min_class_examples,
        content,
        folds,
        seed,
    )
    expected = (
        f"no property alone splits the classes (separation < {min_separation:g}, "
        f"content < {min_separation_content:g}) or predicts them (gain < {max_gain:g})"
    )
    details: dict[str, Any] = {
        "properties": {
            s.name: {
                "kind": s.kind,
                "accuracy": round(s.accuracy, 4),
                "baseline": round(s.baseline, 4),
                "gain": round(s.gain, 4),
                "groups": s.groups,
                "values": s.describe,
            }
            for s in scores
        }
    }
    found = []
    for s in scores:
        if s.groups:
            parts = [
                (
                    f"classes {_class_list(g, class_names)} are"
                    if len(g) > 1
                    else f"class {_class_list(g, class_names)} is"
                )
                + f" {d}"
                for g, d in zip(s.groups[:4], s.describe[:4])
            ]
            more = f" (+{len(s.groups) - 4} more groups)" if len(s.groups) > 4 else ""
            found.append(f"{s.name}: " + "; ".join(parts) + more)
        elif s.gain >= max_gain:
            found.append(
                f"{s.name} alone predicts the label with accuracy {s.accuracy:.2f} "
                f"(majority baseline {s.baseline:.2f})"
            )
    if found:
        return Verdict(
            NAME,
            "warn",
            value=len(found),
            expected=expected,
            message="properties that give the label away without looking at the "
            "content: " + " | ".join(found) + ". A net can learn these "
            "instead of the objects: make them the same for every class "
            "(resize/convert all images the same way, collect each class "
            "from the same sources)",
            details=details,
        )
    worst = max(scores, key=lambda s: s.gain, default=None)
    tail = (
        f"; the most telling, {worst.name}, predicts the label with accuracy "
        f"{worst.accuracy:.2f} vs {worst.baseline:.2f} by majority"
        if worst
        else ""
    )
    return Verdict(
        NAME,
        "pass",
        value=0,
        expected=expected,
        message=f"{len(scores)} varying properties, none gives the label away" + tail,
        details=details,
    )


def properties_from_table(table, split: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """(properties, labels) of the readable images of one split of an ImageTable
    (runner/checks/data.py): size, aspect, format (file suffix), colour mode, colour vs
    grey, file size, brightness, contrast, sharpness."""
    rows = np.flatnonzero((np.asarray(table.split) == split) & np.asarray(table.ok))
    num = table.num
    w, h = num["width"][rows], num["height"][rows]
    props: dict[str, np.ndarray] = {
        "width": w,
        "height": h,
        "size": np.array([f"{int(a)}x{int(b)}" for a, b in zip(w, h)]),
        "aspect": np.round(w / np.maximum(h, 1), 3),
        "format": np.array(
            [
                str(table.name[i]).rsplit(".", 1)[-1].lower() if "." in str(table.name[i]) else ""
                for i in rows
            ],
            dtype=object,
        ),
        "mode": np.array([table.mode[i] for i in rows], dtype=object),
    }
    if "colourfulness" in num:  # grey pixels stored as RGB count as grey
        props["colour"] = np.where(num["colourfulness"][rows] < 1.0, "grey", "colour")
    for k in ("file_bytes", "brightness", "contrast", "sharpness"):
        if k in num:
            props[k] = num[k][rows]
    return props, np.asarray(table.label)[rows]
