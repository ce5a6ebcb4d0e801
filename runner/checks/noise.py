"""Is this difference more than noise? The one rule regularize, squeeze, the recipe and the sweep
summary use to compare two results, each saying what it tested and its p-value.

Two situations, two tests:
- two models scored on the *same* validation set of n images (a ladder rung against the
  current best, a recipe stage against the one before): the gap in accuracy is compared with
  its standard error sqrt(2 p (1 - p) / n), a one-sided z-test (`same_val_set`); with the
  per-example correctness of both models at hand, McNemar's exact test on the examples they
  disagree on (`paired`), which is sharper since it ignores what both get right or wrong;
- the same config trained with several seeds on each side (squeeze's seed reruns, a sweep's
  seed groups): Welch's t-test, which does not assume equal spreads (`across_seeds`).

A difference counts ("significant") when it is at least `min_delta` and its p-value is at most
`alpha`. regularize keeps its documented threshold, "more than one standard error", which is
alpha = 0.159 one-sided (z > 1): a cheap ladder step should be taken on moderate evidence,
and `min_delta` guards the floor.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Optional, Sequence

# one standard error, one-sided: P(Z > 1)
ONE_SE_ALPHA = 0.15865525393145707


@dataclass
class Difference:
    """b - a, and whether it is more than noise."""

    delta: Optional[float]  # b - a (None: one side has no result)
    p_value: Optional[float]  # one-sided, for "b better than a" (None: cannot be tested)
    test: str  # what was tested, in words
    significant: bool
    threshold: Optional[float] = None  # the smallest delta that would have counted, where known

    def as_dict(self) -> dict:
        return asdict(self)

    def text(self) -> str:
        p = "n/a" if self.p_value is None else f"{self.p_value:.3g}"
        d = "n/a" if self.delta is None else f"{self.delta:+.4f}"
        return f"{d} ({self.test}, p={p}: {'more than noise' if self.significant else 'noise'})"


def _finite(*xs) -> bool:
    return all(isinstance(x, (int, float)) and math.isfinite(x) for x in xs)


def _norm_sf(z: float) -> float:
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def _norm_isf(alpha: float) -> float:
    from scipy.stats import norm

    return float(norm.isf(alpha))


def same_val_set(
    acc_a: Optional[float],
    acc_b: Optional[float],
    n: int,
    min_delta: float = 0.0,
    alpha: float = ONE_SE_ALPHA,
) -> Difference:
    """Accuracy b against a, both measured on the same n validation images: a one-sided z-test
    of the gap against its standard error sqrt(2 p (1 - p) / n), p = a's accuracy."""
    if not _finite(acc_a):
        return Difference(None, None, "no result to compare", False)
    if not n or n <= 0:  # no count of val images: no standard error, only the floor
        delta = float(acc_b) - float(acc_a) if _finite(acc_b) else None
        return Difference(
            delta,
            None,
            f"no val count: gap vs min_delta {min_delta:g}",
            delta is not None and delta > min_delta,
            min_delta,
        )
    p = min(max(float(acc_a), 0.0), 1.0)
    se = math.sqrt(2.0 * p * (1.0 - p) / max(int(n), 1))
    threshold = max(min_delta, _norm_isf(alpha) * se)
    test = f"z-test on the same {n} val images, se {se:.4f}"
    if not _finite(acc_b):
        return Difference(None, None, test, False, threshold)
    delta = float(acc_b) - float(acc_a)
    if se == 0.0:
        pv = 0.0 if delta > 0 else 1.0
    else:
        pv = _norm_sf(delta / se)
    return Difference(delta, pv, test, delta > threshold, threshold)


def paired(
    correct_a: Sequence[bool],
    correct_b: Sequence[bool],
    min_delta: float = 0.0,
    alpha: float = 0.05,
) -> Difference:
    """McNemar's exact test: of the examples exactly one model gets right, does b win more
    often than a coin would? The per-example answers must be on the same examples, in order."""
    from scipy.stats import binomtest

    if len(correct_a) != len(correct_b) or not len(correct_a):
        return Difference(None, None, "paired test needs answers on the same examples", False)
    a = [bool(x) for x in correct_a]
    b = [bool(x) for x in correct_b]
    b_only = sum(y and not x for x, y in zip(a, b))
    a_only = sum(x and not y for x, y in zip(a, b))
    n = len(a)
    delta = (b_only - a_only) / n
    test = f"McNemar exact test on {n} val images ({b_only} only b right, {a_only} only a right)"
    if b_only + a_only == 0:
        return Difference(delta, 1.0, test, False)
    pv = float(binomtest(b_only, b_only + a_only, 0.5, alternative="greater").pvalue)
    return Difference(delta, pv, test, delta >= min_delta and delta > 0 and pv <= alpha)


def across_seeds(
    a: Sequence[float],
    b: Sequence[float],
    min_delta: float = 0.0,
    alpha: float = 0.05,
    two_sided: bool = False,
) -> Difference:
    """Mean of b against mean of a over seeds: Welch's t-test (unequal variances). Fewer than
    two finite values on a side: the spread is unknown and nothing counts as significant.
    `two_sided`: the p-value of "they differ" rather than "b is better"."""
    xs = [float(x) for x in a if _finite(x)]
    ys = [float(y) for y in b if _finite(y)]
    if not xs or not ys:
        return Difference(None, None, "no result to compare", False)
    delta = sum(ys) / len(ys) - sum(xs) / len(xs)
    if len(xs) < 2 or len(ys) < 2:
        return Difference(delta, None, f"seeds {len(xs)} vs {len(ys)}: too few for a spread", False)
    from scipy.stats import ttest_ind

    alt = "two-sided" if two_sided else "greater"
    res = ttest_ind(ys, xs, equal_var=False, alternative=alt)
    pv = float(res.pvalue)
    if not math.isfinite(pv):  # both sides without spread: only the gap itself tells
        pv = 0.0 if (delta != 0 if two_sided else delta > 0) else 1.0
    size = abs(delta) if two_sided else delta
    return Difference(
        delta,
        pv,
        f"Welch's t-test over {len(xs)} vs {len(ys)} seeds" + (" (two-sided)" if two_sided else ""),
        size >= min_delta and pv <= alpha and size > 0,
    )
