"""The sweeper's config node (`hydra/sweeper: optuna`), with the published plugin's key names
(n_trials, sampler, direction, storage, study_name, params) plus pruner and a few of our own.

Imported by Hydra's plugin scan on every start: no Optuna import here.
"""

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


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
    # sampler and pruner are config groups, like Hydra's launchers: hydra/sweeper/sampler=tpe,
    # hydra/sweeper/pruner=hyperband; then hydra.sweeper.pruner.<key>=... sets an argument
    defaults: List[Any] = field(default_factory=lambda: [{"sampler": "random"}, {"pruner": "none"}])
    # `name` (random, qmc, tpe) or `_target_: optuna.samplers.X`; other keys are its arguments
    sampler: Any = MISSING
    # `name` (median, hyperband, none) or `_target_`; other keys are its arguments
    pruner: Any = MISSING
    # search space: config key -> interval(a, b) | tag(log, interval(a, b)) | int(interval(a, b))
    # | range(a, b, step) | choice(a, b, ...) (Hydra's sweep grammar)
    params: Dict[str, Any] = field(default_factory=dict)
    # the current config as trial 0 of a new study, so the search can only improve on it
    warm_start: bool = True
    # a running trial's worker records a heartbeat this often (seconds) ...
    heartbeat_interval: int = 30
    # ... and a running trial without one for this long is stale (its worker died): marked failed
    grace_period: int = 120
    # run a stale trial's parameters again, at most this many times (0 = only mark it failed)
    retry: int = 0
    # warn when the best value lies within this fraction of its range's ends
    edge_fraction: float = 0.1


# the options: plain mappings (`name` + keyword arguments of the Optuna class), so an overlay
# may add any argument the class takes
SAMPLERS = {
    # the recipe's first choice: random search, seeded
    "random": {"name": "random", "seed": 0},
    # quasi-random (scrambled Sobol): covers the space more evenly than random draws
    "qmc": {"name": "qmc", "seed": 0},
    # model-based, once random search has shown where the good region is
    "tpe": {"name": "tpe", "seed": 0},
}
PRUNERS = {
    "none": {"name": "none"},
    # stop a trial behind the median of the finished ones at the same epoch; the warm-start
    # trial is the first reference; no verdict before epoch 2 (early epochs rank learning
    # rates by speed). On digits, 16 trials: 58% of the epochs, same best trial (docs/tune.md)
    "median": {"name": "median", "n_startup_trials": 1, "n_warmup_steps": 2},
    # successive halving in brackets; resources are epochs
    "hyperband": {"name": "hyperband", "min_resource": 1, "reduction_factor": 3},
}

cs = ConfigStore.instance()
cs.store(group="hydra/sweeper", name="optuna", node=OptunaSweeperConf, provider="recipe-runner")
for _name, _node in SAMPLERS.items():
    cs.store(group="hydra/sweeper/sampler", name=_name, node=_node, provider="recipe-runner")
for _name, _node in PRUNERS.items():
    cs.store(group="hydra/sweeper/pruner", name=_name, node=_node, provider="recipe-runner")
