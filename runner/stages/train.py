"""stage=train: one supervised run as configured (the skeleton every other stage builds on)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

from runner import jobs
from runner.jobs import classify
from runner.stages.protocol import Context, Headline, NoParams, Outcome, StageResult, run_check

log = logging.getLogger("runner")

# no settings of its own; every training stage's Params builds on this
Params = NoParams
# its outcome is a trained model the next stage can start from (the recipe's chain)
TRAINS = True
# from=<run> also loads the source's best weights when the architecture matches
WARM_START = True
# in a recipe it starts from the previous training stage's outcome
FROM_PREVIOUS = True


def outcome(run_dir: Path) -> Outcome:
    """from=<a train run>: the config it ran with and its best weights."""
    from runner.lineage import run_outcome

    return run_outcome(run_dir)


def headline(run_dir: Path, own: Sequence[str] = ()) -> Headline:
    """Its best val accuracy and what it changed (lineage.json, else its own overrides)."""

    s = jobs.summary(run_dir)
    return Headline(s.get("best_val_acc", s.get("val_acc")), changed(run_dir, s, own))


def changed(run_dir: Path, summary: dict, own: Sequence[str] = ()) -> str:
    """One line: what a training stage changed relative to the previous one: its YAML's and
    its command's keys (lineage.json, written with from=), else its own overrides as given."""
    from runner.output import read_json

    lin = read_json(run_dir / "lineage.json")
    if lin is not None:
        keys = {**(lin.get("from_stage") or {}), **(lin.get("from_command") or {})}
        # which checks ran and how strict is not a change of the training; a threshold is
        # (checks.overfit_train_fit.train_loss_target is where stage=overfit stops)
        parts = [
            f"{k}={short_value(v)}"
            for k, v in keys.items()
            if not (k == "checks.strict" or k.endswith(".enabled") or k.startswith("inspect."))
        ]
    else:
        parts = [o for o in own if classify(o) not in ("hydra", "location")]
    if not parts:
        parts = [f"{summary.get('model', '?')}, {summary.get('epochs', '?')} epochs"]
    return " ".join(parts)


def short_value(v: Any, n: int = 60) -> str:
    """A config value in one short cell: floats to 4 digits, None as null, long text cut."""
    t = f"{v:.4g}" if isinstance(v, float) else "null" if v is None else str(v)
    return t if len(t) <= n else t[: n - 3] + "..."


def run(cfg, ctx: Context) -> StageResult:
    from runner.checks.training import train_finite
    from runner.stages.common import result_of, summary_of, train_run

    res = train_run(cfg, ctx)
    verdicts = [
        run_check(cfg.checks, "train.finite", lambda s: train_finite(res.nonfinite, res.state.step))
    ]
    return result_of(res, verdicts, summary_of(cfg, ctx, res, verdicts))
