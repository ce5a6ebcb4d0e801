"""stage=tune: recipe stage 5 - an Optuna study run with -m: random search, pruning, resume.

`python -m runner -m stage=tune` runs the study: the sweeper (hydra_plugins/recipe_optuna_sweeper)
samples each trial's hyperparameters and launches this stage as a normal Hydra job. A trial
trains like stage=train and reports its validation metric every epoch to the study, which
stops it early when the pruner says so. Without `-m` it trains once with the current config.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

from runner import jobs
from runner.errors import ConfigError
from runner.stages.protocol import Context, Headline, Outcome, StageResult, run_check
from runner.stages.train import (
    Params,  # noqa: F401  (builds on stage=train: no settings of its own)
    short_value,
)

log = logging.getLogger("runner")

TRAINS = True
FROM_PREVIOUS = True
# a study is a Hydra multirun (-m): the recipe runs it so, in its own sweep directory
SWEEP = True


def outcome(run_dir: Path) -> Outcome:
    """from=<a study>: the best trial's config and weights (study.json); a single
    `stage=tune` run without -m is a plain run."""
    from runner.checkpoint import best_checkpoint
    from runner.lineage import load_yaml, run_config, run_outcome
    from runner.output import read_json

    study = read_json(run_dir / "study.json")
    if study is None:
        return run_outcome(run_dir)
    best = study.get("best") or {}
    d = Path(best["dir"]) if best.get("dir") else None
    if d is not None and not d.is_absolute():
        d = run_dir / d
    cfg_file = run_config(d) if d is not None else None
    if cfg_file is None:
        raise ConfigError(f"from={run_dir}: the study has no finished best trial with a config yet")
    return Outcome(
        run_dir,
        load_yaml(cfg_file),
        cfg_file,
        "tune",
        best_checkpoint(d),
        f"the study's best trial {best.get('number')} "
        f"({study.get('metric', 'val_acc')} {best.get('value')})",
        run=d,
    )


def headline(run_dir: Path, own=()) -> Headline:
    """The best trial's val accuracy (whatever metric the study ranked by) and its params."""
    from runner.output import read_json

    study = read_json(run_dir / "study.json")
    if study is None:
        from runner.stages.train import headline as plain

        return plain(run_dir, own)
    best = study.get("best") or {}
    d = Path(best["dir"]) if best.get("dir") else None
    if d is not None and not d.is_absolute():
        d = run_dir / d
    s = jobs.summary(d) if d is not None else {}
    acc = s.get("best_val_acc", s.get("val_acc"))
    if acc is None and study.get("metric") == "val_acc":
        acc = best.get("value")
    params = " ".join(f"{k}={short_value(v)}" for k, v in (best.get("params") or {}).items())
    return Headline(acc, f"{study.get('trials', 0)} trial(s); best {params}")


def run(cfg, ctx: Context) -> StageResult:
    from runner.checks.training import train_finite
    from runner.stages.common import result_of, summary_of, train_run

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

    metric = str(cfg.get("metric") or "accuracy")
    res = train_run(cfg, ctx, callbacks=[prune_by(reporter, metric)] if reporter else [])
    verdicts = [
        run_check(cfg.checks, "train.finite", lambda s: train_finite(res.nonfinite, res.state.step))
    ]
    extra = {"trial": t.trial, "study_name": t.study_name}
    if res.pruned:
        extra["status"] = "pruned"
    # the sweeper reads the outcome (summary.json) and goes on whatever the exit code
    return result_of(res, verdicts, summary_of(cfg, ctx, res, verdicts, extra))


def prune_by(reporter, metric: str = "accuracy"):
    """The trial's callback: report each evaluation's figure to the study; stop the run
    (TrainResult.pruned) when the study's pruner says so.

    The figure is the one the trial's objective is made of, so the pruner compares like with
    like: for the study's default metric val_acc (the run's selection score, the sweeper's
    `_value`) that is the epoch's figure of the run's `metric` (runner/metrics.py epoch_score:
    val balanced accuracy for balanced_accuracy, -val loss for val_loss); for any other study
    metric, the epoch's field of that name (val_loss)."""
    from runner.loop import Stop
    from runner.metrics import epoch_score

    def value(rec) -> Optional[float]:
        if reporter.metric == "val_acc":
            return epoch_score(rec, metric)
        return getattr(rec, reporter.metric)

    def callback(rec):
        if not rec.evaluated:
            return None
        reporter.report(rec.epoch, value(rec))
        if reporter.should_prune():
            return Stop(f"pruned by the study's pruner after epoch {rec.epoch}", pruned=True)
        return None

    return callback
