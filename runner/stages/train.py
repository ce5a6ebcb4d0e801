"""stage=train: one supervised run as configured (the skeleton every other stage builds on)."""
from __future__ import annotations

import logging

from runner.stages.protocol import Context, NoParams, run_check

log = logging.getLogger("runner")

# no settings of its own; every training stage's Params builds on this
Params = NoParams


def run(cfg, ctx: Context) -> int:
    from runner.checks.training import train_finite
    from runner.stages.common import finish, summary_of, train_run

    res = train_run(cfg, ctx)
    verdicts = [run_check(cfg.checks, "train.finite",
                          lambda s: train_finite(res.nonfinite, res.state.step))]
    code = finish(cfg, ctx, res, verdicts, summary_of(cfg, ctx, res, verdicts))
    return 1 if res.nonfinite else code
