"""Checks on what a stage ended with, compared with something else: squeeze's ensemble and seed
reruns, the recipe's gates and its progress from stage to stage. Each compares results with the
noise rule of runner/checks/noise.py and says which test it ran."""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence

from runner.checks import Verdict
from runner.checks.noise import across_seeds, same_val_set


def mean_std(xs: Sequence[Any]) -> tuple[float, float]:
    """Mean and sample std (n-1) of the finite values; NaN where there are too few."""
    vals = [float(x) for x in xs if isinstance(x, (int, float)) and math.isfinite(x)]
    if not vals:
        return float("nan"), float("nan")
    m = sum(vals) / len(vals)
    sd = (
        math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1))
        if len(vals) > 1
        else float("nan")
    )
    return m, sd


def ensemble(
    member_acc: Sequence[float],
    ensemble_acc: float,
    members: Sequence[str],
    why_single: str = "one candidate",
) -> Verdict:
    """squeeze.ensemble: the members' averaged logits score at least their best member."""
    name = "squeeze.ensemble"
    best = max(member_acc)
    gain = ensemble_acc - best
    details = {"members": [str(m) for m in members]}
    if len(members) == 1:  # one model is no ensemble: nothing to judge, and no option to adopt
        return Verdict(
            name,
            "skip",
            value=ensemble_acc,
            details=details,
            message=f"{why_single}: no ensemble (the single member scores {best:.4f})",
        )
    if gain >= 0:
        return Verdict(
            name,
            "pass",
            value=ensemble_acc,
            expected=f">= best member {best:.4f}",
            details=details,
            message=f"ensemble of {len(members)}: val acc {ensemble_acc:.4f} "
            f"({gain:+.4f} vs the best member)",
        )
    return Verdict(
        name,
        "warn",
        value=ensemble_acc,
        expected=f">= best member {best:.4f}",
        details=details,
        message=f"the ensemble ({ensemble_acc:.4f}) is below its best member "
        f"({best:.4f}): use fewer, better members (stage.params.k)",
    )


def seed_values(group: Dict[str, Any]) -> List[Any]:
    """A seed group's per-seed figures the comparison is on: its "score" on its "metric" (runner/
    jobs.py selection_value, higher is better) when it names one, else its val accuracies."""
    return list(group.get("score" if "metric" in group else "val_acc") or [])


def seed_spread(
    winner: Dict[str, Any], runner_up: Optional[Dict[str, Any]], n: int, alpha: float = 0.05
) -> Verdict:
    """squeeze.seed_spread: the winner leads the runner-up over seeds by more than noise
    (Welch's t-test over the seed reruns, one-sided, p <= alpha), on what the candidates were
    ranked by: the config's `metric` (a group's "metric" and "score"), else val accuracy."""
    name = "squeeze.seed_spread"
    if n < 2:
        return Verdict(name, "skip", message="stage.params.seeds < 2: no seed reruns")
    metric = winner.get("metric")
    # "on macro_f1": the message names the metric unless it is accuracy (the default)
    on = "" if metric is None else f" on {metric}" + (" (negated)" if metric == "val_loss" else "")
    w = f"{winner['mean']:.4f} +/- {winner['std']:.4f}"
    if runner_up is None:
        return Verdict(
            name,
            "skip",
            value=winner["mean"],
            message=f"only one candidate: winner {w} over {n} seeds{on}, nothing to compare",
        )
    r = f"{runner_up['mean']:.4f} +/- {runner_up['std']:.4f}"
    d = across_seeds(seed_values(runner_up), seed_values(winner), alpha=alpha)
    lead = winner["mean"] - runner_up["mean"]
    spread = max(winner["std"], runner_up["std"])
    spread = spread if math.isfinite(spread) else math.inf
    expected = f"winner better than runner-up over seeds{on}: Welch's t-test p <= {alpha:g}"
    details = {
        "winner": winner,
        "runner_up": runner_up,
        "lead": lead,
        "spread": spread,
        "p_value": d.p_value,
        "test": d.test,
    }
    if metric is not None:
        details["metric"] = metric
    p = "n/a" if d.p_value is None else f"{d.p_value:.3g}"
    if d.significant:
        return Verdict(
            name,
            "pass",
            value=lead,
            expected=expected,
            details=details,
            message=f"the winner ({w}) leads the runner-up ({r}) by {lead:.4f} over "
            f"{n} seeds{on}: more than seed noise ({d.test}, p={p})",
        )
    return Verdict(
        name,
        "warn",
        value=lead,
        expected=expected,
        details=details,
        message=f"not a win: winner {w} vs runner-up {r} over {n} seeds{on}; the lead "
        f"{lead:+.4f} is within seed noise ({d.test}, p={p}; spread "
        f"{spread:.4f}). Treat them as tied and prefer the simpler or cheaper one",
    )


def regressions(
    rows: Sequence[Dict[str, Any]],
    n_val: Optional[int],
    min_delta: float = 0.005,
    counted: Sequence[str] = (),
) -> List[str]:
    """Passing stages (those in `counted`, or all when empty) that ended below the best stage
    before them by more than noise (same_val_set: more than max(min_delta, one std error))."""
    out, best = [], None
    for r in rows:
        if (
            r["exit_code"] != 0
            or (counted and r["stage"] not in counted)
            or not isinstance(r["val_acc"], (int, float))
        ):
            continue
        if best is not None:
            d = same_val_set(r["val_acc"], best["val_acc"], n_val or 0, min_delta)
            if d.significant:
                out.append(
                    f"{r['stage']} ended at val acc {r['val_acc']:.4f}, below "
                    f"{best['stage']}'s {best['val_acc']:.4f} by more than noise "
                    f"({d.threshold:.4f}; {d.test})"
                )
        if best is None or r["val_acc"] >= best["val_acc"]:
            best = r
    return out


def recipe_gates(
    n_stages: int,
    rows: Sequence[Dict[str, Any]],
    failed: Sequence[str],
    not_run: Sequence[str],
    stopped: Optional[str],
) -> Verdict:
    """recipe.gates: every stage of the recipe passed (a failed one fails the recipe, whether
    or not the recipe went on after it)."""
    n_pass = sum(r["exit_code"] == 0 for r in rows)
    if stopped:
        message = stopped
    elif failed:
        message = (
            f"{len(failed)} of {len(rows)} stage(s) failed; the recipe went on "
            "(stage.params.continue_on_fail=true): " + "; ".join(failed)
        )
    else:
        message = f"all {len(rows)} stage(s) passed"
    return Verdict(
        "recipe.gates",
        "fail" if failed else "pass",
        value=n_pass,
        expected=f"{n_stages} stage(s) pass",
        message=message,
        details={"failed": list(failed), "not_run": list(not_run)},
    )


def recipe_progress(
    worse: Sequence[str], final: Optional[Dict[str, Any]], last_acc: Optional[float]
) -> Verdict:
    """recipe.progress: no passing stage ended below the best one before it by more than noise."""
    acc = final["val_acc"] if final else None
    if worse and final:
        status = "warn"
        message = (
            "; ".join(worse) + f". The final model is the best stage's ({final['stage']}, "
            f"{acc:.4f}), not the last one's"
        )
    elif final:
        status = "pass"
        message = (
            f"each stage ended at or above the best before it (within noise); final "
            f"{acc:.4f} from {final['stage']}"
        )
    else:
        status, message = "skip", "no passing training stage"
    return Verdict(
        "recipe.progress",
        status,
        value=acc,
        expected="no passing stage ends below the best one before it by more than noise",
        message=message,
        details={"regressions": list(worse), "last_val_acc": last_acc},
    )
