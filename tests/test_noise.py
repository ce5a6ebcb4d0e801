"""The one "more than noise?" rule (runner/checks/noise.py), on known numbers."""

from __future__ import annotations

import math

import pytest

from runner.checks.noise import ONE_SE_ALPHA, across_seeds, paired, same_val_set


def test_same_val_set_is_a_one_standard_error_z_test():
    # p = 0.9 on 200 images: se = sqrt(2 * 0.9 * 0.1 / 200) = 0.03
    d = same_val_set(0.9, 0.935, 200, min_delta=0.005)
    assert d.threshold == pytest.approx(0.03) and d.significant
    assert d.p_value == pytest.approx(0.5 * math.erfc((0.035 / 0.03) / math.sqrt(2)))
    assert not same_val_set(0.9, 0.925, 200, 0.005).significant
    assert ONE_SE_ALPHA == pytest.approx(0.1587, abs=1e-4)
    # a stricter alpha asks for a larger gap: z = 1.645 at 0.05
    assert same_val_set(0.9, 0.935, 200, alpha=0.05).threshold == pytest.approx(
        0.03 * 1.6449, rel=1e-3
    )
    # min_delta is the floor; no result is never significant
    assert same_val_set(1.0, 1.0, 200, 0.005).threshold == 0.005
    assert not same_val_set(0.5, None, 100).significant
    assert same_val_set(0.5, float("nan"), 100).delta is None
    # no val count: only the floor counts
    assert same_val_set(0.9, 0.91, 0, 0.005).significant
    assert not same_val_set(0.9, 0.903, 0, 0.005).significant


def test_paired_mcnemar_counts_only_disagreements():
    a = [True] * 80 + [False] * 20
    b = [True] * 80 + [True] * 15 + [False] * 5  # b fixes 15 of a's 20 errors, breaks none
    d = paired(a, b)
    assert d.delta == pytest.approx(0.15) and d.significant
    assert d.p_value == pytest.approx(0.5**15)  # 15 of 15 discordant pairs go to b
    # as many fixed as broken: no evidence either way
    c = [True] * 75 + [False] * 5 + [True] * 5 + [False] * 15
    assert not paired(a, c).significant and paired(a, c).delta == pytest.approx(0.0)
    assert not paired(a, a).significant


def test_across_seeds_is_welchs_t_test():
    scipy_stats = pytest.importorskip("scipy.stats")
    a, b = [0.89, 0.90, 0.91], [0.94, 0.95, 0.96]
    d = across_seeds(a, b)
    ref = scipy_stats.ttest_ind(b, a, equal_var=False, alternative="greater").pvalue
    assert d.significant and d.p_value == pytest.approx(ref) and d.delta == pytest.approx(0.05)
    # a lead inside the seed spread: not significant
    assert not across_seeds([0.91, 0.92, 0.93], [0.90, 0.93, 0.96]).significant
    # one seed on a side: no spread, nothing counts
    one = across_seeds([0.5], [0.99, 0.98])
    assert not one.significant and one.p_value is None
    # two-sided: a large drop is a difference too
    assert across_seeds(b, a, two_sided=True).significant
