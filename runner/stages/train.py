"""stage=train: one supervised run as configured (the skeleton every other stage builds on)."""
from __future__ import annotations

import logging

from runner.checks.training import train_finite
from runner.stages.protocol import run_check
from runner.stages.common import Context, finish, summary_of, train_run

log = logging.getLogger("runner")


def run(cfg, ctx: Context) -> int:
    res = train_run(cfg, ctx)
    verdicts = [run_check(cfg.checks, "train.finite",
                          lambda s: train_finite(res.nonfinite, res.state.step))]
    code = finish(cfg, ctx, res, verdicts, summary_of(cfg, ctx, res, verdicts))
    return 1 if res.nonfinite else code
