"""The sweeper's config node (`hydra/sweeper: optuna`), with the published plugin's key names
(n_trials, sampler, direction, storage, study_name, params) plus pruner and a few of our own.

Imported by Hydra's plugin scan on every start: no Optuna import here.
"""
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from hydra.core.config_store import ConfigStore


@dataclass
class OptunaSweeperConf:
    _target_: str = "hydra_plugins.recipe_optuna_sweeper.sweeper.OptunaSweeper"
    # the sweeper builds sampler and pruner itself (per trial, with derived seeds)
    _recursive_: bool = False
    # the budget: finished trials (complete, pruned or failed) the study should hold; a resumed
    # study counts the ones it already has
    n_trials: int = 8
    # trials this process runs at once, each asking for the next trial as soon as it is free;
    # null = the launcher's n_jobs (e.g. hydra.launcher.n_jobs with hydra/launcher=joblib), else 1
    n_jobs: Optional[int] = None
    # maximize or minimize `metric`
    direction: str = "maximize"
    # the trial's summary.json figure the study optimises; also reported every epoch for pruning
    metric: str = "val_acc"
    # the same name (and storage) again resumes the study
    study_name: str = "${name}"
    # null: SQLite file in study_dir (a journal file when n_jobs > 1); 'journal'; a path to a
    # *.journal file (several local workers); or any Optuna RDB URL (postgresql://..., sqlite:///...)
    storage: Optional[str] = None
    # the study's folder: trials by number, the default storage, best.yaml, trials.csv, plots,
    # report.html. Fixed per study name so that re-running the command resumes; an explicit
    # hydra.sweep.dir on the command line wins; null = Hydra's hydra.sweep.dir
    study_dir: Optional[str] = "multirun/tune/${.study_name}"
    # random (the recipe's first choice), qmc (quasi-random) or tpe: a name, or a mapping with
    # `name` (or `_target_: optuna.samplers.X`) and the sampler's keyword arguments
    sampler: Any = "random"
    # the sampler's seed when the mapping gives none (null = unseeded)
    seed: Optional[int] = 0
    # median, hyperband or none: a name, or a mapping with `name` (or `_target_`) and the
    # pruner's keyword arguments, e.g. {name: median, n_startup_trials: 4, n_warmup_steps: 2}
    pruner: Any = "none"
    # search space: config key -> interval(a, b) | tag(log, interval(a, b)) | int(interval(a, b))
    # | range(a, b, step) | choice(a, b, ...) (Hydra's sweep grammar)
    params: Dict[str, Any] = field(default_factory=dict)
    # enqueue the current config as the first trial, so the search can only improve on it
    warm_start: bool = True
    # a running trial's worker records a heartbeat this often (seconds) ...
    heartbeat_interval: int = 30
    # ... and a running trial without one for this long is stale (its worker died): marked failed
    grace_period: int = 120
    # run a stale trial's parameters again, at most this many times (0 = only mark it failed)
    retry: int = 0
    # warn when the best value lies within this fraction of its range's ends
    edge_fraction: float = 0.1


ConfigStore.instance().store(group="hydra/sweeper", name="optuna", node=OptunaSweeperConf,
                             provider="recipe-runner")
