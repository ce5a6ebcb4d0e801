"""stage=tune: recipe stage 5 - an Optuna study run with -m: random search, pruning, resume.

`python -m runner -m stage=tune` runs the study: the sweeper (hydra_plugins/recipe_optuna_sweeper)
samples each trial's hyperparameters and launches this stage as a normal Hydra job. A trial
trains like stage=train and reports its validation metric every epoch to the study, which
stops it early when the pruner says so. Without `-m` it trains once with the current config.
"""

from __future__ import annotations

import logging

from runner.errors import ConfigError
from runner.stages.protocol import Context, run_check
from runner.stages.train import Params  # noqa: F401  (builds on stage=train: no settings of its own)

log = logging.getLogger("runner")


def run(cfg, ctx: Context) -> int:
    from runner.checks.training import train_finite
    from runner.stages.common import finish, summary_of, train_run

    t = cfg.tune
    reporter = None
    if t.trial is None:
        log.warning(
            "stage=tune without -m: one training run with the current config; "
            "`python -m runner -m stage=tune` runs the search"
        )
    else:
        if not t.storage or not t.study_name:
            raise ConfigError(
                f"tune.trial={t.trial} needs tune.storage and tune.study_name "
                "(the sweeper sets all three)"
            )
        from runner.tuning import open_trial_reporter

        log.info("tune: trial %d of study %r (%s)", t.trial, t.study_name, t.storage)
        reporter = open_trial_reporter(t.storage, t.study_name, t.trial)

    res = train_run(cfg, ctx, callbacks=[prune_by(reporter)] if reporter else [])
    verdicts = [run_check(cfg.checks, "train.finite",
                          lambda s: train_finite(res.nonfinite, res.state.step))]
    extra = {"trial": t.trial, "study_name": t.study_name}
    if res.pruned:
        extra["status"] = "pruned"
    code = finish(cfg, ctx, res, verdicts, summary_of(cfg, ctx, res, verdicts, extra))
    # the sweeper reads the outcome (summary.json) and goes on whatever this returns
    return 1 if res.nonfinite else code

def prune_by(reporter):
    """The trial's callback: report each evaluation's metric to the study; stop the run
    (TrainResult.pruned) when the study's pruner says so."""
    from runner.loop import Stop

    def callback(rec):
        if not rec.evaluated:
            return None
        reporter.report(rec.epoch, getattr(rec, reporter.metric))
        if reporter.should_prune():
            return Stop(f"pruned by the study's pruner after epoch {rec.epoch}", pruned=True)
        return None
    return callback
